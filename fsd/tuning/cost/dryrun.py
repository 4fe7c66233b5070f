"""What `--dry-run` prints of a search's cost: the table of every stage's training samples and evaluations,
and the seed runs of a --compare (the counting itself is `fsd.tuning.plan.spend`'s)."""

from __future__ import annotations

from dataclasses import dataclass

from fsd.tuning.plan import stages as plan
from fsd.tuning.plan.spend import SearchCost
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
                evaluations += n * plan.EVALS_PER_RUN * cost.dev_rows
    return CompareCost(runs, samples, evaluations)


def format_compare_cost(cost: CompareCost) -> str:
    runs = ", ".join(f"{n} {name}" for name, n in cost.runs.items())
    return (f"comparison: {sum(cost.runs.values())} seed runs ({runs}), {cost.samples:,.0f} training samples, "
            f"{cost.evaluations:,.0f} rows evaluated ({plan.EVALS_PER_RUN} evaluations a run; with --select-on "
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
