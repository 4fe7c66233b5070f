"""The rung rules (fsd/tuning/search/halving.py: ties kept, the score ranks) on hand-made rungs; the measurement
of the signal at each evaluation (bench/rung_rules.py) on a hand-made stage; and the recorded paper schedule on
SST-2 replayed through the tool's own scheduler: every stage's grid winner survives its rung."""

import itertools
import json
import math
import re
import sys
from types import SimpleNamespace

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
from replay import Curve, simulate  # noqa: E402
from rung_rules import (  # noqa: E402
    RungRule,
    ToolRungs,
    first_ranking_share,
    grid_winner,
    load_stages,
    replay_stage,
    replay_through,
    signals,
)

from fsd.metrics import BUDGET, SAMPLES, SCORE  # noqa: E402
from fsd.tuning.plan.ranking import RUNG_METRIC, RUNG_MODE, RUNG_TIE  # noqa: E402
from fsd.tuning.plan.rungs import rungs_for  # noqa: E402
from fsd.tuning.plan.spec import FIRST_RUNG, REDUCTION_FACTOR  # noqa: E402
from fsd.tuning.search.halving import DurableASHA, rung_cutoff, tune_config  # noqa: E402

RECORDED = ROOT / "bench" / "results" / "sst2-paper-schedule"
_FILES = itertools.count()  # a scheduler reads back the rungs its file holds: each gets its own


# ---------------------------------------------------------------------------------------------- the rules
def test_the_cutoff_is_a_recorded_trials_value_less_the_tie():
    # [0.558, 0.558, 0.559], rf 3: the 2/3 quantile's rank is 1.33; Ray interpolates 0.55833 between the
    # second and third values, the rule takes the second's own value
    assert rung_cutoff([0.558, 0.559, 0.558], 3.0, tie=0.0) == 0.558
    assert rung_cutoff([0.558, 0.559, 0.558], 3.0, tie=0.005) == pytest.approx(0.553)
    # rf 2 over four values: rank 1.5 -> the second lowest
    assert rung_cutoff([0.4, 0.1, 0.3, 0.2], 2.0, tie=0.0) == 0.2


def _stream(scheduler, results, samples=300):
    """Each (score, loss) as the first result of a new trial at `samples` of 400; the scheduler's answers."""
    out = []
    for i, (score, loss) in enumerate(results):
        trial = SimpleNamespace(trial_id=f"t{i}")
        scheduler.on_trial_add(None, trial)
        out.append(scheduler.on_trial_result(None, trial, {SAMPLES: samples, BUDGET: 400, SCORE: score,
                                                           "eval/loss": loss}))
    return out


def _tool(tmp_path, tie=RUNG_TIE, metric=RUNG_METRIC, mode=RUNG_MODE):
    """A fresh DurableASHA (its own rungs file) with one rung at 300 of 400 samples."""
    return DurableASHA(str(tmp_path / f"rungs-{next(_FILES)}.json"), rungs_for(400, 3 / 4, 3.0), metric, mode, tie)


def test_a_trial_tied_with_the_cutoff_goes_on_where_rays_asha_stops_it(tmp_path):
    from ray.tune.schedulers import ASHAScheduler

    scores = [(0.55, 0.6), (0.55, 0.6), (0.56, 0.6), (0.55, 0.6)]
    ray = ASHAScheduler(time_attr=SAMPLES, metric=SCORE, mode="max", max_t=400, grace_period=300, reduction_factor=3)
    # Ray's cutoff for the fourth is 0.5533, between the 0.55s and the 0.56: the fourth 0.55 is stopped
    assert _stream(ray, scores) == ["CONTINUE"] * 3 + ["STOP"]
    assert _stream(_tool(tmp_path, tie=0.0), scores) == ["CONTINUE"] * 4  # tied with the second: it goes on


def test_a_score_within_the_tie_of_the_cutoff_is_tied_with_it(tmp_path):
    """Half a point (RUNG_TIE) below the cutoff's trial goes on; more than that is stopped."""
    assert RUNG_TIE == pytest.approx(0.005)
    # the fourth: cutoff 0.791 (the second of [0.790, 0.791, 0.800]) - 0.005 = 0.786; the fifth: 0.791 of
    # [0.787, 0.790, 0.791, 0.800] (rank 2) - 0.005
    answers = _stream(_tool(tmp_path), [(0.790, 0.5), (0.791, 0.5), (0.800, 0.5), (0.787, 0.5), (0.785, 0.5)])
    assert answers == ["CONTINUE"] * 4 + ["STOP"]
    assert _stream(_tool(tmp_path, tie=0.0), [(0.790, 0.5), (0.791, 0.5), (0.800, 0.5), (0.787, 0.5)])[-1] == "STOP"


def test_the_rungs_rank_by_the_score_and_a_loss_never_breaks_a_tie(tmp_path):
    # every student at the majority class: the scores tie and nobody goes, whatever the loss says
    tied = [(0.5092, 0.60), (0.5092, 0.50), (0.5092, 0.70)]
    assert _stream(_tool(tmp_path), tied) == ["CONTINUE"] * 3
    # the best loss with the worst score is stopped; the worse loss with the better score goes on
    ranked = [(0.80, 0.50), (0.81, 0.60), (0.70, 0.30)]
    assert _stream(_tool(tmp_path), ranked) == ["CONTINUE", "CONTINUE", "STOP"]
    # what the rungs ranked by before: the loss, which stops the tied majority-class trial with the worst loss
    assert _stream(_tool(tmp_path, tie=0.0, metric="eval/loss", mode="min"), tied)[-1] == "STOP"


def test_the_tie_keeping_rule_survives_a_restore(tmp_path):
    import pickle

    live = _tool(tmp_path)
    at_start = pickle.dumps(live)
    assert _stream(live, [(0.55, 0.6), (0.55, 0.6), (0.56, 0.6)]) == ["CONTINUE"] * 3
    restored = pickle.loads(at_start)  # what Tuner.restore unpickles: the rungs come back from the file
    assert restored._brackets[0].tie == RUNG_TIE
    trial = SimpleNamespace(trial_id="t9")
    restored.on_trial_add(None, trial)
    result = {SAMPLES: 300, BUDGET: 400, SCORE: 0.54, "eval/loss": 0.6}
    assert restored.on_trial_result(None, trial, result) == "STOP"  # 0.54 < 0.55 - 0.005, against the saved rung


# ---------------------------------------------------------------------------------------------- the measurement
# Three trials of 4 samples evaluated at 1, 2 and 4: all tied at 1; B ends best (0.9); C leads nobody.
A = Curve({"x": "a"}, (1, 2, 4), (0.5, 0.6, 0.7), (0.70, 0.45, 0.5))
B = Curve({"x": "b"}, (1, 2, 4), (0.5, 0.7, 0.9), (0.60, 0.50, 0.3))
C = Curve({"x": "c"}, (1, 2, 4), (0.5, 0.2, 0.3), (0.65, 0.80, 0.75))


def test_the_signal_at_each_evaluation_by_hand():
    first, second, _ = signals([A, B, C])
    # at 1: every score ties; -loss ranks A1 C2 B3 against the finals' A2 C1 B3: rho = 1 - 6 * 2 / 24
    assert math.isnan(first.rho_score) and first.rho_loss == pytest.approx(0.5)
    assert (first.tied, first.above_by_score, first.tied_with_winner, first.above_by_loss) == (1.0, 0, 2, 0)
    # at 2: the score ranks as the finals; A's loss (0.45) is below the winner's (0.50)
    assert second.rho_score == pytest.approx(1.0) and second.rho_loss == pytest.approx(0.5)
    assert (second.tied, second.above_by_score, second.tied_with_winner, second.above_by_loss) == (0.0, 0, 0, 1)
    # the score first ranks at 2 of 4 samples (at 1 it ties: 0)
    assert first_ranking_share({"s": [A, B, C]}) == 0.5


def test_the_tools_scheduler_replays_as_rays_rule():
    """ToolRungs around Ray's own ASHAScheduler decides a hand table as bench/replay.py's Asha (itself checked
    against Ray's bracket in test_replay.py): B beats A; C is below the median of {A, B} at the rung."""
    from ray.tune.schedulers import ASHAScheduler

    ray = ASHAScheduler(time_attr=SAMPLES, metric=SCORE, mode="max", max_t=4, grace_period=1, reduction_factor=2)
    out = simulate([A, B, C], iter((0, 1, 2)), ToolRungs(ray), workers=1)
    assert (out.chosen, out.samples, set(out.finished)) == (1, 4 + 4 + 2, {0, 1})


# ---------------------------------------------------------------------------------------------- the recorded grid
def _recorded_bests():
    """Each stage's best trial as the grid run printed it: its score x 100 and its grid values."""
    text = (RECORDED / "grid.console.txt").read_text()
    best = {}
    for m in re.finditer(r"^stage ([\w-]+): .*; best ([\d.]+) \(([^)]*)\)", text, re.M):  # the last line wins
        best[m[1]] = (float(m[2]), {k: float(v) for k, v in (kv.split("=") for kv in m[3].split(", "))})
    return best


def _values(config):
    out = {}
    for key, value in config.items():
        out.update(zip(key.split("+"), value, strict=True) if "+" in key else {key: value})
    return out


def test_the_replay_finds_the_grid_runs_own_winners_and_the_first_rung_where_the_score_ranks():
    stages, bests = load_stages(RECORDED / "curves.json"), _recorded_bests()
    assert set(stages) == set(bests) and len(stages) == 9
    for name, curves in stages.items():
        winner = curves[grid_winner(curves)]
        score, values = bests[name]
        assert 100 * winner.final == pytest.approx(score), name
        assert all(values[k] == pytest.approx(v) for k, v in _values(winner.config).items()), name
    assert first_ranking_share(stages) == FIRST_RUNG  # the default is where the recorded curves first rank


def test_the_old_rule_replayed_is_the_recorded_halving_runs_vkd_stage_and_cuts_its_winner():
    """Ray's ASHA on the loss from 1/9 of a trial, the rule of the recorded halving run: its VKD stage (the only
    one whose trials equal the grid's: later stages inherit other winners) stops as many trials, spends the same
    samples, and loses the grid's winner, as the issue measured."""
    table = (RECORDED / "table.md").read_text()
    section = table[table.index("paper/halving"):]
    trials, stopped, samples = re.search(r"^\| vkd \| \d+ \| (\d+) \| (\d+) \| ([\d,]+) \|", section, re.M).groups()
    old = RungRule("the recorded halving run", 1 / 9, "eval/loss", "min", tie=None)
    run = replay_stage(load_stages(RECORDED / "curves.json")["vkd"], old)
    assert (run.trials, run.stopped, run.samples) == (int(trials), int(stopped), int(samples.replace(",", "")))
    assert not run.winner_kept


def test_every_stage_winner_of_the_recorded_grid_survives_the_tools_rungs(tmp_path):
    """The paper's schedule on SST-2 as the grid recorded it, each stage's trials in grid order two at a time
    through the scheduler `tune_config` gives a halving stage with the defaults: each stage's grid winner
    reaches its full budget and is the stage's winner again; the share of the grid's samples it spent is
    printed per stage and in total (`pytest -s`)."""
    stages = load_stages(RECORDED / "curves.json")
    lines, spent, grid, stopped = [], 0, 0, 0
    for name, curves in stages.items():
        rungs = rungs_for(max(c.budget for c in curves), FIRST_RUNG, REDUCTION_FACTOR)
        config = tune_config("halving", str(tmp_path / name), f"sst2-{name}", rungs, 2, 0)
        run = replay_through(curves, ToolRungs(config.scheduler))
        assert run.winner_kept and run.same_winner, f"{name}: the grid's winner was stopped at a rung"
        spent, grid, stopped = spent + run.samples, grid + run.grid, stopped + run.stopped
        lines.append(f"{name}: {run.stopped} of {run.trials} stopped, {run.samples:,} samples, {run.share:.1%}")
    assert stopped > 0 and spent < grid  # the rungs did cut: keeping every winner was not keeping every trial
    print("\n".join([*lines, f"all: {stopped} stopped, {spent:,} of {grid:,} samples, {spent / grid:.1%}"]))
    assert json.loads((tmp_path / "vkd" / "rungs.json").read_text())["stopped"]  # the tool's own file, written


def test_an_optuna_stage_keeps_its_journal_in_a_stage_folder_not_made_yet(tmp_path):
    """The stage's folder exists only once Ray starts its trials; the TPE journal is opened before that."""
    from fsd.tuning.search import halving

    folder = tmp_path / "stages" / "rte-vkd-0123"
    config = halving.tune_config("optuna", str(folder), "rte-vkd", rungs_for(900, 1 / 9, 3.0), 1, 4)
    assert (folder / "optuna.journal").is_file() and config.search_alg is not None
