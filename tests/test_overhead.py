"""The overhead cuts of issue 37 change no score. A tiny VKD search (smoke preset, four evaluations a trial,
its two points confirmed on one more seed, in the stage's one experiment) runs with every cut: one trial at a
time, so the experiment's trials share one reused worker; evaluations on length-sorted batches in inference
mode; a checkpoint written only where Tune can keep it. Each trial is then run again as trials ran before the cuts
(tests/unchanged_path.py: a fresh process, no Ray, the stored-order evaluation, no checkpoint), and every
report's scores and losses, and the checkpoint Tune kept as the trial's best, are compared."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fsd.config import DataSpec
from fsd.teacher import TeacherSpec, ensure_teacher, teacher_data

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    # One thread, as a Ray worker of one CPU runs: the sums of a step split over threads differently otherwise.
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def search(tmp_path_factory, tiny_bert, glue_dir) -> Path:
    root = tmp_path_factory.mktemp("overhead")
    data = teacher_data(DataSpec("rte", glue_dir, max_train_samples=64, max_eval_samples=64))
    teacher = ensure_teacher(TeacherSpec(tiny_bert, data, epochs=1), str(root / "shared"))
    storage = root / "storage"
    cmd = [sys.executable, str(ROOT / "tune_main.py"), "--task", "rte", "--method", "vkd", "--preset", "smoke",
           "--data-dir", glue_dir, "--teacher", teacher, "--student-init", tiny_bert, "--student-layers", "2",
           "--storage", str(storage), "--max-concurrent", "1", "--confirm-top", "2", "--confirm-seeds", "1",
           # four evaluations a trial; every trial's best checkpoint kept, to compare
           "--set", "batch_size=8", "--set", "eval_every=16", "--log-checkpoints", "all"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return storage


def _trials(storage: Path) -> list[Path]:
    found = sorted(storage.glob("stages/rte-vkd-*/rte-vkd*/train_trial_*"))
    assert len(found) == 4  # 2 grid points, each on the search's seed and one more
    return found


def _results(trial: Path) -> list[dict]:
    return [json.loads(line) for line in (trial / "result.json").read_text().splitlines() if line.strip()]


def _ray_best(results: list[dict]) -> int:
    """The report whose checkpoint Tune keeps as the best: the highest score, of equal ones the latest."""
    best = max(r["eval/score"] for r in results)
    return max(i for i, r in enumerate(results) if r["eval/score"] == best)


def test_trials_of_an_experiment_share_one_reused_worker(search):
    # Both points are the stage's leading points: their confirmation seed runs in the stage's own experiment.
    (experiment,) = {t.parent for t in _trials(search)}
    timelines = [json.loads((t / "timeline.json").read_text()) for t in experiment.glob("train_trial_*")]
    assert len(timelines) == 4
    assert len({t["pid"] for t in timelines}) == 1  # one process ran all four: reuse_actors is on
    last = max(timelines, key=lambda t: t["start"])
    assert last["process_start"] < min(t["start"] for t in timelines)  # started before any trial


def test_every_score_loss_and_kept_checkpoint_is_as_before_the_cuts(search, tmp_path):
    for trial in _trials(search):
        results = _results(trial)
        assert [r["progress/samples"] for r in results] == [16, 32, 48, 64]
        kept = {json.loads((c / "checkpoint.json").read_text())["samples"]: c for c in trial.glob("checkpoint_*")}
        config = next(iter(kept.values())) / "checkpoint.json"
        out = subprocess.run([sys.executable, str(ROOT / "tests" / "unchanged_path.py"), str(config),
                              str(tmp_path / trial.name)], capture_output=True, text=True, env=_env())
        assert out.returncode == 0, out.stderr[-3000:]
        before = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
        assert len(before) == len(results)
        for now, then in zip(results, before, strict=True):
            assert now["progress/samples"] == then["progress/samples"]
            assert now["eval/score"] == then["eval/score"]  # the score, to the last bit
            assert now["eval/accuracy"] == then["eval/accuracy"]
            assert now["train/loss"] == then["train/loss"]  # the training is the same
            # The logits of a row move in the last float bit with its batch's width (SDPA): the loss with them.
            assert now["eval/loss"] == pytest.approx(then["eval/loss"], rel=1e-6)
        # The best checkpoint is the one Tune kept before the cuts: the same step, the same weights.
        best = results[_ray_best(results)]["progress/samples"]
        assert best in kept
        weights = load_file(kept[best] / "student" / "model.safetensors")
        expected = load_file(tmp_path / trial.name / f"{best}.safetensors")
        assert weights.keys() == expected.keys()
        assert all(torch.equal(weights[k], expected[k]) for k in weights)


def test_checkpoints_are_written_where_they_can_be_kept(search):
    """A report before the last writes a checkpoint when its score is not below the best so far; the last
    always does (the trial's end, for a restore to find), without what only resuming reads."""
    for trial in _trials(search):
        results = _results(trial)
        reports = json.loads((trial / "timeline.json").read_text())["reports"]
        best, expected = -math.inf, []
        for i, r in enumerate(results):
            expected.append(i == len(results) - 1 or r["eval/score"] >= best)
            best = max(best, r["eval/score"])
        assert [r["saved"] is not None for r in reports] == expected
    stage = next(search.glob("stages/rte-vkd-*"))
    ledger = json.loads((search / "rte-vkd" / "ledger.json").read_text())
    assert ledger["stages"]["vkd"]["checkpoint"].startswith(str(stage))
