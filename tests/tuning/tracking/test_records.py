"""The MLflow trial callback against a real sqlite store: nesting, valid params for joint grid keys,
per-epoch metrics, and reattachment to the same run after a restore (no duplicates)."""

import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from fsd.tuning.tracking import records


def test_trial_runs_are_nested_and_found_again_after_a_restore(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp = records.experiment_id(uri, "rte")
    search = records.open_run(uri, exp, None, "fsd-smoke", None, {"method": "fsd"})
    stage = records.open_run(uri, exp, None, "fsdil-mix", search, {"stage": "fsdil-mix"})
    cb = records.TrialTracker(uri, exp, stage, {"stage": "fsdil-mix"}, {"task": "rte", "beta": 1.0})
    trial = SimpleNamespace(trial_id="abc_00000", config={"gamma_i+gamma_l": (0.1, 0.9)})
    cb.on_trial_start(0, [], trial)
    cb.on_trial_result(0, [], trial, {"epoch": 1, "eval/score": 0.5, "train/intra": 0.2, "timestamp": 1})
    cb.on_trial_error(0, [], trial)  # the driver dies; the trial is restored later

    restored = pickle.loads(pickle.dumps(cb))  # Tuner.restore unpickles the callback
    restored.on_trial_start(0, [], trial)
    # The trial re-ran epoch 1 (the driver died before Ray recorded it): its run keeps one value per epoch.
    restored.on_trial_result(0, [], trial, {"epoch": 1, "eval/score": 0.5, "timestamp": 3})
    restored.on_trial_result(0, [], trial, {"epoch": 2, "eval/score": 0.6, "timestamp": 2})
    restored.on_trial_complete(0, [], trial)

    client = MlflowClient(uri)
    runs = client.search_runs([exp], filter_string="tags.ray_trial_id = 'abc_00000'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == stage
    assert client.get_run(stage).data.tags["mlflow.parentRunId"] == search
    assert run.data.params["gamma_i"] == "0.1" and run.data.params["gamma_l"] == "0.9"
    assert [m.value for m in client.get_metric_history(run.info.run_id, "eval/score")] == [0.5, 0.6]


def test_best_checkpoints_are_recorded_and_uploaded(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp = records.experiment_id(uri, "rte")
    stage = records.open_run(uri, exp, None, "vkd", None, {})
    cb = records.TrialTracker(uri, exp, stage, {}, {})
    cb.on_trial_start(0, [], SimpleNamespace(trial_id="t1", config={"lr": 1e-5}))
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "checkpoint.pt").write_bytes(b"x")
    records.record_best_checkpoints(uri, exp, stage, {"t1": str(ckpt)}, upload=True)
    client = MlflowClient(uri)
    (run,) = client.search_runs([exp], filter_string="tags.ray_trial_id = 't1'")
    assert run.data.tags["best_checkpoint"] == str(ckpt)
    assert [a.path for a in client.list_artifacts(run.info.run_id, "best_checkpoint")] == [
        "best_checkpoint/checkpoint.pt"]


def test_rungs_are_steps_in_samples_and_a_stopped_trial_says_where_it_stopped(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp = records.experiment_id(uri, "rte")
    stage = records.open_run(uri, exp, None, "vkd", None, {})
    cb = records.TrialTracker(uri, exp, stage, {}, {})
    stopped = SimpleNamespace(trial_id="s", config={"lr": 1e-5}, last_result=None)
    whole = SimpleNamespace(trial_id="w", config={"lr": 5e-5}, last_result=None)
    for trial, points in ((stopped, [100, 200]), (whole, [100, 200, 300, 400])):
        for samples in points:
            trial.last_result = {"progress/samples": samples, "progress/budget": 400, "eval/score": samples / 1000,
                                 "epoch": samples / 400, "timestamp": 1}
            cb.on_trial_result(0, [], trial, trial.last_result)
        cb.on_trial_complete(0, [], trial)
    client = MlflowClient(uri)
    (s,) = client.search_runs([exp], filter_string="tags.ray_trial_id = 's'")
    (w,) = client.search_runs([exp], filter_string="tags.ray_trial_id = 'w'")
    assert [m.step for m in client.get_metric_history(w.info.run_id, "eval/score")] == [100, 200, 300, 400]
    assert s.data.tags["early_stopped"] == "true" and s.data.tags["stopped_at_samples"] == "200"
    assert "early_stopped" not in w.data.tags and s.info.status == w.info.status == "FINISHED"


def test_a_trial_run_says_what_it_trained_and_was_ranked_on(tmp_path, glue_dir):
    """Dataset inputs of a trial run: the training rows and the holdout, each with source, digest and rows;
    another row limit is another digest."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp = records.experiment_id(uri, "rte")
    stage = records.open_run(uri, exp, None, "vkd", None, {"stage": "vkd"})
    base = {"task": "rte", "data_dir": glue_dir, "max_train_samples": 1000, "holdout_rows": 200, "holdout_seed": 42}
    datasets = records.dataset_records(base)
    cb = records.TrialTracker(uri, exp, stage, {"stage": "vkd"}, base, datasets=datasets)
    cb.on_trial_start(0, [], SimpleNamespace(trial_id="ds_00000", config={"alpha": 0.5}))
    run = MlflowClient(uri).search_runs([exp], filter_string="tags.ray_trial_id = 'ds_00000'")[0]
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"rte-train", "rte-holdout"}
    train, held = inputs["rte-train"], inputs["rte-holdout"]
    assert '"num_rows": 1000' in train.dataset.profile and '"num_rows": 200' in held.dataset.profile
    assert [t.value for t in train.tags] == ["training"] and [t.value for t in held.tags] == ["validation"]
    assert glue_dir in train.dataset.source and train.dataset.digest != held.dataset.digest
    other = records.dataset_records({**base, "max_train_samples": 500})
    assert other[0]["digest"] != train.dataset.digest and other[0]["rows"] == 500
    dev = records.dataset_records({"task": "rte", "data_dir": glue_dir})
    assert [d["name"] for d in dev] == ["rte-train", "rte-dev"] and [d["rows"] for d in dev] == [2490, 277]


def test_a_stage_model_loads_as_a_pipeline_without_this_project(tmp_path, tiny_bert, glue_dir):
    """The registered student, loaded by `mlflow.transformers.load_model` in a fresh Python process that cannot
    import fsd, predicts on three RTE dev rows what the student itself does; it is logged once, and another alias
    can point at its version."""
    import json
    import os
    import subprocess
    import sys

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    student = tmp_path / "student"
    AutoModelForSequenceClassification.from_pretrained(tiny_bert).save_pretrained(student)
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(student)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp = records.experiment_id(uri, "rte")
    run = records.open_run(uri, exp, None, "vkd", None, {"stage": "vkd"})
    labels = ["entailment", "not_entailment"]
    version = records.log_stage_model(uri, run, str(student), "fsd-rte-vkd", "vkd", labels, max_length=64)
    assert records.log_stage_model(uri, run, str(student), "fsd-rte-vkd", "vkd", []) == version  # once per run
    client = MlflowClient(uri)
    assert "student_files" not in [a.path for a in client.list_artifacts(run)]  # one copy of the student
    records.alias_model(uri, "fsd-rte-vkd", "best", run)  # a carried or best student: the same version
    assert str(client.get_model_version_by_alias("fsd-rte-vkd", "best").version) == version

    rows = [line.split("\t") for line in (Path(glue_dir) / "RTE" / "dev.tsv").read_text().splitlines()[1:4]]
    pairs = [(r[1], r[2]) for r in rows]
    script = (
        "import json, sys, mlflow\n"
        "assert 'fsd' not in sys.modules\n"
        f"mlflow.set_tracking_uri({uri!r})\n"
        "pipe = mlflow.transformers.load_model('models:/fsd-rte-vkd@vkd')\n"
        f"out = pipe([{{'text': a, 'text_pair': b}} for a, b in {pairs!r}], top_k=None, truncation=True)\n"
        "print(json.dumps([{d['label']: d['score'] for d in row} for row in out]))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    model = AutoModelForSequenceClassification.from_pretrained(student).eval()
    tokenizer = AutoTokenizer.from_pretrained(student)
    with torch.no_grad():
        batch = tokenizer([a for a, _ in pairs], [b for _, b in pairs], return_tensors="pt", padding=True,
                          truncation=True, max_length=64)  # the length it was logged with
        want = model(**batch).logits.softmax(-1)
    for row, probs in zip(got, want, strict=True):
        assert row["entailment"] == pytest.approx(float(probs[0]), abs=1e-5)
        assert row["not_entailment"] == pytest.approx(float(probs[1]), abs=1e-5)


def test_metrics_and_a_stage_result_sent_again_are_logged_once(tmp_path):
    """What the chaos soak found: a trial's evaluation queued while the server was away, or sent by a driver
    killed before it dropped it from its queue, was sent again by the resumed driver, and a stage's result was
    logged again by a search stopped before its ledger recorded the stage: both twice in MLflow's history."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp = records.experiment_id(uri, "rte")
    run = records.open_run(uri, exp, None, "trial", None, {})
    evaluation = [["eval/score", 0.5, 1000, 64], ["train/loss", 0.25, 1000, 64]]
    records.log_metrics(uri, run, evaluation)
    again = [[key, value, 1500, step] for key, value, _, step in evaluation]  # reported again, later
    records.log_metrics(uri, run, again)
    records.log_metrics(uri, run, [["eval/score", 0.75, 2000, 128], ["train/loss", 0.125, 2000, 128]])
    client = MlflowClient(uri)
    for key, values in (("eval/score", [(64, 0.5), (128, 0.75)]), ("train/loss", [(64, 0.25), (128, 0.125)])):
        assert [(m.step, m.value) for m in client.get_metric_history(run, key)] == values
    for _ in range(2):
        records.log_winner(uri, run, "best/eval/score", 0.5, {"winner.lr": "2e-05"})
    assert [m.value for m in client.get_metric_history(run, "best/eval/score")] == [0.5]
    records.log_winner(uri, run, "best/eval/score", 0.75, {})  # a different result is logged
    assert [m.value for m in client.get_metric_history(run, "best/eval/score")] == [0.5, 0.75]
