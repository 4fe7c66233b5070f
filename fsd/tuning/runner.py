"""run_search(): the teacher, then one Ray Tune experiment per stage of the schedule, chained greedily
through the ledger; MLflow records everything; a killed search resumes where it stopped."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray import tune

from fsd.config import DistillConfig
from fsd.train import export_student
from fsd.tuning import tracking
from fsd.tuning.ledger import Ledger
from fsd.tuning.trainable import METRIC, MODE, expand, train_trial
from search_spaces import Schedule, Stage

# What a resumed search must agree on with the stored one (the rest, e.g. concurrency, may change).
IDENTITY = ("task", "method", "preset", "teacher", "student_init", "student_layers", "data_dir", "seeds",
            "max_seq_len", "search", "num_samples")


@dataclass
class SearchSpec:
    """Everything tune_main.py resolved from the command line."""

    task: str
    method: str
    storage: str  # absolute root: teachers, data cache and memories shared by searches; one folder per search
    mlflow_uri: str
    teacher: str
    student_init: str | None = None
    student_layers: int = 6
    data_dir: str | None = None
    preset: str = "paper"
    stages: tuple[str, ...] = ()  # empty: all
    seeds: int = 1
    seed: int = 42
    gpus_per_trial: float = 0.0
    cpus_per_trial: float = 1.0
    max_concurrent: int = 0
    max_failures: int = 1
    search: str = "grid"
    scheduler: str = "fifo"
    num_samples: int = 10
    max_seq_len: int = 128
    teacher_epochs: int = 3
    log_checkpoints: str = "best"
    address: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # more DistillConfig values for every trial

    @property
    def folder(self) -> str:
        """This search's own folder: ledger, Ray experiments."""
        return os.path.join(self.storage, f"{self.task}-{self.method}")


def stage_base(spec: SearchSpec, schedule: Schedule, stage: Stage, teacher: str,
               winners: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The DistillConfig values every trial of `stage` shares."""
    base: dict[str, Any] = {
        "task": spec.task, "teacher": teacher, "student_init": spec.student_init or spec.teacher,
        "student_layers": spec.student_layers, "method": stage.method, "data_dir": spec.data_dir,
        "storage": spec.storage, "max_seq_len": spec.max_seq_len, "seed": spec.seed, **spec.extra}
    for param, source in stage.inherit.items():
        base[param] = winners[source][param]
    base.update(stage.fixed)
    budget = schedule.budget
    for key in ("epochs", "max_train_samples", "max_eval_samples", "memory_size"):
        if getattr(budget, key) is not None:
            base[key] = getattr(budget, key)
    return base


def param_space(spec: SearchSpec, grid: dict[str, tuple]) -> dict[str, Any]:
    """Grid: every point (x seeds). Optuna: a categorical per parameter (joint values as "a|b", since
    Optuna's categoricals hold plain values only); seeds then repeat each sample."""
    if spec.search == "optuna":
        return {k: tune.choice(["|".join(map(str, x)) if isinstance(x, tuple) else x for x in v])
                for k, v in grid.items()}
    space: dict[str, Any] = {k: tune.grid_search(list(v)) for k, v in grid.items()}
    if spec.seeds > 1:
        space["seed"] = tune.grid_search([spec.seed + i for i in range(spec.seeds)])
    return space


def tune_config(spec: SearchSpec, name: str, epochs: int | None) -> tune.TuneConfig:
    kwargs: dict[str, Any] = {"metric": METRIC, "mode": MODE, "max_concurrent_trials": spec.max_concurrent or None}
    if spec.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        kwargs["scheduler"] = ASHAScheduler(time_attr="training_iteration", max_t=epochs or 100, grace_period=1)
    if spec.search == "optuna":
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        journal = JournalStorage(JournalFileBackend(os.path.join(spec.folder, "optuna.journal")))
        searcher = OptunaSearch(metric=METRIC, mode=MODE, study_name=name, storage=journal)
        kwargs["search_alg"] = ConcurrencyLimiter(searcher, max_concurrent=spec.max_concurrent or 2)
        kwargs["num_samples"] = spec.num_samples
        kwargs.pop("max_concurrent_trials")
    return tune.TuneConfig(**kwargs)


def pick_winner(results, grid: dict[str, tuple]) -> tuple[dict[str, Any], float, str | None]:
    """The grid point with the best dev score (best epoch of each trial), averaged over seeds."""
    rows: dict[tuple, list] = {}
    for r in results:
        df = r.metrics_dataframe
        if r.error or df is None or METRIC not in df:
            continue
        # The seed is not part of a point: seeds are averaged. A restored config holds lists for tuples.
        point = tuple((k, tuple(r.config[k]) if isinstance(r.config[k], list) else r.config[k]) for k in grid)
        ckpt = r.get_best_checkpoint(METRIC, MODE)
        rows.setdefault(point, []).append((float(df[METRIC].max()), ckpt.path if ckpt else None))
    if not rows:
        raise RuntimeError("every trial of the stage failed: see the errors above and in the Ray logs, fix the "
                           "cause, then run again with --resume")
    point, runs = max(rows.items(), key=lambda kv: sum(s for s, _ in kv[1]) / len(kv[1]))
    best_run = max(runs, key=lambda r: r[0])
    return dict(point), sum(s for s, _ in runs) / len(runs), best_run[1]


def trainable_for(spec: SearchSpec, base: dict[str, Any]):
    """The trial function with the stage's shared values and its resource share (fractions of a GPU pack
    several trials on one device; Ray only counts, the trials share its memory)."""
    return tune.with_resources(tune.with_parameters(train_trial, base=base),
                               {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial})


def run_stage(spec: SearchSpec, schedule: Schedule, stage: Stage, teacher: str, ledger: Ledger,
              mlflow_ids: dict[str, str]) -> None:
    winners = ledger.winners()
    grid = stage.resolve(winners)
    base = stage_base(spec, schedule, stage, teacher, winners)
    record = ledger.stage(stage.name)
    exp_id = mlflow_ids["experiment_id"]
    record["run_id"] = tracking.open_run(spec.mlflow_uri, exp_id, record.get("run_id"), stage.name,
                                         mlflow_ids["search_run_id"],
                                         {"stage": stage.name, "method": stage.method, "task": spec.task})
    ledger.save()
    DistillConfig.from_dict({**base, **expand({k: v[0] for k, v in grid.items() if v})})  # fail before Ray
    if any(len(v) == 0 for v in grid.values()):  # a refine around 0: nothing to try, the coarse winner stays
        source = ledger.data["stages"][stage.carry]
        record.update(status="done", winner=source["winner"], score=source["score"],
                      checkpoint=source.get("checkpoint"), trials=0)
        ledger.save()
        tracking.close_run(spec.mlflow_uri, record["run_id"])
        return
    name = f"{spec.task}-{spec.method}-{stage.name}"
    exp_dir = os.path.join(spec.folder, "ray", name)
    trainable = trainable_for(spec, base)
    if tune.Tuner.can_restore(exp_dir):
        tuner = tune.Tuner.restore(exp_dir, trainable=trainable, resume_errored=True)
    else:
        callback = tracking.TrialTracker(spec.mlflow_uri, exp_id, record["run_id"],
                                         {"stage": stage.name, "method": stage.method, "task": spec.task}, base)
        tuner = tune.Tuner(
            trainable, param_space=param_space(spec, grid),
            tune_config=tune_config(spec, name, base.get("epochs")),
            run_config=tune.RunConfig(
                name=name, storage_path=os.path.join(spec.folder, "ray"), callbacks=[callback], verbose=0,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=METRIC,
                                                        checkpoint_score_order=MODE),
                failure_config=tune.FailureConfig(max_failures=spec.max_failures)))
    results = tuner.fit()
    best = {r.metrics["trial_id"]: r.get_best_checkpoint(METRIC, MODE).path
            for r in results if r.metrics and r.get_best_checkpoint(METRIC, MODE)}
    tracking.record_best_checkpoints(spec.mlflow_uri, exp_id, record["run_id"], best, spec.log_checkpoints == "all")
    point, score, checkpoint = pick_winner(results, grid)
    winner = {**base, **expand(point)}
    if stage.carry and ledger.data["stages"][stage.carry]["score"] > score:
        carried = ledger.data["stages"][stage.carry]
        winner, score, checkpoint = carried["winner"], carried["score"], carried.get("checkpoint")
    record.update(status="done", winner=winner, score=score, checkpoint=checkpoint, trials=len(results))
    _log_winner(spec, stage, record)
    ledger.save()
    tracking.close_run(spec.mlflow_uri, record["run_id"])


def _log_winner(spec: SearchSpec, stage: Stage, record: dict[str, Any]) -> None:
    client = tracking.client_for(spec.mlflow_uri)
    client.log_metric(record["run_id"], "best/" + METRIC, record["score"])
    for k in ("alpha", "temperature", "lr", "epochs", "beta", "gamma_i", "gamma_l", "gamma_g", "lam"):
        client.set_tag(record["run_id"], f"winner.{k}", str(record["winner"].get(k)))
    if record.get("checkpoint"):
        student = Path(record["checkpoint"]) / "student"
        if not student.is_dir():
            export_student(record["checkpoint"], student)
        record["model_version"] = tracking.log_stage_model(
            spec.mlflow_uri, record["run_id"], str(student), f"fsd-{spec.task}-{spec.method}",
            stage.name.replace("-", "_"))


def build_memory(spec: SearchSpec, schedule: Schedule, stage: Stage, teacher: str, ledger: Ledger) -> None:
    """The teacher memory, once, in the driver: trials that run in parallel must not all fit it."""
    from fsd.data import cache_key
    from fsd.models import load_teacher, load_tokenizer
    from fsd.tasks import get_task
    from fsd.teacher_outputs import teacher_memory
    from fsd.train import make_batches, resolve_device

    config = DistillConfig.from_dict(stage_base(spec, schedule, stage, teacher, ledger.winners()))
    task = get_task(config.task)
    tokenizer = load_tokenizer(teacher)
    train, _ = make_batches(config, task, tokenizer, config.storage, config.data_dir,
                            config.max_train_samples, config.max_eval_samples, config.seed)
    device = resolve_device(config.device)
    model = load_teacher(teacher, task.num_labels).to(device).eval()
    memory = teacher_memory(config, model, train, cache_key(task, tokenizer, config.max_seq_len, config.data_dir),
                            device)
    record = ledger.stage(stage.name)
    record.update(status="done", winner={}, score=None, memory_shape=list(memory.shape))
    ledger.save()


def run_search(spec: SearchSpec, schedule: Schedule, log=print) -> Ledger:
    """Run (or resume) the whole staged search; returns the ledger with every stage's winner."""
    from fsd.teacher import TeacherSpec, ensure_teacher

    ledger = Ledger(spec.folder)
    ledger.data["search"] = {k: v for k, v in asdict(spec).items() if k in IDENTITY}
    ledger.save()
    teacher = ensure_teacher(TeacherSpec(spec.task, spec.teacher, spec.data_dir, epochs=spec.teacher_epochs,
                                         max_seq_len=spec.max_seq_len, seed=spec.seed,
                                         max_train_samples=schedule.budget.max_train_samples,
                                         max_eval_samples=schedule.budget.max_eval_samples),
                             spec.storage, log=log)
    ledger.data["teacher"] = teacher
    exp_id = tracking.experiment_id(spec.mlflow_uri, spec.task)
    search_run = tracking.open_run(spec.mlflow_uri, exp_id, ledger.data.get("search_run_id"),
                                   f"{spec.method}-{spec.preset}", None,
                                   {"method": spec.method, "task": spec.task, "preset": spec.preset})
    ledger.data.update(search_run_id=search_run, experiment_id=exp_id)
    ledger.save()
    if not ray.is_initialized():
        # A local cluster lives on the loopback address: it needs no route to the outside.
        local = {} if spec.address else {"_node_ip_address": "127.0.0.1"}
        ray.init(address=spec.address, include_dashboard=False, log_to_driver=False, **local)
    ids = {"experiment_id": exp_id, "search_run_id": search_run}
    for stage in schedule.stages:
        if spec.stages and stage.name not in spec.stages:
            continue
        if ledger.done(stage.name):
            log(f"stage {stage.name}: done before, winner kept")
            continue
        log(f"stage {stage.name}: running")
        if stage.prepare == "memory":
            build_memory(spec, schedule, stage, teacher, ledger)
        else:
            run_stage(spec, schedule, stage, teacher, ledger, ids)
            log(f"stage {stage.name}: best dev score {ledger.data['stages'][stage.name]['score']:.4f}")
    tracking.close_run(spec.mlflow_uri, search_run)
    return ledger
