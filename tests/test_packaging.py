"""The package as a user installs it: a wheel built from the sources alone, installed without the
repository, gives the `fsd-tune` command ([project.scripts]) with tune_main.py's flags and error line."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "tune_main.py", "fsd", "search_spaces")


def test_a_wheel_installs_the_fsd_tune_command(tmp_path):
    # A copy of what the wheel is made of: a build in the worktree would leave build/ there, whose stale
    # files (a module deleted since) a later build would pack.
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    # The environment's setuptools when it has one (seconds); else pip fetches it, as for any install.
    build = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the fresh install alone, not the sources
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", *build, "-w", str(tmp_path / "dist"),
                    str(src)], check=True, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("fsd_tune-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "tune_main.py" in names and "fsd/tuning/search/halving.py" in names and "search_spaces/base.py" in names
    assert not [n for n in names if n.startswith(("tests/", "bench/", "docs/"))]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    subprocess.run([*pip, "--python", str(venv / "bin" / "python"), "install", "--no-deps", str(wheel)], check=True,
                   capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)

    helped = subprocess.run([str(venv / "bin" / "fsd-tune"), "--help"], capture_output=True, text=True, cwd=tmp_path,
                            env=env, timeout=120)
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("usage: fsd-tune ") and "--dry-run" in helped.stdout and "--quiet" in helped.stdout
    refused = subprocess.run([str(venv / "bin" / "fsd-tune"), "--task", "rte", "--verbose", "--quiet"],
                             capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr == ("error: argument --quiet: not allowed with argument --verbose (fsd-tune --help lists the "
                              "flags)\n")
