"""What --dry-run and --estimate print (fsd/tuning/cost/dryrun.py, estimate.py): a comparison's seed runs counted
by hand, the paper's cost, and nothing written by either."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from fsd.tuning.cost.count import search_cost
from fsd.tuning.plan.spec import SearchSpec
from search_spaces import get_schedule


def _main(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(ROOT / "tune_main.py"), *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


def _tree(folder: Path) -> set:
    return {(str(p), p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_a_comparisons_seed_runs_are_counted_by_hand(glue_dir, tmp_path):
    from fsd.tuning.cost.dryrun import compare_cost

    spec = SearchSpec(task="rte", method="vkd", storage=str(tmp_path), mlflow_uri="", teacher="packaged-minilm",
                      data_dir=glue_dir, preset="quick")
    schedules = [get_schedule(m, "rte", "quick") for m in ("vkd", "fsd")]
    costs = [search_cost(SearchSpec(**{**spec.__dict__, "method": s.method}), s) for s in schedules]
    c = compare_cost(costs, schedules, seeds=5, ablation=True, batch_sizes=(8, 16, 32))
    # 5 runs per method, 4 ablations x 5 seeds, 2 variants x 3 sizes x 5 seeds; 2,000 rows x 2 epochs each
    assert c.runs == {"vkd": 5, "fsd": 5, "ablation": 20, "batch sizes": 30}
    assert c.samples == 60 * 2000 * 2 and c.evaluations == 60 * 4 * 277  # 4 evaluations of RTE's 277 dev rows
    plain = compare_cost(costs, schedules, seeds=3)
    assert plain.runs == {"vkd": 3, "fsd": 3} and plain.samples == 6 * 4000


def test_dry_run_prints_the_paper_cost_and_writes_nothing(tmp_path):
    r = _main("--task", "qqp", "--dry-run", "--preset", "paper", "--storage", str(tmp_path / "runs"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    # 27 VKD points at 3 epochs and 27 at 4 of QQP's 363,846 rows, then the 3 leading points on 2 more seeds,
    # counted at the longest budget (a leader may be any point)
    grid = 27 * 3 * 363846 + 27 * 4 * 363846
    assert f"| fsd | vkd | 54 + 6 confirming | grid | 1,091,538-1,455,384 | {grid + 6 * 4 * 363846:,} | 113% |" \
        in r.stdout
    assert "total training samples: " in r.stdout and "teacher fine-tuning: 1,091,538 training samples" in r.stdout
    assert "ranking split: dev, 40,430 rows" in r.stdout
    assert list(tmp_path.iterdir()) == []  # no storage, no mlflow.db, nothing
    plain = _main("--task", "qqp", "--dry-run", "--preset", "paper", "--confirm-top", "0", "--storage",
                  str(tmp_path / "runs"), cwd=tmp_path)
    assert f"| fsd | vkd | 54 | grid | 1,091,538-1,455,384 | {grid:,} | 100% |" in plain.stdout  # the paper's protocol


@pytest.mark.slow
def test_estimate_times_steps_prints_hours_and_writes_nothing(tmp_path, glue_dir, minilm_path):
    storage = tmp_path / "runs"
    storage.mkdir()
    before, data = _tree(storage), _tree(Path(glue_dir) / "RTE")
    r = _main("--task", "rte", "--method", "vkd", "--estimate", "--preset", "quick", "--strategy", "halving",
              "--data-dir", glue_dir, "--teacher", "packaged-minilm", "--student-layers", "2", "--storage",
              str(storage), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = {line.split(" | ")[0].strip("| "): line for line in r.stdout.splitlines() if line.startswith("| ")}
    assert "vkd / vkd" in lines and "teacher fine-tuning" in lines and "teacher-output cache pass" in lines
    hours = float(r.stdout.split("total: about ")[1].split(" hours")[0])
    assert 0 < hours < 10 and math.isfinite(hours)
    assert _tree(storage) == before and _tree(Path(glue_dir) / "RTE") == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
