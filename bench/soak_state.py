"""What bench/soak.py compares between a quiet search and a soaked one: the final ledger, every trial's Ray
results, and every MLflow run and registered model, each reduced to what a correct resume must reproduce
exactly. Machine-specific values (the storage folder, MLflow's run ids, Ray's trial ids and dates, wall
times and rates) are left out or written in a neutral form; every score, loss and metric is kept to the
last digit, because a trial at a point and seed is deterministic on a CPU (tests/test_determinism.py)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

# MLflow ids (differ between two servers), not results; a student's registered version is compared in the
# registry (`models`): the ledger keeps none for one registered from the outbox after an outage. `shared`, the
# digest of a stage's values, holds the teacher's folder, which lies in the storage folder when the search
# fine-tunes it.
LEDGER_IDS = ("run_id", "search_run_id", "experiment_id", "reused_from", "model_version", "shared")
# Ray's bookkeeping of a trial's process and clock: differs from run to run. `run/resumed_from` says that a
# trial was restored from a checkpoint, which is what a fault makes happen, not a result.
RAY_VARYING = {"timestamp", "date", "time_this_iter_s", "time_total_s", "pid", "hostname", "node_ip",
               "time_since_restore", "iterations_since_restore", "trial_id", "checkpoint_dir_name", "done",
               "should_checkpoint", "run/resumed_from"}
TIMING = ("per_s", "time", "seconds")  # metric names that hold rates or durations
# Ray names a trial's folder `train_trial_<experiment>_<index>_<counter>_<values>_<date>`: only the index is the
# trial's (the experiment id and date change when a killed stage is restored or set aside and run afresh).
TRIAL_DIR = re.compile(r"train_trial_[0-9a-f]+_(\d+)_[^/]*?_\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}")
# A checkpoint's number counts the reports of its trial's process, and a trial restarted after a kill numbers
# them again: what it holds (the scores, the kept count) is compared, not its number.
CHECKPOINT = re.compile(r"checkpoint_\d{6}")
STAGE_DIGEST = re.compile(r"(stages/[^/]+)-[0-9a-f]{16}\b")  # a stage's folder, named by `shared` (above)


def plain(value: Any, storage: str) -> Any:
    """`value` with the storage folder written `<storage>`, trial folders by index, checkpoints unnumbered."""
    if isinstance(value, str):
        value = STAGE_DIGEST.sub(r"\1-<digest>", value.replace(storage, "<storage>"))
        return CHECKPOINT.sub("checkpoint", TRIAL_DIR.sub(r"train_trial_\1", value))
    if isinstance(value, list):
        return [plain(v, storage) for v in value]
    if isinstance(value, dict):
        return {k: plain(v, storage) for k, v in value.items()}
    return value


def ledger(storage: Path, task: str, method: str) -> dict[str, Any]:
    """The search's ledger without MLflow ids (`{}` when there is none)."""
    path = storage / f"{task}-{method}" / "ledger.json"
    if not path.is_file():
        return {}

    def without_ids(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: without_ids(v) for k, v in value.items() if k not in LEDGER_IDS}
        if isinstance(value, list):
            return [without_ids(v) for v in value]
        return value

    return plain(without_ids(json.loads(path.read_text())), str(storage))


def trials(storage: Path, task: str) -> dict[str, Any]:
    """Every trial of every stage, by `<stage folder>/train_trial_<index>`: its values, each result it
    reported (in order, so a report made twice shows) and how many checkpoints it kept."""
    found = {}
    for trial in sorted(storage.glob(f"stages/*/{task}-*/train_trial_*")):
        key = plain(f"stages/{trial.parent.parent.name}/{trial.name}", str(storage))
        while key in found:  # two folders for one trial, or a stage under two digests: shown as extra trials
            key += "+"
        rows = []
        if (trial / "result.json").is_file():
            for line in (trial / "result.json").read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    rows.append({k: v for k, v in row.items()
                                 if k not in RAY_VARYING and not any(t in k for t in TIMING)})
        params = json.loads((trial / "params.json").read_text()) if (trial / "params.json").is_file() else None
        if params is None and not rows:
            continue  # a folder Ray made for a trial as its driver was killed, never started: the trial runs anew
        found[key] = plain({"params": params, "results": rows,
                            "checkpoints": len(list(trial.glob("checkpoint_*")))}, str(storage))
    return found


def mlflow_store(uri: str, task: str, storage: Path) -> dict[str, Any]:
    """Every run of the task's experiment as one line (its parent by name, a trial by its stage and params;
    status, params, tags, metric histories but for timings, dataset inputs), counted, and each registered
    model's versions and aliases by the stage their run belongs to."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(task)
    if exp is None:
        return {"runs": {}, "models": {}}
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    by_id = {r.info.run_id: r for r in runs}
    where = str(storage)

    def who(run) -> str:
        if "ray_trial_id" not in run.data.tags:
            return run.info.run_name
        return f"trial of {run.data.tags.get('stage')} " + json.dumps(plain(dict(sorted(run.data.params.items())),
                                                                            where))

    lines: Counter[str] = Counter()
    for run in runs:
        metrics = {k: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)]
                   for k in sorted(run.data.metrics) if not any(t in k for t in TIMING) and k not in RAY_VARYING}
        parent = by_id.get(run.data.tags.get("mlflow.parentRunId", ""))
        tags = {k: v for k, v in sorted(run.data.tags.items())
                if not k.startswith("mlflow.") and k not in ("ray_trial_id", "reused_from")}
        inputs = sorted((d.dataset.name, d.dataset.digest) for d in run.inputs.dataset_inputs)
        lines[json.dumps([who(run), who(parent) if parent else None, run.info.status,
                          plain(dict(sorted(run.data.params.items())), where), plain(tags, where), metrics,
                          inputs])] += 1
    models = {}
    for model in client.search_registered_models():
        versions = client.search_model_versions(f"name='{model.name}'")
        stage_of = {v.version: by_id[v.run_id].info.run_name if v.run_id in by_id else "?" for v in versions}
        models[model.name] = sorted(stage_of.values()) + sorted(f"@{a}={stage_of.get(v, '?')}"
                                                                 for a, v in model.aliases.items())
    return {"runs": dict(lines), "models": models}


def state(storage: Path, uri: str, task: str, method: str) -> dict[str, Any]:
    """What a search left: its ledger, its trials and its MLflow records."""
    return {"ledger": ledger(storage, task, method), "trials": trials(storage, task),
            "mlflow": mlflow_store(uri, task, storage)}


def _diff(a: Any, b: Any, path: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in b:
                out.append(f"{path}/{k}: only in the quiet run")
            elif k not in a:
                out.append(f"{path}/{k}: only in the soaked run")
            else:
                _diff(a[k], b[k], f"{path}/{k}", out)
    elif a != b:
        out.append(f"{path}: quiet {json.dumps(a)[:1000]} != soaked {json.dumps(b)[:1000]}")


def differences(quiet: dict[str, Any], soaked: dict[str, Any]) -> list[str]:
    """Each way the soaked search's state differs from the quiet one's (empty: equal); MLflow runs are
    compared as counted lines, so a run logged twice or lost is named as such."""
    out: list[str] = []
    _diff(quiet["ledger"], soaked["ledger"], "ledger", out)
    _diff(quiet["trials"], soaked["trials"], "trials", out)
    calm, soak = Counter(quiet["mlflow"]["runs"]), Counter(soaked["mlflow"]["runs"])
    for line, n in sorted((soak - calm).items()):
        out.append(f"mlflow run in the soaked store {n} time(s) more than in the quiet one: {line[:400]}")
    for line, n in sorted((calm - soak).items()):
        out.append(f"mlflow run missing {n} time(s) from the soaked store: {line[:400]}")
    _diff(quiet["mlflow"]["models"], soaked["mlflow"]["models"], "models", out)
    return out


def duplicates(found: dict[str, Any]) -> int:
    """MLflow runs recorded more than once in one store (identical in all that is compared)."""
    return sum(n - 1 for n in found["mlflow"]["runs"].values() if n > 1)
