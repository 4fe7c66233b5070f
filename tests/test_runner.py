"""The greedy chaining of the runner, without Ray: what a stage's trials share, and how a winner is picked."""

from types import SimpleNamespace

import pandas as pd
import pytest

from fsd.tuning.runner import SearchSpec, pick_winner, stage_base
from search_spaces import get_schedule


def _result(config, scores, error=None):
    df = pd.DataFrame({"eval/score": scores})
    ckpt = SimpleNamespace(path=f"/ckpt/{config}")
    return SimpleNamespace(error=error, metrics_dataframe=df, config=config,
                           get_best_checkpoint=lambda metric, mode: ckpt)


def test_winner_is_the_best_epoch_mean_over_seeds_and_survives_json_lists():
    results = [
        _result({"beta": 1.0, "gamma_i+gamma_l": [0.1, 0.9], "seed": 1}, [0.5, 0.7]),
        _result({"beta": 1.0, "gamma_i+gamma_l": [0.1, 0.9], "seed": 2}, [0.5]),
        _result({"beta": 2.0, "gamma_i+gamma_l": [0.5, 0.5], "seed": 1}, [0.65]),
        _result({"beta": 2.0, "gamma_i+gamma_l": [0.5, 0.5], "seed": 2}, [0.61]),
        _result({"beta": 3.0, "gamma_i+gamma_l": [0.9, 0.1], "seed": 1}, [0.9], error=RuntimeError("crash")),
    ]
    point, score, _ = pick_winner(results, {"beta": (1.0, 2.0, 3.0), "gamma_i+gamma_l": ((0.1, 0.9),)})
    assert point == {"beta": 2.0, "gamma_i+gamma_l": (0.5, 0.5)}  # mean 0.63 beats mean 0.6; failed trial ignored
    assert score == pytest.approx(0.63)


def test_a_stage_where_every_trial_failed_says_so():
    with pytest.raises(RuntimeError, match="every trial of the stage failed"):
        pick_winner([_result({"beta": 1.0}, [0.5], error=RuntimeError("x"))], {"beta": (1.0,)})


def test_stage_base_takes_inherited_winners_fixed_values_and_the_budget():
    schedule = get_schedule("fsd", "rte", "smoke")
    spec = SearchSpec(task="rte", method="fsd", storage="/s", mlflow_uri="", teacher="t", student_layers=3)
    winners = {"vkd": {"alpha": 0.7, "temperature": 5.0, "epochs": 4, "lr": 2e-5},
               "fsdg-coarse": {"gamma_g": 1e-4, "lam": 0.1}}
    base = stage_base(spec, schedule, schedule.stage("fsdg-refine-g"), "/teacher", winners)
    assert base["alpha"] == 0.7 and base["temperature"] == 5.0 and base["lr"] == 2e-5 and base["lam"] == 0.1
    assert base["beta"] == 1.0 and base["method"] == "fsdg" and base["teacher"] == "/teacher"
    assert base["epochs"] == 1 and base["max_train_samples"] == 64 and base["memory_size"] == 8  # smoke budget
