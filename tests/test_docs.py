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
