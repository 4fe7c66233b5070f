"""MLflow records of a search: a parent run per search, a child per stage, a grandchild per trial.

Trial runs are found again by their `ray_trial_id` tag, so a restored stage reattaches to the same runs
instead of opening duplicates (Ray's own MLflowLoggerCallback keeps its map in memory only).
"""

from __future__ import annotations

import math
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from fsd.tuning.trainable import expand

PARENT_TAG = "mlflow.parentRunId"


def client_for(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri)


def experiment_id(uri: str, name: str) -> str:
    client = client_for(uri)
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp else client.create_experiment(name)


def open_run(uri: str, exp_id: str, run_id: str | None, name: str, parent: str | None,
             tags: dict[str, str]) -> str:
    """Reopen `run_id` (status RUNNING) when given, else create a run, nested under `parent`."""
    client = client_for(uri)
    if run_id:
        client.update_run(run_id, status="RUNNING")
        return run_id
    all_tags = {**tags, **({PARENT_TAG: parent} if parent else {})}
    return client.create_run(exp_id, run_name=name, tags=all_tags).info.run_id


def close_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    client_for(uri).set_terminated(run_id, status=status)


def _params(config: dict[str, Any]) -> list[Param]:
    return [Param(k, str(v)[:6000]) for k, v in sorted(config.items())]


class TrialTracker(Callback):
    """Logs every trial of one stage as a nested MLflow run: params, per-epoch metrics, tags."""

    def __init__(self, uri: str, exp_id: str, stage_run_id: str, tags: dict[str, str], base: dict[str, Any]):
        self.uri, self.exp_id, self.stage_run_id, self.tags, self.base = uri, exp_id, stage_run_id, tags, base
        self._runs: dict[str, str] = {}

    def run_for(self, trial) -> str:
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        client = client_for(self.uri)
        found = client.search_runs(
            [self.exp_id], filter_string=f"tags.ray_trial_id = '{trial.trial_id}' and "
                                         f"tags.`{PARENT_TAG}` = '{self.stage_run_id}'", max_results=1)
        if found:
            run_id = found[0].info.run_id
            client.update_run(run_id, status="RUNNING")
        else:
            tags = {**self.tags, "ray_trial_id": trial.trial_id, PARENT_TAG: self.stage_run_id}
            run_id = client.create_run(self.exp_id, run_name=str(trial), tags=tags).info.run_id
            # Joint grid keys ("gamma_i+gamma_l") are no valid MLflow names: log the values they set.
            client.log_batch(run_id, params=_params(expand({**self.base, **trial.config})))
        self._runs[trial.trial_id] = run_id
        return run_id

    def on_trial_start(self, iteration, trials, trial, **info):
        self.run_for(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        metrics = [Metric(k, float(v), int(result.get("timestamp", 0)) * 1000, step)
                   for k, v in result.items()
                   if "/" in k and isinstance(v, (int, float)) and math.isfinite(float(v))]
        client_for(self.uri).log_batch(self.run_for(trial), metrics=metrics)

    def on_trial_complete(self, iteration, trials, trial, **info):
        client_for(self.uri).set_terminated(self.run_for(trial), "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        client_for(self.uri).set_terminated(self.run_for(trial), "FAILED")

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_runs"] = {}  # found again by tag after a restore
        return state


def record_best_checkpoints(uri: str, exp_id: str, stage_run_id: str, best: dict[str, str],
                            upload: bool = False) -> None:
    """Tag each trial's run with the path of its best checkpoint (`best`: Ray trial id -> folder), and
    with `upload` (`--log-checkpoints all`) copy the checkpoint into the run's artifacts."""
    client = client_for(uri)
    runs = client.search_runs([exp_id], filter_string=f"tags.`{PARENT_TAG}` = '{stage_run_id}'", max_results=10000)
    for run in runs:
        path = best.get(run.data.tags.get("ray_trial_id", ""))
        if path:
            client.set_tag(run.info.run_id, "best_checkpoint", path)
            if upload:
                client.log_artifacts(run.info.run_id, path, artifact_path="best_checkpoint")


def log_stage_model(uri: str, run_id: str, student_dir: str, registered_name: str, alias: str) -> str:
    """Log an exported student folder as an MLflow PyTorch model, register it and point `alias` at it."""
    import mlflow
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(student_dir)
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id):
        # pickle: the default pt2 format must trace BERT with an input example; a plain module is enough here
        info = mlflow.pytorch.log_model(model, name="student", pip_requirements=["torch", "transformers"],
                                        serialization_format="pickle",
                                        registered_model_name=registered_name)
    version = info.registered_model_version
    client = client_for(uri)
    client.set_registered_model_alias(registered_name, alias, version)
    return str(version)
