"""The benchmarks' code paths run (on a CPU with tiny models): a GPU session must not find them broken."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_and_reports_rate_and_memory_per_trial():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu", "--tiny",
                          "--steps", "1", "--warmup", "1", "--packs", "1,2", "--modes", "cache"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    rows = json.loads(out.strip().splitlines()[-1])
    assert [(r["mode"], r["trials"]) for r in rows] == [("cache", 1), ("cache", 2)]
    assert all(r["per_trial"] > 0 and abs(r["total"] - r["per_trial"] * r["trials"]) < 1e-6 for r in rows)
    assert "| cache | 2 |" in out
