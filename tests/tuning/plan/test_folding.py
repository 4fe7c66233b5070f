"""Grid folding: a value that cannot matter is not searched, each distinct student is trained once, and a
student an earlier stage chose is carried instead of re-trained (fsd/objectives/equivalence.py,
fsd/tuning/plan/folding.py, fsd/tuning/plan/winners.py)."""

import pytest
import torch

from fsd.config import DistillConfig
from fsd.objectives.equivalence import effective
from fsd.train import distill
from fsd.tuning.plan.folding import fold, points, student_key
from fsd.tuning.plan.spec import SearchSpec
from fsd.tuning.plan.trials import stage_base
from fsd.tuning.plan.winners import Candidate, carried, choose, not_last_line, search_best
from search_spaces import get_schedule
from search_spaces.joint import expand

BASE = {"task": "rte", "teacher": "/t", "alpha": 0.5, "temperature": 10.0, "lr": 2e-5, "epochs": 3, "beta": 1.0}


@pytest.mark.parametrize("values,method,gone", [
    ({"method": "fsdg", "gamma_g": 0.0, "lam": 0.3}, "vkd", {"gamma_g", "lam", "memory_size", "beta"}),
    ({"method": "fsd", "gamma_g": 0.0, "lam": 0.3}, "fsdil", {"gamma_g", "lam", "memory_size"}),
    ({"method": "fsd", "gamma_i": 0.0, "gamma_g": 0.0}, "fsdl", {"gamma_i", "gamma_g", "lam"}),
    ({"method": "fsdil", "beta": 0.0}, "vkd", {"beta", "gamma_i", "gamma_l"}),
    ({"method": "pkd", "beta": 0.0}, "vkd", {"beta"}),
    ({"method": "rkd", "rkd_distance": 0.0, "rkd_angle": 0.0}, "vkd", {"rkd_distance", "beta"}),
    ({"method": "vkd", "alpha": 1.0}, "nokd", {"alpha", "temperature"}),
    ({"method": "fsd", "gamma_l": 0.0}, "fsd", set()),  # I and G alone: no method of its own, nothing dropped
])
def test_a_zero_weight_reduces_the_method_and_drops_what_only_its_term_reads(values, method, gone):
    eff = effective({**BASE, **values})
    assert eff.config["method"] == method
    assert not gone & set(eff.config)
    assert {"lr", "epochs", "task", "teacher", "seed"} <= set(eff.config)  # what every method depends on


def test_the_student_key_ignores_speed_and_placement_and_unread_values():
    a = {**BASE, "method": "vkd", "storage": "/a", "device": "cpu", "compile": True, "gamma_g": 0.3}
    b = {**BASE, "method": "fsdg", "gamma_g": 0.0, "lam": 0.9, "storage": "/b"}
    assert student_key(a) == student_key(b)
    assert student_key(a) != student_key({**a, "lr": 3e-5})
    assert student_key({**b, "gamma_g": 1e-7}) != student_key(a)


def test_fsdg_with_gamma_g_0_trains_the_vkd_student_to_the_bit(tiny_bert, glue_dir, tmp_path):
    """What folding relies on: the two configurations the key calls equal train equal students."""
    common = {"task": "rte", "teacher": tiny_bert, "student_layers": 2, "epochs": 1, "batch_size": 8,
              "max_train_samples": 24, "max_eval_samples": 16, "max_seq_len": 64, "data_dir": glue_dir,
              "storage": str(tmp_path), "memory_size": 4, "lr": 1e-3}
    vkd = DistillConfig.from_dict({**common, "method": "vkd"})
    fsdg = DistillConfig.from_dict({**common, "method": "fsdg", "gamma_g": 0.0, "lam": 0.7})
    assert student_key(vkd.to_dict()) == student_key(fsdg.to_dict())
    (a,), (b,) = list(distill(vkd)), list(distill(fsdg))
    assert a.metrics["eval/score"] == b.metrics["eval/score"] and a.metrics["eval/loss"] == b.metrics["eval/loss"]
    for name, value in a.state()["student"].items():
        assert torch.equal(value, b.state()["student"][name]), name


def _spec(preset="paper", **kw):
    return SearchSpec(task="rte", method="fsd", storage="/s", mlflow_uri="", teacher="/t", preset=preset, **kw)


def _winner(spec, schedule, stage, winners):
    """A stage's winner as the runner records it: the base of its trials and its first grid point."""
    s = schedule.stage(stage)
    grid = s.resolve(winners)
    return {**stage_base(spec, schedule, s, "/t", winners), **expand(points(grid)[0])}


def test_the_paper_fsdg_coarse_grid_folds_81_points_to_72_and_carries_the_vkd_winner():
    spec, schedule = _spec(), get_schedule("fsd", "rte", "paper")
    winners = {"vkd": _winner(spec, schedule, "vkd", {})}
    stage = schedule.stage("fsdg-coarse")
    grid = stage.resolve(winners)
    base = stage_base(spec, schedule, stage, "/t", winners)
    folded = fold(grid, base, winners)
    assert (folded.size, folded.runs, folded.settled, folded.duplicates) == (81, 72, 9, 0)
    assert [c.stage for c in folded.carried] == ["vkd"] and folded.carried[0].point == {"gamma_g": 0.0, "lam": 0.0}
    assert folded.grid == {"gamma_g": grid["gamma_g"][1:], "lam": grid["lam"]}  # still a grid: TPE sees each
    assert "gamma_g = 0" in folded.says() and "81 points folded to 72" in folded.says()
    # No two trials of the folded stage train the same student, and none trains the VKD winner.
    keys = [student_key({**base, **expand(p)}) for p in points(folded.grid)]
    assert len(set(keys)) == len(keys) == 72 and student_key(winners["vkd"]) not in keys


def test_without_the_vkd_winner_the_nine_gamma_g_0_points_are_one_trial():
    spec, schedule = _spec(), get_schedule("fsd", "rte", "paper")
    winners = {"vkd": _winner(spec, schedule, "vkd", {})}
    stage = schedule.stage("fsdg-coarse")
    folded = fold(stage.resolve(winners), stage_base(spec, schedule, stage, "/t", winners), {})
    assert (folded.runs, folded.duplicates, folded.settled) == (73, 8, 0)
    assert list(folded.grid) == ["gamma_g+lam"] and len(folded.grid["gamma_g+lam"]) == 73  # no cross product now


def test_a_refine_stage_after_gamma_g_0_has_nothing_new_and_carries_the_winner():
    spec, schedule = _spec(), get_schedule("fsd", "rte", "paper")
    winners = {"vkd": _winner(spec, schedule, "vkd", {})}
    coarse = schedule.stage("fsdg-coarse")
    base = stage_base(spec, schedule, coarse, "/t", winners)
    winners["fsdg-coarse"] = {**base, "gamma_g": 0.0, "lam": 0.0}  # the carried VKD point
    winners["fsdg-refine-g"] = winners["fsdg-coarse"]  # skipped: a refine around 0
    stage = schedule.stage("fsdg-refine-lam")
    grid = stage.resolve(winners)
    assert len(grid["lam"]) == 0  # lam = 0: the paper's refine rule has nothing around it
    winners["fsdg-coarse"] = {**base, "gamma_g": 0.0, "lam": 0.1}  # a lam the rule can refine around
    winners["fsdg-refine-g"] = winners["fsdg-coarse"]
    grid = stage.resolve(winners)
    assert len(grid["lam"]) == 9
    folded = fold(grid, stage_base(spec, schedule, stage, "/t", winners), winners)
    assert folded.runs == 0 and folded.settled == 9  # lam does nothing when gamma_g = 0
    assert {c.stage for c in folded.carried} == {"vkd"}


def test_the_last_stage_carries_the_best_fsd_family_student_and_never_hands_back_less():
    schedule = get_schedule("fsd", "rte", "paper")
    last = schedule.stage("fsd")
    records = {name: {"status": "done", "score": score, "winner": {"method": name}, "checkpoint": f"/{name}"}
               for name, score in [("vkd", 0.70), ("fsdi", 0.71), ("fsdl", 0.69), ("fsdil", 0.72),
                                   ("fsdil-mix", 0.83), ("fsdg-refine-lam", 0.74)]}
    competitors = carried(records, last, None, {})
    assert [c.source for c in competitors] == ["fsdi", "fsdl", "fsdil", "fsdil-mix", "fsdg-refine-lam"]
    own = Candidate({"method": "fsd"}, 0.7976, "/fsd")
    chosen = choose(own, competitors)
    assert chosen.source == "fsdil-mix" and chosen.checkpoint == "/fsdil-mix"  # reused, not re-trained
    # An exact tie goes to the candidate nearest the previous stage's winner, not to whoever came first.
    tied = Candidate({"method": "fsd", "beta": 10.0}, 0.83, "/own")
    records["fsdil-mix"]["winner"] = {"method": "fsdil-mix", "beta": 1.0}
    competitors = carried(records, last, None, {})
    assert choose(tied, competitors, reference={"beta": 1.0}).source == "fsdil-mix"
    assert choose(tied, competitors, reference={"beta": 10.0}).source is None
    assert choose(tied, competitors[::-1], reference={"beta": 10.0}).source is None


def test_the_search_hands_back_its_best_stage_and_says_so_when_it_is_not_the_last():
    schedule = get_schedule("fsd", "rte", "paper")
    records = {"vkd": {"status": "done", "score": 0.80, "winner": {"method": "vkd"}},
               "fsdil-mix": {"status": "done", "score": 0.83, "winner": {"method": "fsdil"}},
               "fsd": {"status": "done", "score": 0.7976, "winner": {"method": "fsd"}}}
    assert search_best(records, schedule)[0] == "fsdil-mix"
    line = not_last_line(records, schedule, holdout=True)
    assert line.startswith("the best student is fsdil-mix's (fsdil, holdout 83.00), not the last stage's (fsd, 79.76)")
    records["fsd"] = {**records["fsdil-mix"], "trained_in": "fsdil-mix"}  # the last stage carried it
    assert not_last_line(records, schedule, holdout=True) is None
    assert search_best(records, schedule)[0] == "fsd"  # a tie: the last stage's, as the paper's schedule
    records["fsd"] = {"status": "done", "score": 0.83, "winner": {"method": "fsd"}}  # its own, as good
    assert not_last_line(records, schedule, holdout=False) is None


def test_thinning_a_scale_grid_keeps_the_winners_own_pair():
    schedule = get_schedule("fsd", "rte", "cpu")
    (scale,) = schedule.stage("fsd").derived
    values = scale.values({"gamma_i": 0.2, "gamma_l": 0.8})
    assert len(values) == 2 and (0.2, 0.8) in values
