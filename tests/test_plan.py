"""What a search will spend, counted before it runs: rungs as Ray builds them, the expected samples under
halving by hand, one stage's cost against a hand count, and --dry-run / --estimate writing nothing."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fsd.tuning.plan import stages
from fsd.tuning.plan.spec import SearchSpec
from fsd.tuning.plan.spend import search_cost
from search_spaces import get_schedule

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("budget", "first", "rf"), [(4000, 1 / 9, 3.0), (6000, 1 / 16, 4.0), (64, 1 / 9, 3.0),
                                                     (1_455_384, 1 / 9, 3.0), (6000, 1 / 4, 2.0)])
def test_rungs_are_the_milestones_rays_asha_builds(budget, first, rf):
    from ray.tune.schedulers.async_hyperband import _Bracket

    rungs = stages.rungs_for(budget, first, rf)
    theirs = sorted(m for m, _ in _Bracket(rungs.first, budget, rf, 0)._rungs)
    assert list(rungs.milestones) == [int(m) for m in theirs]


def test_expected_samples_by_hand():
    # 9 trials of 900 samples, evaluated every 100; rungs at 100, 300 (rf 3, first 1/9): 9 x 100, then 3 more to
    # 300, then 1 to the end.
    rungs = stages.rungs_for(900, 1 / 9, 3.0)
    assert rungs.milestones == (100, 300, 900)
    assert stages.expected_samples(9, 900, rungs, 100) == 9 * 100 + 3 * 200 + 1 * 600
    assert stages.expected_samples(9, 900, None, 100) == 8100
    # evaluations every 250: the rungs fall at the first evaluation past them (250, 500)
    assert stages.expected_samples(9, 900, rungs, 250) == 9 * 250 + 3 * 250 + 1 * 400
    assert stages.expected_evaluations(9, 900, None, 250) == 9 * 4  # 250, 500, 750 and the end


def test_one_stage_against_a_hand_count(glue_dir, tmp_path):
    """RTE, quick preset, the VKD stage: 2 x 2 x 2 points, 2 epochs of the first 2000 of 2490 rows, 277 dev rows."""
    spec = SearchSpec(task="rte", method="vkd", storage=str(tmp_path / "none"), mlflow_uri="",
                      teacher="packaged-minilm", data_dir=glue_dir, preset="quick")
    schedule = get_schedule("vkd", "rte", "quick")
    (vkd,) = search_cost(spec, schedule).stages
    assert (vkd.trials, vkd.samples_per_trial, vkd.samples, vkd.evaluations) == (8, (4000,), 32_000, 8 * 2 * 277)
    halving = SearchSpec(**{**spec.__dict__, "strategy": "halving"})
    (h,) = search_cost(halving, schedule).stages
    # every ceil(2000 / 4) = 500 samples; one rung, the default 3/4 of 4000 = 3000 (the next, 9000, is past the
    # budget): 8 trials to 3000, then 8/3 of them to 4000
    assert h.samples == pytest.approx(8 * 3000 + 8 / 3 * 1000)
    assert h.evaluations == pytest.approx(h.samples / 500 * 277)
    cost = search_cost(halving, schedule)
    assert cost.teacher_samples == 3 * 2000 and cost.cache_rows == 2000  # the backbone is fine-tuned first
    assert not (tmp_path / "none").exists()


def test_a_stage_met_again_in_a_comparison_is_counted_once(glue_dir, tmp_path):
    spec = SearchSpec(task="rte", method="vkd", storage=str(tmp_path), mlflow_uri="", teacher="packaged-minilm",
                      data_dir=glue_dir, preset="quick")
    seen: set[str] = set()
    first = search_cost(spec, get_schedule("vkd", "rte", "quick"), seen)
    second = search_cost(SearchSpec(**{**spec.__dict__, "method": "pkd"}), get_schedule("pkd", "rte", "quick"), seen)
    assert first.stages[0].reused is None and first.samples == 32_000
    assert second.stages[0].name == "vkd" and second.stages[0].reused == "this comparison"
    assert second.samples == second.stages[1].samples  # only PKD's own stage



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


def test_set_epochs_counts_in_every_stage_before_its_winners_are_known(glue_dir, tmp_path):
    """--set epochs=3 over the cpu preset's one epoch: the stages that inherit epochs from VKD's winner (not
    known before the search) are counted at 3 epochs too, as they will run."""
    spec = SearchSpec(task="rte", method="pkd", storage=str(tmp_path), mlflow_uri="", teacher="packaged-minilm",
                      data_dir=glue_dir, preset="cpu", extra={"epochs": 3})
    vkd, pkd = search_cost(spec, get_schedule("pkd", "rte", "cpu")).stages
    assert vkd.samples_per_trial == pkd.samples_per_trial == (3 * 1600,)

def _main(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(ROOT / "tune_main.py"), *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


def _tree(folder: Path) -> set:
    return {(str(p), p.stat().st_mtime_ns) for p in folder.rglob("*")}


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


def test_stage_base_takes_the_presets_batch_size_and_the_holdout(tmp_path):
    from fsd.tuning.plan.stages import stage_base

    schedule = get_schedule("vkd", "sst2", "cpu")
    spec = SearchSpec(task="sst2", method="vkd", storage=str(tmp_path), mlflow_uri="", teacher="t", preset="cpu",
                      seed=5, select_on="holdout", holdout_rows=300)
    base = stage_base(spec, schedule, schedule.stage("vkd"), "t", {})
    assert base["batch_size"] == 16 and base["holdout_rows"] == 300 and base["holdout_seed"] == 5
    mine = SearchSpec(**{**spec.__dict__, "extra": {"batch_size": 8}, "select_on": "dev"})
    base = stage_base(mine, schedule, schedule.stage("vkd"), "t", {})
    assert base["batch_size"] == 8 and "holdout_rows" not in base  # --set beats the preset


def test_the_teacher_and_the_trials_read_one_set_of_data_values(tmp_path):
    """The teacher's rows, length, seed and holdout are the trials' (stages.data_values): a --set row limit
    reaches both; only the teacher's batches are its own (the paper's 32, random order)."""
    from fsd.teacher import TEACHER_BATCHES
    from fsd.tuning.plan.stages import DATA_FIELDS, stage_base, teacher_spec

    schedule = get_schedule("vkd", "sst2", "cpu")
    spec = SearchSpec(task="sst2", method="vkd", storage=str(tmp_path), mlflow_uri="", teacher="t", preset="cpu",
                      seed=5, max_seq_len=64, select_on="holdout", holdout_rows=300,
                      extra={"max_train_samples": 900, "max_eval_samples": None, "lr": 1e-4})
    base = stage_base(spec, schedule, schedule.stage("vkd"), "t", {})
    data = teacher_spec(spec, schedule).data
    for name in DATA_FIELDS:
        if name not in TEACHER_BATCHES:
            assert getattr(data, name) == base.get(name, getattr(data, name)), name
    assert data.max_train_samples == 900 and data.max_eval_samples is None and data.max_seq_len == 64
    assert data.holdout_rows == 300 and data.seed == 5 and data.batch_size == 32 and base["batch_size"] == 16
    preset = teacher_spec(SearchSpec(**{**spec.__dict__, "extra": {}}), schedule).data
    assert preset.max_train_samples == 1600  # the cpu preset's rows when --set says nothing


def test_an_optuna_stage_keeps_its_journal_in_a_stage_folder_not_made_yet(tmp_path):
    """The stage's folder exists only once Ray starts its trials; the TPE journal is opened before that."""
    from fsd.tuning.search import halving

    folder = tmp_path / "stages" / "rte-vkd-0123"
    config = halving.tune_config("optuna", str(folder), "rte-vkd", stages.rungs_for(900, 1 / 9, 3.0), 1, 4)
    assert (folder / "optuna.journal").is_file() and config.search_alg is not None


def test_fsd_cli_and_a_search_on_the_same_rows_share_their_teacher(tmp_path, monkeypatch, glue_dir):
    """`python -m fsd.cli` and tune_main.py spell a relative --data-dir the same (absolute), so a teacher one of
    them fine-tuned is the other's too (before, the cli's key held the path as typed and it fine-tuned again)."""
    import importlib.util

    from fsd import cli
    from fsd.tuning.command.checks import dry_spec
    from fsd.tuning.plan.stages import teacher_spec

    loader = importlib.util.spec_from_file_location("tune_main", ROOT / "tune_main.py")
    tune_main = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(tune_main)
    monkeypatch.chdir(Path(glue_dir).parent)
    relative = os.path.join("..", Path(glue_dir).parent.name, Path(glue_dir).name)
    common = ["--task", "stsb", "--data-dir", relative, "--teacher", "packaged-minilm", "--teacher-epochs", "3",
              "--teacher-lr", "1e-4", "--storage", str(tmp_path)]
    spec, schedule = dry_spec(tune_main.build_parser().parse_args(
        [*common, "--preset", "cpu", "--set", "max_train_samples=none", "--select-on", "holdout",
         "--holdout-rows", "500"]))
    config, teacher = cli.run_specs(cli.build_parser().parse_args([*common, "--holdout-rows", "500"]))
    assert config.data_dir == str(Path(glue_dir).resolve())
    assert teacher.key() == teacher_spec(spec, schedule).key()
    other = cli.run_specs(cli.build_parser().parse_args([*common, "--holdout-rows", "400"]))[1]
    assert other.key() != teacher.key()  # the keys still tell different rows apart
