"""MLflow records of a search: a parent run per search, a child per stage, a grandchild per trial.

Trial runs are found again by their `ray_trial_id` tag, so a restored stage reattaches to the same runs
instead of opening duplicates (Ray's own MLflowLoggerCallback keeps its map in memory only).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from fsd import failpoints
from fsd.tuning.trainable import expand

PARENT_TAG = "mlflow.parentRunId"


def client_for(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri)


def experiment_id(uri: str, name: str) -> str:
    """The experiment `name`, created if needed; with a sqlite store its artifacts go beside the database
    (MLflow's default would be ./mlruns in whatever folder the command was started from)."""
    client = client_for(uri)
    exp = client.get_experiment_by_name(name)
    if exp:
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = Path(uri[len("sqlite:///"):]).resolve().parent.joinpath("mlartifacts").as_uri()
    return client.create_experiment(name, artifact_location=location)


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


def trial_run(uri: str, exp_id: str, stage_run_id: str, trial_id: str, name: str, tags: dict[str, str],
              params: dict[str, Any]) -> str:
    """The run of Ray trial `trial_id` under the stage's run: found again by tag (a restored trial), else
    created with its params."""
    client = client_for(uri)
    found = client.search_runs(
        [exp_id], filter_string=f"tags.ray_trial_id = '{trial_id}' and tags.`{PARENT_TAG}` = '{stage_run_id}'",
        max_results=1)
    if found:
        client.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id
    all_tags = {**tags, "ray_trial_id": trial_id, PARENT_TAG: stage_run_id}
    run_id = client.create_run(exp_id, run_name=name, tags=all_tags).info.run_id
    client.log_batch(run_id, params=_params(params))
    return run_id


def logged_steps(uri: str, run_id: str) -> set[int]:
    """The steps (training samples) a trial's run already holds a dev score for (none for a run still waiting
    in the outbox, or while the server is away)."""
    if run_id.startswith("queued:"):
        return set()
    try:
        return {m.step for m in client_for(uri).get_metric_history(run_id, "eval/score")}
    except Exception:  # noqa: BLE001 - the server may be away: the outbox handles the writes
        return set()


def log_metrics(uri: str, run_id: str, metrics: list[list]) -> None:
    """`metrics`: `[key, value, timestamp_ms, step]` rows (JSON, so they can wait in the outbox)."""
    client_for(uri).log_batch(run_id, metrics=[Metric(k, v, ts, step) for k, v, ts, step in metrics])


class TrialTracker(Callback):
    """Logs every trial of one stage as a nested MLflow run: params, per-epoch metrics, tags. With an
    `outbox`, records that cannot reach the server wait on disk and the trials keep training."""

    def __init__(self, uri: str, exp_id: str, stage_run_id: str, tags: dict[str, str], base: dict[str, Any],
                 outbox=None):
        self.uri, self.exp_id, self.stage_run_id, self.tags, self.base = uri, exp_id, stage_run_id, tags, base
        self.outbox = outbox
        self._runs: dict[str, str] = {}
        self._logged: dict[str, set[int]] = {}  # epochs each trial's run already holds

    def _do(self, op: str, *args: Any) -> Any:
        return self.outbox.do(op, *args) if self.outbox is not None else OPS[op](self.uri, *args)

    def run_for(self, trial) -> str:
        if trial.trial_id not in self._runs:
            # Joint grid keys ("gamma_i+gamma_l") are no valid MLflow names: log the values they set.
            params = {k: str(v) for k, v in expand({**self.base, **trial.config}).items()}
            run_id = self._do("trial_run", self.exp_id, self.stage_run_id, trial.trial_id, str(trial), self.tags,
                              params)
            self._runs[trial.trial_id] = run_id
            self._logged[trial.trial_id] = logged_steps(self.uri, run_id)
        return self._runs[trial.trial_id]

    def on_trial_start(self, iteration, trials, trial, **info):
        self.run_for(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        # Steps count training samples (several evaluations per epoch under halving); old results count epochs.
        step = int(result.get("progress/samples", result.get("epoch", result.get("training_iteration", 0))))
        run_id = self.run_for(trial)
        if step in self._logged[trial.trial_id]:
            # A trial restarted after the driver died before Ray recorded this epoch: the run has it already.
            return
        self._logged[trial.trial_id].add(step)
        metrics = [[k, float(v), int(result.get("timestamp", 0)) * 1000, step] for k, v in result.items()
                   if "/" in k and isinstance(v, (int, float)) and math.isfinite(float(v))]
        self._do("log_metrics", run_id, metrics)
        failpoints.reached("mid-stage")

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self.run_for(trial)
        last = getattr(trial, "last_result", None) or {}
        if "progress/samples" in last and last["progress/samples"] < last.get("progress/budget", 0):
            # Stopped by halving at a rung: finished as a run, but never a candidate winner.
            self._do("log_winner", run_id, "stopped_at_samples", float(last["progress/samples"]),
                     {"early_stopped": "true", "stopped_at_samples": str(int(last["progress/samples"]))})
        self._do("close_run", run_id, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._do("close_run", self.run_for(trial), "FAILED")

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_runs"], state["_logged"] = {}, {}  # found again by tag after a restore
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
    """Log an exported student folder as an MLflow PyTorch model, register it and point `alias` at it.
    Done once per run: a retry (after a kill or an outage) reuses the version already registered."""
    import mlflow
    from transformers import AutoModelForSequenceClassification

    client = client_for(uri)
    done = client.search_model_versions(f"name='{registered_name}' and run_id='{run_id}'")
    if done:
        version = str(done[0].version)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(student_dir)
        mlflow.set_tracking_uri(uri)
        with mlflow.start_run(run_id=run_id):
            # pickle: the default pt2 format must trace BERT with an input example; a plain module is enough
            info = mlflow.pytorch.log_model(model, name="student", pip_requirements=["torch", "transformers"],
                                            serialization_format="pickle", registered_model_name=registered_name)
        version = str(info.registered_model_version)
        failpoints.reached("log-model")
    client.set_registered_model_alias(registered_name, alias, version)
    return version


def log_winner(uri: str, run_id: str, metric: str, score: float, tags: dict[str, str]) -> None:
    client = client_for(uri)
    client.log_metric(run_id, metric, score)
    for k, v in tags.items():
        client.set_tag(run_id, k, v)


def log_analysis(uri: str, run_id: str, metrics: dict[str, float], files: list[str]) -> None:
    """A stage winner's analyses: metrics on its stage run, the heat map and JSON as artifacts."""
    client = client_for(uri)
    client.log_batch(run_id, metrics=[Metric(k, v, 0, 0) for k, v in metrics.items() if math.isfinite(v)])
    for f in files:
        client.log_artifact(run_id, f, artifact_path="analysis")


# The MLflow writes of a search, by name, so the outbox can queue and replay them (fsd.tuning.outbox).
OPS = {"open_run": open_run, "close_run": close_run, "trial_run": trial_run, "log_metrics": log_metrics,
       "record_best_checkpoints": record_best_checkpoints, "log_winner": log_winner,
       "log_stage_model": log_stage_model, "log_analysis": log_analysis}
