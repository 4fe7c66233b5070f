"""What a search will cost, counted before it runs (fsd/tuning/cost/count.py): one stage's cost against a hand
count, a stage met again in a comparison, epochs set on the command line."""

import pytest

from fsd.tuning.cost.count import search_cost
from fsd.tuning.plan.spec import SearchSpec
from search_spaces import get_schedule


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


def test_set_epochs_counts_in_every_stage_before_its_winners_are_known(glue_dir, tmp_path):
    """--set epochs=3 over the cpu preset's one epoch: the stages that inherit epochs from VKD's winner (not
    known before the search) are counted at 3 epochs too, as they will run."""
    spec = SearchSpec(task="rte", method="pkd", storage=str(tmp_path), mlflow_uri="", teacher="packaged-minilm",
                      data_dir=glue_dir, preset="cpu", extra={"epochs": 3})
    vkd, pkd = search_cost(spec, get_schedule("pkd", "rte", "cpu")).stages
    assert vkd.samples_per_trial == pkd.samples_per_trial == (3 * 1600,)
