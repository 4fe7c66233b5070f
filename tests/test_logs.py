"""The console (fsd/logs.py): the narrative on stderr and the results on stdout, --quiet, the libraries' log
levels, and what an error line quotes of an exception."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fsd.logs import console, first_line, narrating, quiet_libraries, show_console

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@pytest.fixture
def fresh_console():
    """The console as a process starts with it (no handler, level unset), restored afterwards."""
    handlers, level, propagate = console.handlers[:], console.level, console.propagate
    console.handlers.clear()
    console.setLevel(logging.NOTSET)
    yield console
    console.handlers[:] = handlers
    console.setLevel(level)
    console.propagate = propagate


def test_the_narrative_goes_to_stderr_and_quiet_keeps_only_warnings(fresh_console, capsys):
    from fsd.progress import Progress

    assert narrating()  # a library user who never called show_console keeps the progress bars
    show_console()
    console.info("stage vkd: 2 trials")
    with Progress(10, "epoch 1/1", every_s=0.0) as bar:
        bar.update(10)
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines()[0] == "stage vkd: 2 trials" and "epoch 1/1: 10/10 samples" in err
    show_console(quiet=True)
    # once per process, whatever it is called with (pytest's own log capture may sit beside it)
    assert not narrating() and sum(type(h).__name__ == "_Stderr" for h in console.handlers) == 1
    console.info("stage vkd: best dev score 69.27")
    console.warning("teacher cache: over its budget, the teacher runs live")
    with Progress(10, "epoch 1/1", every_s=0.0) as bar:
        bar.update(10)
    out, err = capsys.readouterr()
    assert out == "" and err == "teacher cache: over its budget, the teacher runs live\n"


@pytest.mark.parametrize("verbosity,level", [(None, logging.ERROR), ("info", logging.INFO), ("debug", logging.DEBUG)])
def test_a_users_transformers_verbosity_is_kept(monkeypatch, verbosity, level):
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    monkeypatch.delenv("TRANSFORMERS_VERBOSITY", raising=False)
    if verbosity:
        monkeypatch.setenv("TRANSFORMERS_VERBOSITY", verbosity)
        hf_logging.set_verbosity(level)  # what transformers reads from the variable when it is first imported
    try:
        quiet_libraries()
        assert hf_logging.get_verbosity() == level
    finally:
        hf_logging.set_verbosity(before)


def _tune(*extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tune_main.py"), "--task", "sst2", "--preset", "smoke",
                           "--data-dir", str(ROOT.parent / "shared" / "glue_data"), "--teacher", "packaged-minilm",
                           "--student-layers", "3", "--dry-run", *extra],
                          capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=300)


def test_a_dry_runs_tables_go_to_stdout_alone(glue_dir):
    """`> plan.md` keeps --dry-run's whole output: nothing of it is narrative; --quiet changes none of it."""
    plain, quiet = _tune(), _tune("--quiet")
    assert plain.returncode == quiet.returncode == 0, plain.stderr[-2000:] + quiet.stderr[-2000:]
    assert plain.stdout.startswith("sst2 / fsd / preset smoke\n") and "total training samples: " in plain.stdout
    assert plain.stderr == quiet.stderr == ""
    free = re.compile(r"[\d.]+ GB free")  # the disk's free space, read by each run, moves with other writers
    assert free.sub("GB free", quiet.stdout) == free.sub("GB free", plain.stdout)


def test_the_cli_puts_its_teachers_lines_on_stderr_and_its_epochs_on_stdout(tiny_bert, glue_dir, tmp_path):
    """One run of fsd.cli: the teacher's fine-tuning and the progress are narrative (stderr); the epoch's
    metrics and where the student went are its results (stdout)."""
    r = subprocess.run([sys.executable, "-m", "fsd.cli", "--task", "rte", "--data-dir", glue_dir, "--teacher",
                        tiny_bert, "--student-layers", "2", "--max-train-samples", "16", "--max-eval-samples", "8",
                        "--max-seq-len", "32", "--epochs", "1", "--teacher-epochs", "1", "--storage",
                        str(tmp_path / "runs"), "--output-dir", str(tmp_path / "out")],
                       capture_output=True, text=True, cwd=tmp_path, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout.splitlines()
    assert len(out) == 2 and out[0].startswith("epoch 1: {") and out[1].startswith("best dev score "), r.stdout
    assert "teacher rte epoch 1/1: dev score" in r.stderr and "epoch 1/1: 16/16 samples" in r.stderr


def test_first_line_of_an_error():
    """One line of the message, whatever it carries after it; cut to the limit; the type when it is empty."""
    body = "404 Client Error: Not Found for url: http://hub/x\n<html>\n<body>not found</body>"
    assert first_line(OSError(body)) == "404 Client Error: Not Found for url: http://hub/x"
    assert first_line(ValueError("\n  leading blank lines  \nsecond")) == "leading blank lines"
    assert first_line(RuntimeError("x" * 500)) == "x" * 200
    assert first_line(RuntimeError("x" * 500), 120) == "x" * 120
    assert first_line(EOFError()) == "EOFError" and first_line(OSError("  \n ")) == "OSError"
