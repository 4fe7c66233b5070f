"""No point trained twice in a stage: the real Optuna searcher of a small grid, driven as Ray's controller
drives it, asks for points it has seen; the wrapper answers those from the recorded results."""

import optuna
from optuna.samplers import TPESampler
from ray import tune
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from fsd.tuning.search.no_repeats import NoRepeats, point_key

SPACE = {"alpha": tune.choice([0.2, 0.5, 0.7]), "lr": tune.choice([1e-4, 2e-4])}


def _score(config):
    return config["alpha"] * 1000 * config["lr"]  # deterministic, as a trial at a point and seed is


def _searcher():
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    inner = OptunaSearch(metric="eval/best_loss", mode="min", sampler=TPESampler(seed=0))
    wrapped = NoRepeats(inner)
    wrapped.set_search_properties("eval/best_loss", "min", SPACE)
    return inner, wrapped


def test_plain_tpe_repeats_points_of_a_small_grid():
    """The problem itself: without the wrapper, 6 trials of this 6-point grid are not 6 points."""
    inner = OptunaSearch(metric="eval/best_loss", mode="min", sampler=TPESampler(seed=0))
    inner.set_search_properties("eval/best_loss", "min", SPACE)
    seen = []
    for i in range(6):
        config = inner.suggest(f"t{i}")
        seen.append(point_key(config))
        inner.on_trial_complete(f"t{i}", result={"eval/best_loss": _score(config)})
    assert len(set(seen)) < 6


def test_every_trial_is_a_new_point_and_repeats_reach_optuna_with_the_recorded_result():
    inner, wrapped = _searcher()
    trained = []
    for i in range(6):
        config = wrapped.suggest(f"t{i}")
        assert config not in (None, Searcher.FINISHED)
        trained.append(point_key(config))
        wrapped.on_trial_complete(f"t{i}", result={"eval/best_loss": _score(config)})
    assert len(set(trained)) == 6  # the whole grid, each point once
    assert wrapped.suggest("t6") == Searcher.FINISHED  # nothing new is left
    study = inner._ot_study
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 6 + wrapped.reused  # Optuna heard of every repeat, answered with the first result
    for t in done:
        assert t.value == _score(t.params)


def test_a_repeat_of_a_running_point_waits_for_its_result_and_the_state_survives_a_save():
    inner, wrapped = _searcher()
    first = wrapped.suggest("a")
    second = wrapped.suggest("b")
    assert point_key(first) != point_key(second)  # concurrent trials never share a point
    state = wrapped.get_state()
    again = NoRepeats(inner)
    again.set_state(state)  # what Ray's search generator restores after a kill
    assert again.running == {"a": point_key(first), "b": point_key(second)}
    again.on_trial_complete("a", result={"eval/best_loss": _score(first)})
    assert point_key(first) in again.results and "a" not in again.running


def test_a_suggestion_of_a_point_in_training_is_answered_when_that_trial_ends():
    point = {"alpha": 0.2, "lr": 1e-4}
    inner = OptunaSearch(metric="eval/best_loss", mode="min", sampler=TPESampler(seed=0),
                         points_to_evaluate=[point, point])  # Optuna's own queue asks for it twice
    wrapped = NoRepeats(inner)
    wrapped.set_search_properties("eval/best_loss", "min", SPACE)
    assert wrapped.suggest("a") == point
    other = wrapped.suggest("b")
    # Ray's trial b is the searcher's second ask of it: the first ask (under b's own id) waits for a's result
    assert other != point and wrapped.waiting == {point_key(point): ["b"]} and wrapped.inner["b"] == "b-again1"
    wrapped.on_trial_complete("a", result={"eval/best_loss": 0.5})
    values = sorted(t.value for t in inner._ot_study.trials if t.state == optuna.trial.TrialState.COMPLETE)
    assert values == [0.5, 0.5] and wrapped.waiting == {}  # the waiting ask got the trained point's result
