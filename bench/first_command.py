"""The README's set-up commands as a new user runs them, recorded: a fresh clone of one commit beside the shared
GLUE folder (the README's `../shared/glue_data`), a fresh virtual environment, the install and the first command
timed apart, and what the first command printed. The README's excerpt and figures are checked against the record
(tests/test_docs.py), so the front page shows a run that happened.

    git clone -q <repository> <clone> && python bench/first_command.py --clone <clone> \
        --out bench/results/first-command [--tests]

Run it alone on the machine (its time is the figure). Writes to --out: `console.txt` (stdout and stderr of the
first command as one stream, the clone's folder written `<clone>`), `run.json` (the commit, the date, the
machine's cores and load, each part's seconds and exit code) and, with --tests, `tests.txt` (the last lines of the
second command: its counts).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEARCH = "python tune_main.py"  # the segment of the first command that runs the search


def setup_commands(readme: str) -> list[str]:
    """The README's two set-up commands (the first two ```bash blocks of its Set-up section), in order."""
    section = readme.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)][:2]


def split_first(command: str) -> tuple[list[str], str]:
    """The first command's segments before the search (the venv, the installs) and the search itself."""
    parts = [p.strip() for p in command.split("&&")]
    search = [p for p in parts if SEARCH in p]
    if len(search) != 1 or parts[-1] != search[0]:
        raise ValueError(f"the first command does not end with one `{SEARCH}`: {command}")
    return parts[:-1], parts[-1]


def timed(script: str, cwd: Path) -> tuple[float, int, str]:
    """Run `script` with bash in `cwd`: seconds, exit code, and its output (stdout and stderr as one stream)."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = ":".join(p for p in env["PATH"].split(":") if "venv" not in p)  # not the caller's venv
    started = time.monotonic()
    r = subprocess.run(["bash", "-c", script], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True)
    return time.monotonic() - started, r.returncode, r.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clone", type=Path, required=True, help="a fresh clone, beside ../shared/glue_data")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tests", action="store_true", help="also run the second command (the tests)")
    args = parser.parse_args()
    clone = args.clone.resolve()
    first, tests = setup_commands((clone / "README.md").read_text())
    before, search = split_first(first)
    activate = [p for p in before if "activate" in p]
    args.out.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True,
                            check=True).stdout.strip()
    record = {"commit": commit, "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
              "cores": os.cpu_count(), "load_before": os.getloadavg()[0], "first_command": first}
    record["install_s"], record["install_rc"], _ = timed(" && ".join(before), clone)
    record["search_s"], record["search_rc"], out = timed(" && ".join([*activate, search]), clone)
    record["load_after"] = os.getloadavg()[0]
    (args.out / "console.txt").write_text(out.replace(str(clone), "<clone>"))
    if args.tests:
        seconds, code, out = timed(tests, clone)
        record.update(tests_s=seconds, tests_rc=code, test_command=tests)
        (args.out / "tests.txt").write_text("\n".join(out.replace(str(clone), "<clone>").splitlines()[-15:]) + "\n")
    (args.out / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
