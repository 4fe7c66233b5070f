"""What every trial of a stage shares (fsd/tuning/plan/trials.py): the preset's and --set's values, and one set of
data values for the trials and their teacher."""

from fsd.tuning.plan.spec import SearchSpec
from search_spaces import get_schedule


def test_stage_base_takes_the_presets_batch_size_and_the_holdout(tmp_path):
    from fsd.tuning.plan.trials import stage_base

    schedule = get_schedule("vkd", "sst2", "cpu")
    spec = SearchSpec(task="sst2", method="vkd", storage=str(tmp_path), mlflow_uri="", teacher="t", preset="cpu",
                      seed=5, select_on="holdout", holdout_rows=300)
    base = stage_base(spec, schedule, schedule.stage("vkd"), "t", {})
    assert base["batch_size"] == 16 and base["holdout_rows"] == 300 and base["holdout_seed"] == 5
    mine = SearchSpec(**{**spec.__dict__, "extra": {"batch_size": 8}, "select_on": "dev"})
    base = stage_base(mine, schedule, schedule.stage("vkd"), "t", {})
    assert base["batch_size"] == 8 and "holdout_rows" not in base  # --set beats the preset


def test_the_teacher_and_the_trials_read_one_set_of_data_values(tmp_path):
    """The teacher's rows, length, seed and holdout are the trials' (trials.data_values): a --set row limit
    reaches both; only the teacher's batches are its own (the paper's 32, random order)."""
    from fsd.teacher import TEACHER_BATCHES
    from fsd.tuning.plan.references import teacher_spec
    from fsd.tuning.plan.trials import DATA_FIELDS, stage_base

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
