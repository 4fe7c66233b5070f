"""What a stage's trials share and spend, counted before it runs (fsd/tuning/plan/stages.py): rungs as Ray builds
them, the expected samples under halving by hand, the values every trial and the teacher share."""

import os
from pathlib import Path

import pytest
from conftest import ROOT

from fsd.tuning.plan import stages
from fsd.tuning.plan.spec import SearchSpec
from search_spaces import get_schedule


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
