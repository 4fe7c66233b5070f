"""The schedules as data: the paper's grids, the refine rule, presets, --dry-run."""

import subprocess
import sys
from pathlib import Path

import pytest

from search_spaces import Derived, format_schedule, get_schedule
from search_spaces.base import METHODS, thin

COARSE = [0.0, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0]
ROOT = Path(__file__).resolve().parents[1]


def test_fsd_walks_the_papers_six_stages():
    s = get_schedule("fsd", "qqp", "paper")
    assert [x.name for x in s.stages] == ["vkd", "fsdi", "fsdl", "fsdil", "fsdil-mix", "memory", "fsdg-coarse",
                                          "fsdg-refine-g", "fsdg-refine-lam", "fsd"]
    coarse = s.stage("fsdg-coarse")
    assert list(coarse.grid["gamma_g"]) == COARSE and list(coarse.grid["lam"]) == COARSE
    assert coarse.trial_count() == 81
    assert s.stage("vkd").grid["lr"] == (1e-5, 2e-5, 5e-5)
    assert s.stage("fsdi").grid["lr"] == (3e-5, 4e-5, 5e-5, 6e-5)
    assert s.stage("fsdi").inherit == {"alpha": "vkd", "temperature": "vkd", "epochs": "vkd"}
    assert set(s.stage("vkd").ours) == {"alpha", "temperature", "epochs"}  # the paper's sets were lost


def test_refine_rule():
    r = Derived("refine", "gamma_g", "coarse")
    assert r.values({"gamma_g": 1e-4}) == pytest.approx((6e-5, 7e-5, 8e-5, 9e-5, 2e-4, 3e-4, 4e-4, 5e-4))
    assert r.values({"gamma_g": 0.1}) == pytest.approx(tuple(i / 10 for i in range(1, 10)))
    assert r.values({"gamma_g": 1.0}) == pytest.approx(tuple(i / 10 for i in range(1, 10)))
    assert r.values({"gamma_g": 0.0}) == ()
    lam = Derived("refine", "lam", "coarse", bounds=(0.0, 1.0))
    assert max(lam.values({"lam": 0.01})) <= 1.0
    assert lam.values({"lam": 0.01}) == pytest.approx((0.006, 0.007, 0.008, 0.009, 0.02, 0.03, 0.04, 0.05))


def test_paper_refine_grids_follow_from_the_papers_coarse_winners():
    """docs/method.md §7: a first weight of 1e-6 (WNLI/RTE/MNLI) refines to {6e-7..5e-6}."""
    s = get_schedule("fsd", "rte", "paper").stage("fsdg-refine-g")
    grid = s.resolve({"fsdg-coarse": {"gamma_g": 1e-6, "lam": 0.1}})
    assert grid["gamma_g"] == pytest.approx((6e-7, 7e-7, 8e-7, 9e-7, 2e-6, 3e-6, 4e-6, 5e-6))


def test_mix_and_scale():
    mix = Derived("mix", "gamma_i+gamma_l", "fsdil", (0.1, 0.5))
    assert mix.values({"beta": 2.0}) == ((0.2, 1.8), (1.0, 1.0))
    scale = Derived("scale", "gamma_i+gamma_l", "fsdil-mix", (0.1, 10.0))
    assert scale.values({"gamma_i": 0.2, "gamma_l": 1.8}) == ((0.02, 0.18), (2.0, 18.0))


@pytest.mark.parametrize("method", METHODS)
def test_presets_shrink_every_grid(method):
    paper, smoke = get_schedule(method, "rte", "paper"), get_schedule(method, "rte", "smoke")
    for a, b in zip(paper.stages, smoke.stages, strict=True):
        assert "epochs" not in b.grid
        for k, v in b.grid.items():
            assert set(v) <= set(a.grid[k]) and len(v) <= 2
    assert smoke.budget.epochs == 1


def test_thin_keeps_the_ends():
    assert thin((1, 2, 3, 4, 5), 2) == (1, 5)
    assert thin((1, 2, 3), 5) == (1, 2, 3)


def test_unknown_method_or_preset():
    with pytest.raises(ValueError, match="unknown method 'bert'"):
        get_schedule("bert", "rte")
    with pytest.raises(ValueError, match="unknown preset"):
        get_schedule("fsd", "rte", "huge")


def test_dry_run_lists_the_grids_and_writes_nothing(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "tune_main.py"), "--task", "qqp", "--dry-run", "--preset", "paper",
                        "--storage", str(tmp_path / "runs")], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"gamma_g: {COARSE}" in r.stdout and f"lam: {COARSE}" in r.stdout
    assert "fsdg-coarse [fsdg]: 81 trials" in r.stdout
    assert "total: 228 trials" in r.stdout
    # The cost counts the folded grid: gamma_g = 0 trains the VKD winner, carried instead of run nine times.
    assert "| fsd | fsdg-coarse | 72 of 81 points + 6 confirming | grid |" in r.stdout
    assert "competes with: the best winner of fsdi, fsdl, fsdil, fsdil-mix, fsdg-refine-lam" in r.stdout
    assert "(carried, not re-trained)  [ours]" in r.stdout
    assert r.stdout.startswith(format_schedule(get_schedule("fsd", "qqp", "paper")) + "\n")  # then the cost
    assert list(tmp_path.iterdir()) == []


def test_smoke_budget_fits_a_memory_in_its_rows():
    budget = get_schedule("fsd", "qqp", "smoke").budget
    assert budget.memory_size <= budget.max_train_samples


@pytest.mark.parametrize("preset", ["paper", "quick"])
def test_grid_overrides_replace_a_parameter_wherever_it_is_searched(preset):
    """--grid lr=...: every stage that searches lr gets the user's values (no longer marked 'ours'); the
    other parameters, the derived grids and the inherited values stay the schedule's."""
    plain = get_schedule("fsd", "rte", preset)
    schedule = get_schedule("fsd", "rte", preset, {"lr": (1e-4, 2e-4), "alpha": (0.5,)})
    changed = 0
    for a, b in zip(plain.stages, schedule.stages, strict=True):
        assert (b.derived, b.inherit, b.fixed, b.carry) == (a.derived, a.inherit, a.fixed, a.carry)
        assert set(b.grid) == set(a.grid)
        for k, v in a.grid.items():
            assert b.grid[k] == {"lr": (1e-4, 2e-4), "alpha": (0.5,)}.get(k, v)
        assert set(b.ours) == set(a.ours) - {"lr", "alpha"}
        changed += "lr" in a.grid
    assert changed >= 2  # vkd and the FSD-part stages search lr
    assert "lr: [0.0001, 0.0002]" in format_schedule(schedule)


def test_cpu_preset_searches_its_measured_learning_rate_in_small_batches():
    """The cpu preset thins like smoke, but over 2,000 rows in batches of 16, and every stage that searches lr
    searches 2e-4 (marked ours: measured for a 3-layer MiniLM student); --grid still wins."""
    schedule = get_schedule("fsd", "sst2", "cpu")
    searched = [s for s in schedule.stages if "lr" in s.grid]
    assert len(searched) >= 4 and all(s.grid["lr"] == (2e-4,) and "lr" in s.ours for s in searched)
    assert "[ours: the cpu preset's, measured for a small student]" in format_schedule(schedule)
    budget = schedule.budget
    assert (budget.epochs, budget.max_train_samples, budget.batch_size) == (1, 1600, 16)
    assert (budget.teacher_epochs, budget.teacher_lr) == (1, 1e-4)
    assert get_schedule("fsd", "sst2", "cpu", {"lr": (1e-4,)}).stage("vkd").grid["lr"] == (1e-4,)
    assert get_schedule("fsd", "sst2", "paper").stage("vkd").grid["lr"] == (1e-5, 2e-5, 5e-5)
