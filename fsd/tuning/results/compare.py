"""`--compare vkd,pkd,rkd,minilm,fsd --seeds 5`, read: each method's best configuration re-run with N seeds
(run by fsd/tuning/search/comparison.py), as the paper's Table 2/3 for the user's task: mean (std) of every dev
metric, one-sided tests of FSD against every baseline (paired by seed, Holm-corrected:
fsd/tuning/results/significance.py), the teacher's and the majority class's rows and the paper's figures
beside them; then Tables 6-8 from the same runs (structure kept, cost), and when they ran Table 4
(`--ablation`) and Table 5 (`--batch-sizes`), FSD's winner re-run (fsd/tuning/results/tables.py).
Each is written as Markdown and CSV, logged to MLflow, printed. Nothing here runs a trial.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from fsd.analysis import analyse_checkpoint
from fsd.config import DistillConfig
from fsd.metrics import SAMPLES, majority
from fsd.models import teacher_meta
from fsd.storage import content_key
from fsd.tuning.plan.ranking import METRIC
from fsd.tuning.plan.spec import SearchSpec
from fsd.tuning.results import significance, tables
from fsd.tuning.results.html import scatter_plot
from fsd.tuning.results.summary import PAPER
from fsd.tuning.search.comparison import Comparison
from fsd.tuning.search.seed_runs import SeedRun, experiment_name, table_metrics  # noqa: F401


def table(task: str, runs: dict[str, list[dict[str, float]]], teacher: dict[str, float] | None,
          floor: dict[str, float] | None = None, seeds: dict[str, list[int]] | None = None,
          ) -> tuple[str, list[dict[str, Any]], float | None]:
    """Markdown and CSV rows of mean (std) x 100 per metric and method (after the teacher's row, and the
    majority-class `floor`'s when given), under them FSD's one-sided test against each baseline (paired by
    seed where `seeds`, method -> the seed of each run, says both ran the same seeds; Holm-corrected), and
    the p-value that FSD beats every baseline: the largest corrected one (None without FSD and a baseline,
    or when a method has fewer than 2 seeds)."""
    metrics = sorted({k for rows in runs.values() for r in rows for k in r}, key=lambda k: (k != METRIC, k))
    csv_rows: list[dict[str, Any]] = []
    if teacher:
        csv_rows.append({"method": "teacher", "seeds": 1, **{f"{k} mean": 100 * teacher[k] for k in metrics
                                                              if k in teacher}, "paper": PAPER["teacher"].get(task)})
    if floor:
        csv_rows.append({"method": "majority class", "seeds": 0,
                         **{f"{k} mean": 100 * floor[k] for k in metrics if k in floor}, "paper": None})
    for method, rows in runs.items():
        row: dict[str, Any] = {"method": method, "seeds": len(rows)}
        for k in metrics:
            values = np.array([r[k] for r in rows if k in r]) * 100
            row[f"{k} mean"] = float(values.mean()) if len(values) else float("nan")
            row[f"{k} std"] = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
        row["paper"] = PAPER.get(method, {}).get(task)
        csv_rows.append(row)
    comparisons = _comparisons(runs, seeds)
    p_value = significance.beats_every(comparisons)
    head = ["method", "seeds", *metrics, "paper"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in csv_rows:
        cells = [row["method"], str(row["seeds"])]
        for k in metrics:
            mean, std = row.get(f"{k} mean"), row.get(f"{k} std")
            spread = "" if std is None or np.isnan(std) else f" ({std:.2f})"
            cells.append("-" if mean is None else f"{mean:.2f}{spread}")
        cells.append("-" if row["paper"] is None else f"{row['paper']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    if comparisons:
        lines += ["", f"{significance.METHOD_NOTE}; on {METRIC}:", ""]
        for c in comparisons:
            how = f"{c.test} over {c.n} seeds" if c.test == significance.PAIRED else c.test
            lines.append(f"- fsd > {c.versus}: not tested (fewer than 2 seeds)" if not c.test else
                         f"- fsd > {c.versus}: {how}, p = {c.p_holm:.4f} (uncorrected {c.p:.4f})")
        lines.append("\nfsd better than every baseline: " + ("not tested" if p_value is None else
                                                            f"p = {p_value:.4f} (the largest corrected p)"))
    return "\n".join(lines), csv_rows, p_value


def _comparisons(runs: dict[str, list[dict[str, float]]],
                 seeds: dict[str, list[int]] | None) -> list[significance.Comparison]:
    """FSD against every other method on METRIC (none without FSD and another method)."""
    if "fsd" not in runs or len(runs) < 2:
        return []
    scores = {m: [r[METRIC] for r in rows if METRIC in r] for m, rows in runs.items()}
    # Seeds pair scores only where every run of a method has the metric (else they would not line up).
    known = {m: s for m, s in (seeds or {}).items() if m in scores and len(s) == len(scores[m])}
    return significance.versus_each(scores, known)


def write_tables(spec: SearchSpec, ran: Comparison) -> str:
    """Table 2/3 and Tables 6-8 of what a comparison `ran` (with its ablation runs, Table 4; with its batch
    sizes, Table 5), written in its folder and logged in its MLflow run; returns them as Markdown."""
    folder, runs, configs = ran.folder, ran.runs, ran.configs
    meta = teacher_meta(next(iter(configs.values()))[1])
    teacher = {k: v for k, v in (meta or {}).get("dev", {}).items() if isinstance(v, (int, float))}
    first = next(iter(configs.values()))[0]  # every method ran on the same rows
    floor = majority(spec.task, spec.data_dir, first.get("max_train_samples"), first.get("max_eval_samples"),
                     DistillConfig.from_dict(first).holdout)
    dev = {m: [r.dev for r in rs] for m, rs in runs.items()}
    seeds_run = {m: [r.seed for r in rs] for m, rs in runs.items()}
    markdown, rows, p_value = table(spec.task, dev, teacher or None, floor, seeds_run)
    (folder / "compare.md").write_text(markdown + "\n")
    (folder / "compare.csv").write_text(tables.to_csv(rows))
    extra = paper_tables(folder, runs, ran.ablations, ran.by_size)
    # The seed of each run beside it: the tests can be recomputed, paired, from this file alone.
    tests = [asdict(c) for c in _comparisons(dev, seeds_run)]
    (folder / "compare.json").write_text(json.dumps({"runs": dev, "seeds": seeds_run, "p_value": p_value,
                                                   "tests": tests, "methods": ran.methods, "majority": floor,
                                                   "tables": list(extra)}))
    metrics = {f"compare/{r['method']}/{METRIC.replace('/', '_')}_mean": r[f"{METRIC} mean"] for r in rows
               if f"{METRIC} mean" in r}
    if p_value is not None:
        metrics["compare/p_value"] = p_value
    metrics.update({f"compare/{t['versus']}/p_holm": t["p_holm"] for t in tests if not math.isnan(t["p_holm"])})
    files = [str(folder / "compare.md"), str(folder / "compare.csv")]
    files += [str(folder / f"{name}.{ext}") for name in extra for ext in ("md", "csv")]
    ran.outbox.do("log_analysis", ran.run_id, metrics, files + [str(p) for p in sorted(folder.glob("*.png"))])
    return "\n\n".join([markdown, *(f"{tables.TABLES[name]}\n{text}" for name, text in extra.items())])


def paper_tables(folder: Path, runs: dict[str, list[SeedRun]], ablations: dict[str, list[SeedRun]],
                 by_size: dict[str, dict[int, list[SeedRun]]]) -> dict[str, str]:
    """Tables 4-8 written as `<name>.md` and `.csv` in `folder`, with the Fig. 5 scatter and the heat maps:
    6-8 from the compared methods' `runs`, 4 from the `ablations` of FSD (label -> runs; none: no Table 4),
    5 from FSD's variants per batch size (`by_size`; none: no Table 5). Returns name -> Markdown."""
    out: dict[str, list[dict[str, Any]]] = {}
    analyses, scores = {}, {}
    for method, rs in runs.items():
        # One folder per checkpoint analysed, named by its seed and path: run again, a comparison reads its
        # analyses back (a restored Tuner lists its results in another order); other runs analyse their own.
        done = [analyse_checkpoint(r.checkpoint, folder / "analysis" / f"{method}-{r.seed}-{_digest(r.checkpoint)}")[0]
                for r in rs if r.checkpoint]
        if done:
            analyses[method] = {k: float(np.nanmean([d.get(k, np.nan) for d in done])) for k in done[0]}
            scores[method] = float(np.mean(_scores(rs)))
    if analyses:
        out["table6-7-structure"] = tables.structure(analyses, scores)
        scatter_plot({m: (a.get("analysis/cka_diagonal_mean", np.nan), 100 * scores[m]) for m, a in analyses.items()},
                     folder / "fig5-cka-vs-score.png", "CKA heat map diagonal (mean)", "dev score x 100",
                     "Fig. 5: structure kept against dev score")
    curves = {m: [r.curve for r in rs] for m, rs in runs.items() if rs and any(r.curve for r in rs)}
    if curves:
        relation_plot(curves, folder / "fig6-relations-over-training.png")
    measured = {m: [r.cost for r in rs if r.cost] for m, rs in runs.items()}
    out["table8-cost"] = tables.cost({m: {k: sum(c[k] for c in cs) if k != "params" else cs[0][k] for k in cs[0]}
                                      for m, cs in measured.items() if cs})
    if ablations and runs.get("fsd"):
        variants = {"fsd": runs["fsd"], **ablations}
        out["table4-ablation"] = tables.ablation({label: _scores(rs) for label, rs in variants.items()},
                                                 seeds={label: [r.seed for r in rs] for label, rs in variants.items()})
    if by_size:
        out["table5-batch-size"] = tables.batch_stability({label: {b: _scores(rs) for b, rs in sizes.items()}
                                                           for label, sizes in by_size.items()})
    texts = {}
    for name in tables.TABLES:
        if out.get(name):
            texts[name] = tables.markdown(out[name], digits=4 if name == "table6-7-structure" else 2)
            (folder / f"{name}.md").write_text(f"{tables.TABLES[name]}\n\n{texts[name]}\n")
            (folder / f"{name}.csv").write_text(tables.to_csv(out[name]))
    return texts


def _scores(runs: list[SeedRun]) -> list[float]:
    return [r.dev[METRIC] for r in runs]


def _digest(text: str) -> str:
    return content_key(text, 8)


def relation_plot(curves: dict[str, list[list[dict[str, float]]]], path: Path) -> str:
    """Fig. 6: each relation difference against training samples, one line per method (mean over seeds at
    each evaluation)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = sorted({k for runs in curves.values() for run in runs for row in run for k in row
                   if k.startswith("relations/")})
    fig = Figure(figsize=(10.0, 7.0), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    for i, key in enumerate(keys):
        ax = fig.add_subplot(2, 2, i + 1)
        for method, runs in curves.items():
            points = min(len(run) for run in runs)
            x = [np.mean([run[j][SAMPLES] for run in runs]) for j in range(points)]
            y = [np.nanmean([run[j].get(key, np.nan) for run in runs]) for j in range(points)]
            ax.plot(x, y, marker="o", label=method)
        ax.set_title(key[len("relations/"):].replace("_", ", "))
        ax.set_xlabel("training samples")
        ax.set_ylabel("relation difference")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Fig. 6: relation difference to the teacher over training (first evaluation batch)")
    fig.savefig(path, format="png")
    return str(path)
