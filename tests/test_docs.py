"""The README is a front page and docs/ the manual: every relative link resolves, every flag of --help is
documented in docs/search.md, and the README's stage count is --dry-run's."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
         *sorted((ROOT / "bench" / "results").glob("*/README.md"))]


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation other than - and _ dropped, spaces as -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_relative_link_and_anchor_resolves():
    for page in PAGES:
        text = page.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            assert file.exists(), f"{page.relative_to(ROOT)}: {target}"
            if anchor and file.suffix == ".md":
                anchors = {_anchor(h) for h in re.findall(r"^#+ (.+)$", file.read_text(), re.M)}
                assert anchor in anchors, f"{page.relative_to(ROOT)}: {target} (no such heading)"


def test_every_flag_of_help_is_documented_in_the_search_page():
    sys.path.insert(0, str(ROOT))
    from tune_main import build_parser

    flags = {s for a in build_parser()._actions for s in a.option_strings if s.startswith("--") and s != "--help"}
    page = (ROOT / "docs" / "search.md").read_text()
    missing = sorted(f for f in flags if f"`{f}" not in page)
    assert not missing, missing


def test_the_readme_is_a_front_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for placeholder in re.findall(r"\b[A-Z]{3,}_[A-Z_]{3,}\b", readme):
        assert placeholder in ("HF_HUB_OFFLINE",), f"a placeholder left in the README: {placeholder}"


def test_every_file_the_code_cites_is_in_the_repository():
    assert "METHOD.md" not in (ROOT / "README.md").read_text()  # the method notes live in docs/method.md
    sections = set(re.findall(r"^## (§\d)", (ROOT / "docs" / "method.md").read_text(), re.M))
    for source in [*ROOT.glob("fsd/**/*.py"), *ROOT.glob("search_spaces/*.py"), *PAGES]:
        for section in re.findall(r"method\.md\)? (§\d)", source.read_text()):
            assert section in sections, (source, section)
        for cited in re.findall(r"\b((?:docs|bench)/[\w./-]+\.(?:md|py|json|txt))\b", source.read_text()):
            assert (ROOT / cited).exists(), (source, cited)


def test_the_readme_counts_the_stages_dry_run_lists():
    out = subprocess.run([sys.executable, str(ROOT / "tune_main.py"), "--task", "sst2", "--dry-run", "--preset", "cpu"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300).stdout
    stages = re.findall(r"^  \d+\. ", out, re.M)
    assert len(stages) == 10
    assert "the paper's six steps, ten stages in `--dry-run`" in (ROOT / "README.md").read_text()


RECORD = ROOT / "bench" / "results" / "first-command"


def _block_after(text: str, heading: str) -> list[str]:
    """The lines of the first ``` block of the README's section `heading`."""
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```\n(.*?)```", section, re.S).group(1).splitlines()


def test_the_readme_shows_the_recorded_run_of_its_first_command():
    """The README's first command is the one bench/first_command.py recorded (bench/results/first-command/),
    the excerpt it shows is that run's output, line by line and in order, and the times it gives are the
    record's: the front page shows a run that happened."""
    import json

    sys.path.insert(0, str(ROOT / "bench"))
    from first_command import setup_commands

    from fsd.progress import format_duration

    readme = (ROOT / "README.md").read_text()
    record = json.loads((RECORD / "run.json").read_text())
    assert record["search_rc"] == 0 and record["install_rc"] == 0
    assert record["first_command"] == setup_commands(readme)[0]
    console = iter((RECORD / "console.txt").read_text().splitlines())
    excerpt = [line for line in _block_after(readme, "The first command") if line != "..."]
    assert len(excerpt) >= 10
    for line in excerpt:  # each one found after the one before
        assert any(line == printed for printed in console), f"not in the recorded run, or out of order: {line}"
    for seconds in (record["search_s"], record["install_s"]):
        assert format_duration(seconds) in readme, format_duration(seconds)
    assert record["commit"][:7] in readme
