"""The README's own references resolve inside the repository, and its stage count is --dry-run's."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_file_the_readme_and_the_code_cite_is_in_the_repository():
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)", readme)  # markdown links to files
    cited = re.findall(r"\b(docs/[\w./-]+\.md)\b", readme)
    for path in {*links, *cited}:
        if not path.startswith(("http://", "https://")):
            assert (ROOT / path).is_file(), path
    assert "METHOD.md" not in readme  # the method notes live in docs/method.md, in the project
    sections = set(re.findall(r"^## (§\d)", (ROOT / "docs" / "method.md").read_text(), re.M))
    for source in [*ROOT.glob("fsd/**/*.py"), *ROOT.glob("search_spaces/*.py"), ROOT / "README.md"]:
        for section in re.findall(r"docs/method\.md\)? (§\d)", source.read_text()):
            assert section in sections, (source, section)


def test_the_readme_counts_the_stages_dry_run_lists():
    out = subprocess.run([sys.executable, str(ROOT / "tune_main.py"), "--task", "sst2", "--dry-run", "--preset", "cpu"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300).stdout
    stages = re.findall(r"^  \d+\. ", out, re.M)
    assert len(stages) == 10
    assert "the paper's six steps, ten stages in `--dry-run`" in (ROOT / "README.md").read_text()
