"""The MLflow trial callback against a real sqlite store: nesting, valid params for joint grid keys,
per-epoch metrics, and reattachment to the same run after a restore (no duplicates)."""

import pickle
from types import SimpleNamespace

from mlflow.tracking import MlflowClient

from fsd.tuning import tracking


def test_trial_runs_are_nested_and_found_again_after_a_restore(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp = tracking.experiment_id(uri, "rte")
    search = tracking.open_run(uri, exp, None, "fsd-smoke", None, {"method": "fsd"})
    stage = tracking.open_run(uri, exp, None, "fsdil-mix", search, {"stage": "fsdil-mix"})
    cb = tracking.TrialTracker(uri, exp, stage, {"stage": "fsdil-mix"}, {"task": "rte", "beta": 1.0})
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
    exp = tracking.experiment_id(uri, "rte")
    stage = tracking.open_run(uri, exp, None, "vkd", None, {})
    cb = tracking.TrialTracker(uri, exp, stage, {}, {})
    cb.on_trial_start(0, [], SimpleNamespace(trial_id="t1", config={"lr": 1e-5}))
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "checkpoint.pt").write_bytes(b"x")
    tracking.record_best_checkpoints(uri, exp, stage, {"t1": str(ckpt)}, upload=True)
    client = MlflowClient(uri)
    (run,) = client.search_runs([exp], filter_string="tags.ray_trial_id = 't1'")
    assert run.data.tags["best_checkpoint"] == str(ckpt)
    assert [a.path for a in client.list_artifacts(run.info.run_id, "best_checkpoint")] == [
        "best_checkpoint/checkpoint.pt"]


def test_rungs_are_steps_in_samples_and_a_stopped_trial_says_where_it_stopped(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp = tracking.experiment_id(uri, "rte")
    stage = tracking.open_run(uri, exp, None, "vkd", None, {})
    cb = tracking.TrialTracker(uri, exp, stage, {}, {})
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
