"""MLflow records of a search: a parent run per search, a child per stage, a grandchild per trial.

Trial runs are found again by their `ray_trial_id` tag, so a restored stage reattaches to the same runs
instead of opening duplicates (Ray's own MLflowLoggerCallback keeps its map in memory only).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from fsd import failpoints
from fsd.data import source_fingerprint, split_rows
from fsd.layout import MLFLOW_ARTIFACTS
from fsd.metrics import SAMPLES, SCORE, reached_budget
from fsd.storage import content_key, one_builder
from fsd.tasks import get_task
from search_spaces.joint import expand

PARENT_TAG = "mlflow.parentRunId"
# MLflow 3's UI opens an experiment of no kind on its GenAI overview; this kind opens it on the runs table.
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"


def client_for(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri)


def experiment_id(uri: str, name: str) -> str:
    """The experiment `name`, created if needed; with a sqlite store its artifacts go beside the database
    (MLflow's default would be ./mlruns in whatever folder the command was started from).

    Two searches may start on one store at once: a new sqlite file is set up by one process at a time (MLflow
    creates its tables on first use, and two processes doing it together break the migration), and an
    experiment the other process created meanwhile is taken as it is."""
    location = None
    if uri.startswith("sqlite:///"):
        database = Path(uri[len("sqlite:///"):]).resolve()
        location = database.parent.joinpath(MLFLOW_ARTIFACTS).as_uri()
        with one_builder(database, "MLflow store"):
            client_for(uri).search_experiments(max_results=1)  # the tables, created here if new
    client = client_for(uri)
    exp = client.get_experiment_by_name(name)
    if exp:
        if exp.tags.get(KIND_TAG) != KIND:
            client.set_experiment_tag(exp.experiment_id, KIND_TAG, KIND)
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=location, tags={KIND_TAG: KIND})
    except MlflowException:
        exp = client.get_experiment_by_name(name)  # created by another process in the meantime
        if exp is None:
            raise
        return exp.experiment_id


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


def close_open_children(uri: str, exp_id: str, parents: list[str], status: str = "KILLED") -> None:
    """Mark every run still RUNNING under one of `parents` (a stage's trial runs) with `status`."""
    client = client_for(uri)
    running = client.search_runs([exp_id], filter_string="attributes.status = 'RUNNING'", max_results=10000)
    for run in running:
        if run.data.tags.get(PARENT_TAG) in parents:
            client.set_terminated(run.info.run_id, status=status)


def _params(config: dict[str, Any]) -> list[Param]:
    return [Param(k, str(v)[:6000]) for k, v in sorted(config.items())]


def dataset_records(base: dict[str, Any]) -> list[dict[str, Any]]:
    """What the trials of `base` (a stage's shared DistillConfig values) train and are ranked on, as MLflow
    dataset inputs: name, source, a digest of the exact rows (the data files, the row limits, the holdout), row
    count and context."""
    task = get_task(base["task"])
    data_dir = base.get("data_dir")
    held = base.get("holdout_rows")
    rows, dev_rows = split_rows(task, data_dir, base.get("max_train_samples"), base.get("max_eval_samples"),
                                held or 0)
    ranked_rows = held or dev_rows
    source = f"{data_dir}/{task.folder}" if data_dir else f"hf://datasets/nyu-mll/glue/{task.hub_name}"
    rows_key = {"data": source_fingerprint(task, data_dir), "max_train_samples": base.get("max_train_samples"),
                "holdout": [held, base.get("holdout_seed")] if held else None}
    ranked = "holdout" if held else "dev"
    ranked_key = rows_key if held else {**rows_key, "max_eval_samples": base.get("max_eval_samples")}
    return [{"name": f"{task.name}-train", "source": source, "rows": rows, "context": "training",
             "digest": content_key({**rows_key, "split": "train"}, 8)},
            {"name": f"{task.name}-{ranked}", "source": source, "rows": ranked_rows, "context": "validation",
             "digest": content_key({**ranked_key, "split": ranked}, 8)}]


def _inputs(datasets: list[dict[str, Any]]) -> list[DatasetInput]:
    return [DatasetInput(Dataset(d["name"], d["digest"], "hf" if d["source"].startswith("hf://") else "local",
                                 json.dumps({"uri": d["source"]}), None, json.dumps({"num_rows": d["rows"]})),
                         tags=[InputTag("mlflow.data.context", d["context"])]) for d in datasets]


def trial_run(uri: str, exp_id: str, stage_run_id: str, trial_id: str, name: str, tags: dict[str, str],
              params: dict[str, Any], datasets: list[dict[str, Any]] | None = None) -> str:
    """The run of Ray trial `trial_id` under the stage's run: found again by tag (a restored trial), else
    created with its params and its `datasets` (`dataset_records`) as inputs."""
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
    if datasets:
        client.log_inputs(run_id, datasets=_inputs(datasets))
    return run_id


def logged_steps(uri: str, run_id: str) -> set[int]:
    """The steps (training samples) a trial's run already holds a dev score for (none for a run still waiting
    in the outbox, or while the server is away)."""
    if run_id.startswith("queued:"):
        return set()
    try:
        return {m.step for m in client_for(uri).get_metric_history(run_id, SCORE)}
    except Exception:  # noqa: BLE001 - the server may be away: the outbox handles the writes
        return set()


def log_metrics(uri: str, run_id: str, metrics: list[list]) -> None:
    """`metrics`: `[key, value, timestamp_ms, step]` rows (JSON, so they can wait in the outbox), but for the
    steps the run already holds a dev score for: the tracker's own check (`logged_steps`) cannot see a row
    still queued, or one sent by a driver killed before it could drop it from the queue, and a restarted trial
    reports that step again."""
    have = logged_steps(uri, run_id)
    rows = [Metric(k, v, ts, step) for k, v, ts, step in metrics if step not in have]
    if rows:
        client_for(uri).log_batch(run_id, metrics=rows)


class TrialTracker(Callback):
    """Logs every trial of one stage as a nested MLflow run: params, per-epoch metrics, tags. With an
    `outbox`, records that cannot reach the server wait on disk and the trials keep training."""

    def __init__(self, uri: str, exp_id: str, stage_run_id: str, tags: dict[str, str], base: dict[str, Any],
                 outbox=None, datasets: list[dict[str, Any]] | None = None):
        self.uri, self.exp_id, self.stage_run_id, self.tags, self.base = uri, exp_id, stage_run_id, tags, base
        self.outbox, self.datasets = outbox, datasets
        self._runs: dict[str, str] = {}
        self._logged: dict[str, set[int]] = {}  # epochs each trial's run already holds

    def _do(self, op: str, *args: Any) -> Any:
        return self.outbox.do(op, *args) if self.outbox is not None else OPS[op](self.uri, *args)

    def run_for(self, trial) -> str:
        if trial.trial_id not in self._runs:
            # Joint grid keys ("gamma_i+gamma_l") are no valid MLflow names: log the values they set.
            params = {k: str(v) for k, v in expand({**self.base, **trial.config}).items()}
            run_id = self._do("trial_run", self.exp_id, self.stage_run_id, trial.trial_id, str(trial), self.tags,
                              params, getattr(self, "datasets", None))  # an older pickled tracker has none
            self._runs[trial.trial_id] = run_id
            self._logged[trial.trial_id] = logged_steps(self.uri, run_id)
        return self._runs[trial.trial_id]

    def on_trial_start(self, iteration, trials, trial, **info):
        self.run_for(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        # Steps count training samples (several evaluations per epoch under halving); old results count epochs.
        step = int(result.get(SAMPLES, result.get("epoch", result.get("training_iteration", 0))))
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
        if not reached_budget(last):
            # Stopped by halving at a rung: finished as a run, but never a candidate winner.
            self._do("log_winner", run_id, "stopped_at_samples", float(last[SAMPLES]),
                     {"early_stopped": "true", "stopped_at_samples": str(int(last[SAMPLES]))})
        self._do("close_run", run_id, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._do("close_run", self.run_for(trial), "FAILED")

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_runs"], state["_logged"] = {}, {}  # found again by tag after a restore
        return state


NOT_KEPT = "not kept: a finished stage keeps its winner's checkpoint only (--log-checkpoints all keeps every trial's)"


def record_best_checkpoints(uri: str, exp_id: str, stage_run_id: str, best: dict[str, str],
                            upload: bool = False, kept: list[str] | None = None) -> None:
    """Tag each trial's run with the path of its best checkpoint (`best`: Ray trial id -> folder), or with
    NOT_KEPT when that folder is not among `kept` (None: all are kept); with `upload` (`--log-checkpoints
    all`) copy the checkpoint into the run's artifacts."""
    client = client_for(uri)
    runs = client.search_runs([exp_id], filter_string=f"tags.`{PARENT_TAG}` = '{stage_run_id}'", max_results=10000)
    for run in runs:
        path = best.get(run.data.tags.get("ray_trial_id", ""))
        if not path:
            continue
        client.set_tag(run.info.run_id, "best_checkpoint", path if kept is None or path in kept else NOT_KEPT)
        if upload:
            client.log_artifacts(run.info.run_id, path, artifact_path="best_checkpoint")


def log_stage_model(uri: str, run_id: str, student_dir: str, registered_name: str, alias: str,
                    labels: list[str] | tuple[str, ...] = (), max_length: int = 128) -> str:
    """Log an exported student folder as an MLflow `transformers` text-classification pipeline (model and
    tokenizer, the task's label names), once (the folder is not logged again beside it); register it and
    point `alias` at it. `mlflow.transformers.load_model("models:/<name>@<alias>")` and `mlflow models serve`
    need only MLflow, torch and transformers, not this project. Inputs are cut at `max_length` tokens, the
    length the student was trained at (the served model does it; a loaded pipeline wants `truncation=True`).
    Done once per run: a retry (after a kill or an outage) reuses the version already registered."""
    import mlflow
    from huggingface_hub import ModelCard
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    client = client_for(uri)
    done = client.search_model_versions(f"name='{registered_name}' and run_id='{run_id}'")
    if done:
        version = str(done[0].version)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(student_dir)
        if labels:  # a classifier's classes by name (a regression keeps its one unnamed output)
            model.config.id2label = dict(enumerate(labels))
            model.config.label2id = {label: i for i, label in enumerate(labels)}
        tokenizer = AutoTokenizer.from_pretrained(student_dir)
        tokenizer.model_max_length = max_length
        # Our own card: without one MLflow looks the folder up on the Hugging Face hub.
        card = ModelCard(f"---\nlibrary_name: transformers\npipeline_tag: text-classification\n---\nA student "
                         f"distilled by fsd-tune, registered as {registered_name} ({alias}).\n")
        mlflow.set_tracking_uri(uri)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.transformers.log_model({"model": model, "tokenizer": tokenizer}, name="student",
                                                 task="text-classification", model_card=card,
                                                 model_config={"truncation": True},
                                                 pip_requirements=["torch", "transformers"])
        # Registered through the client: MLflow's fluent registration prints to the console.
        if not client.search_registered_models(f"name='{registered_name}'"):
            try:
                client.create_registered_model(registered_name)
            except MlflowException:  # another search registered it in the meantime
                if not client.search_registered_models(f"name='{registered_name}'"):
                    raise
        version = str(client.create_model_version(registered_name, info.model_uri, run_id=run_id,
                                                  model_id=info.model_id).version)
        failpoints.reached("log-model")
    client.set_registered_model_alias(registered_name, alias, version)
    return version


def alias_model(uri: str, registered_name: str, alias: str, source_run_id: str) -> None:
    """Point `alias` at the version registered from the stage run `source_run_id` (a student carried into a
    later stage, or the search's best, is registered once)."""
    client = client_for(uri)
    found = client.search_model_versions(f"name='{registered_name}' and run_id='{source_run_id}'")
    if found:
        client.set_registered_model_alias(registered_name, alias, str(found[0].version))


def log_winner(uri: str, run_id: str, metric: str, score: float, tags: dict[str, str]) -> None:
    """A stage's result on its run, once: a search stopped before its ledger recorded the stage logs it again."""
    client = client_for(uri)
    if score not in {m.value for m in client.get_metric_history(run_id, metric)}:
        client.log_metric(run_id, metric, score)
    for k, v in tags.items():
        client.set_tag(run_id, k, v)


def log_analysis(uri: str, run_id: str, metrics: dict[str, float], files: list[str]) -> None:
    """A stage winner's analyses: metrics on its stage run, the heat map and JSON as artifacts."""
    client = client_for(uri)
    client.log_batch(run_id, metrics=[Metric(k, v, 0, 0) for k, v in metrics.items() if math.isfinite(v)])
    for f in files:
        client.log_artifact(run_id, f, artifact_path="analysis")


# The MLflow writes of a search, by name, so the outbox can queue and replay them (fsd.tuning.tracking.outbox).
OPS = {"open_run": open_run, "close_run": close_run, "trial_run": trial_run, "log_metrics": log_metrics,
       "record_best_checkpoints": record_best_checkpoints, "log_winner": log_winner,
       "log_stage_model": log_stage_model, "log_analysis": log_analysis, "close_open_children": close_open_children,
       "alias_model": alias_model}
