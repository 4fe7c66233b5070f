"""What `--dry-run` prints of a search's cost: the table of every stage's training samples and evaluations,
the seed runs of a --compare (counted by `fsd.tuning.cost.count`), how finely the ranking split ranks, the
fresh-seed runs and the teacher-output cache."""

from __future__ import annotations

from dataclasses import dataclass

from fsd.logs import first_line
from fsd.tuning.cost.count import SearchCost
from fsd.tuning.plan.rungs import EVALS_PER_RUN
from search_spaces import Schedule


@dataclass
class CompareCost:
    runs: dict[str, int]  # seed runs: per compared method, and the ablation and batch-size studies
    samples: float  # their training samples
    evaluations: float  # rows they evaluate (EVALS_PER_RUN evaluations of each run)


def compare_cost(costs: list[SearchCost], schedules: list[Schedule], seeds: int, ablation: bool = False,
                 batch_sizes: tuple[int, ...] = ()) -> CompareCost:
    """The seed runs of a --compare after its searches: each method's winner `seeds` times, and FSD's winner
    4 x `seeds` times more for --ablation, 2 x `seeds` per batch size for --batch-sizes (Tables 4 and 5). A
    winner's epochs are not known before its search: they count as the largest its last stage can pick."""
    runs, samples, evaluations = {}, 0.0, 0.0
    for cost, schedule in zip(costs, schedules, strict=True):
        last = [s for s in schedule.stages if not s.prepare][-1]
        counted = {s.name: s for s in cost.stages}
        per_run = max(counted[last.name].samples_per_trial)
        studies = {cost.method: seeds}
        if cost.method == "fsd":
            studies.update({"ablation": 4 * seeds if ablation else 0, "batch sizes": 2 * len(batch_sizes) * seeds})
        for name, n in studies.items():
            if n:
                runs[name] = n
                samples += n * per_run
                evaluations += n * EVALS_PER_RUN * cost.dev_rows
    return CompareCost(runs, samples, evaluations)


def format_compare_cost(cost: CompareCost) -> str:
    runs = ", ".join(f"{n} {name}" for name, n in cost.runs.items())
    return (f"comparison: {sum(cost.runs.values())} seed runs ({runs}), {cost.samples:,.0f} training samples, "
            f"{cost.evaluations:,.0f} rows evaluated ({EVALS_PER_RUN} evaluations a run; with --select-on "
            "holdout, one dev pass more at each run's best checkpoint)")


def format_cost(costs: list[SearchCost]) -> str:
    """The cost table of one search, or of every search of a --compare (shared stages counted once)."""
    lines = ["cost in training samples (one row through one training step):",
             "| search | stage | trials | strategy | samples per trial | training samples | of the grid's | dev rows "
             "evaluated |", "|---|---|---|---|---|---|---|---|"]
    total = evaluations = grid_total = 0.0
    notes: list[str] = []
    for cost in costs:
        for s in cost.stages:
            trials = f"<= {s.grid_samples / s.samples_per_trial[0]:.0f}" if s.trials is None else str(s.trials)
            if s.folded is not None and s.folded.folded:
                trials += f" of {s.folded.size} points"
                notes.append(f"{s.name}: {s.folded.says()}")
            if s.confirm:
                trials += f" + {s.confirm} confirming"
            if s.reused:
                lines.append(f"| {cost.method} | {s.name} | {trials} | reused ({s.reused}) | | 0 | | 0 |")
                continue
            per = "-".join(f"{b:,}" for b in sorted(set(s.samples_per_trial)))
            share = s.samples / s.grid_samples if s.grid_samples else 1.0
            lines.append(f"| {cost.method} | {s.name} | {trials} | {s.strategy} | {per} | {s.samples:,.0f} | "
                         f"{share:.0%} | {s.evaluations:,.0f} |")
            total, evaluations, grid_total = total + s.samples, evaluations + s.evaluations, grid_total + s.grid_samples
    teacher = max(c.teacher_samples for c in costs)
    cache = max(c.cache_rows for c in costs)
    head = costs[0]
    lines.append(f"students: {total:,.0f} training samples ({total / grid_total:.0%} of the grid strategy's "
                 f"{grid_total:,.0f}) on {head.rows:,} rows per epoch, {evaluations:,.0f} dev rows evaluated"
                 if grid_total else "students: nothing to train")
    if teacher:
        dev = max(c.teacher_evaluations for c in costs)
        lines.append(f"teacher fine-tuning: {teacher:,} training samples (+ {dev:,} dev rows evaluated)")
    else:
        lines.append("teacher fine-tuning: none (the teacher is given or already fine-tuned in the storage folder)")
    if cache:
        lines.append(f"teacher-output cache: one forward pass over {cache:,} rows (none if cached before)")
    lines.append(f"total training samples: {total + teacher:,.0f}")
    if any(s.strategy != "grid" and not s.reused for c in costs for s in c.stages):
        lines.append("halving counts 1 in reduction-factor trials going on at each rung (synchronous successive "
                     "halving); ASHA's asynchronous promotions let a few more through early on")
    lines.extend(f"folded: {n}" for n in dict.fromkeys(notes))
    lines.append("epochs inherited from a winner not known yet are counted as the largest value of its grid")
    if any(s.trials is None for c in costs for s in c.stages):
        lines.append("refine stages: their grid is known once their coarse winner is (counted at its largest)")
    return "\n".join(lines)


SAMPLE_ROWS = 2000  # training rows tokenised to measure the mean length a cache is sized with


def cache_line(spec, schedule: Schedule, rows: int) -> tuple[str, float | None]:
    """What --dry-run says of the teacher-output cache: its size (the features the schedule's objectives read,
    at the mean length of a sample of the training rows) and whether the run will write it or run the teacher
    live (`fsd.teacher_source.cache_decision`). Read from this machine only: a hub model or hub data not here
    leaves the size unknown. Returns the line and the bytes the run will write (None: not known)."""
    import numpy as np
    from transformers import AutoConfig

    from fsd.config import DistillConfig
    from fsd.data import load_raw, tokenise
    from fsd.models import resolve_model_path
    from fsd.objectives import build_objective
    from fsd.teacher_source import cache_decision, feature_bytes

    fields = {f for s in schedule.stages if not s.prepare for f in (build_objective(DistillConfig(
        task=spec.task, teacher=spec.teacher, method=s.method)).cache_fields() or ())}
    features = tuple(f for f in ("penultimate", "cls") if f in fields)
    if not features or not spec.extra.get("teacher_cache", True):
        return ("teacher-output cache: logits only (a few MB)" if fields else "teacher-output cache: none"), 0.0
    try:
        if spec.data_dir is None:
            raise OSError("the data comes from the hub")
        config = AutoConfig.from_pretrained(resolve_model_path(spec.teacher), local_files_only=True)
        from fsd.models import load_tokenizer

        tokenizer = load_tokenizer(spec.teacher)
        raw = load_raw(spec.task, spec.data_dir)["train"]
    except (OSError, ValueError) as e:
        return f"teacher-output cache: its size is not known before the run ({first_line(e, 120)})", None
    from datasets import DatasetDict

    sample = raw.select(range(min(SAMPLE_ROWS, len(raw))))
    lengths = [len(ids) for ids in tokenise(DatasetDict({"train": sample}), tokenizer, spec.max_seq_len)["train"]
               ["input_ids"]]
    dtype = spec.extra.get("cache_dtype", "float16")
    need = feature_bytes(features, lengths, config.hidden_size, config.num_hidden_layers, dtype) * rows / len(lengths)
    cached, why = cache_decision(need, spec.extra.get("cache_budget_gb"), spec.storage)
    return (f"teacher-output cache: the {'+'.join(features)} features need about {need / 1e9:.2f} GB ({rows:,} rows x "
            f"{np.mean(lengths):.1f} tokens on average (measured on {len(lengths):,} rows) x {config.hidden_size} "
            f"values x {np.dtype(dtype).itemsize} bytes); {why}"), need if cached else 0.0


def ranking_line(spec, rows: int) -> str:
    """The line of --dry-run that says how finely one trial's score on the ranking split can rank."""
    from fsd.tuning.plan.evidence import binomial_error, split_error_line
    from fsd.tuning.plan.ranking import score_kind

    kind = score_kind(spec.task)
    line = split_error_line(kind, "holdout" if spec.select_on == "holdout" else "dev", rows, None)
    if kind == "accuracy":
        line += (f": two single runs closer than about {200 * binomial_error(0.5, rows):.1f} points cannot be told "
                 "apart by this split alone (more rows: --holdout-rows; more seeds: --confirm-top/--confirm-seeds)")
    return line


def fresh_line(spec, cost: SearchCost) -> str:
    """The line of --dry-run that counts --fresh-seeds' runs after the search, at its longest trial's samples."""
    per_run = max(max(st.samples_per_trial) for st in cost.stages) if cost.stages else 0
    runs = 4 if spec.method == "fsd" else 1  # the search's best, VKD's winner, the two untuned start points
    return (f"fresh seeds: at most {runs} configuration(s) x {spec.fresh_seeds} seeds = {runs * spec.fresh_seeds} "
            f"runs after the search, {runs * spec.fresh_seeds * per_run:,} training samples")
