"""Ctrl-C while the command is still checking its input (seconds of imports and model reading, before the
search's own Ctrl-C handling is in place) ends it at once, with one line and exit code 130 as a Ctrl-C
mid-search, no traceback. The chaos soak (bench/soak.py) found it printing a traceback and dying of SIGINT,
and, interrupted inside numpy's import, failing with a RecursionError."""

import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _loaded(pid: int, library: str) -> bool:
    try:
        return library in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def test_ctrl_c_during_the_checks_says_one_line_and_exits_130(glue_dir, minilm_path, tmp_path):
    storage = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, str(ROOT / "tune_main.py"), "--task", "rte", "--data-dir", glue_dir,
                             "--teacher", minilm_path, "--preset", "smoke", "--storage", str(storage)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    # torch's library mapped: the checks are importing the model code, seconds before they can finish
    while not _loaded(proc.pid, "libtorch") and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (proc.returncode, err[-2000:])
    assert err.strip().splitlines() == ["interrupted during the checks, before the search began: nothing was "
                                        "written; run the same command again"], err[-2000:]
    assert not storage.exists() or not any(storage.iterdir())
