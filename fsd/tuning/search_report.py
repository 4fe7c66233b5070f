"""`tune_main.py --task rte --report`: the report of every search of a task, rebuilt from the storage
folder (ledgers, analyses beside the winners' checkpoints, the comparison) and MLflow (every trial's dev
score), without training anything: one self-contained HTML page."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fsd.analysis import HEATMAP_FILE
from fsd.tuning import tracking
from fsd.tuning.ledger import LEDGER, Ledger
from fsd.tuning.report import Image, Section, Table, score_plot, write_html
from fsd.tuning.summary import PAPER, SHOWN
from fsd.tuning.tables import TABLES

RESTORATION = ("f1", "precision", "recall", "agreement", "pearson", "spearman")


def searches(storage: Path, task: str) -> dict[str, Ledger]:
    """method -> ledger of every search of `task` in `storage`."""
    out = {}
    for path in sorted(storage.glob(f"{task}-*/{LEDGER}")):
        method = path.parent.name[len(task) + 1:]
        if method != "compare":
            out[method] = Ledger(path.parent)
    return out


def trial_scores(uri: str, ledger: Ledger) -> dict[str, list[float]]:
    """stage -> the best dev score of each of its trials, read from MLflow."""
    client = tracking.client_for(uri)
    exp_id = ledger.data.get("experiment_id")
    out: dict[str, list[float]] = {}
    for stage, record in ledger.records().items():
        if not record.get("run_id") or record.get("trials", 0) == 0:
            continue
        holder = record.get("reused_from") or record["run_id"]  # a reused stage's trials hang under its first run
        runs = client.search_runs([exp_id], filter_string=f"tags.`{tracking.PARENT_TAG}` = '{holder}'",
                                  max_results=10000)
        # a trial halving stopped has a rung's score, not comparable with a final one: left out of the plot
        out[stage] = [r.data.metrics.get("eval/best_score", math.nan) for r in runs
                      if r.data.tags.get("early_stopped") != "true"]
    return out


def stage_rows(method: str, task: str, ledger: Ledger) -> list[dict[str, Any]]:
    rows = []
    for stage, record in ledger.records().items():
        if record.get("status") != "done" or record.get("score") is None:
            continue
        analysis = record.get("analysis", {})
        row = {"stage": stage, "trials": record.get("trials", 0)}
        if "dev" in record:  # ranked on a holdout: its score, and dev measured for the winner alone
            row.update({"holdout score": 100 * record["score"], "dev score": 100 * record["dev"]["dev/score"]})
        else:
            row["dev score"] = 100 * record["score"]
        row["winner"] = ", ".join(f"{k}={record['winner'][k]}" for k in SHOWN if k in record["winner"])
        for key in RESTORATION:
            if f"analysis/restoration_{key}" in analysis:
                row[f"restoration {key}"] = analysis[f"analysis/restoration_{key}"]
        if "analysis/cka_diagonal_mean" in analysis:
            row["CKA diagonal"] = analysis["analysis/cka_diagonal_mean"]
        row["paper"] = PAPER.get(stage, {}).get(task, "-")
        rows.append(row)
    return rows


def relation_rows(ledger: Ledger) -> list[dict[str, Any]]:
    rows = []
    for stage, record in ledger.records().items():
        values = {k[len("analysis/reldiff_"):]: v for k, v in record.get("analysis", {}).items()
                  if k.startswith("analysis/reldiff_")}
        if values:
            rows.append({"stage": stage, **values})
    return rows


def build_report(storage: str, task: str, mlflow_uri: str, out: str | None = None) -> str:
    """Write `<storage>/<task>-report.html` (or `out`) and return its path."""
    root = Path(storage)
    figures = root / f"{task}-report-figures"
    figures.mkdir(parents=True, exist_ok=True)
    sections = []
    for method, ledger in searches(root, task).items():
        scores = trial_scores(mlflow_uri, ledger)
        images = []
        if scores:
            images.append(Image(score_plot(scores, figures / f"{method}-scores.png"),
                                f"{method}: dev score of every trial per stage"))
        for stage, record in ledger.records().items():
            heatmap = Path(record.get("checkpoint") or "/nonexistent") / "analysis" / HEATMAP_FILE
            if heatmap.is_file():
                images.append(Image(str(heatmap), f"{method} / {stage}: teacher vs student CKA heat map"))
        tables = [Table(stage_rows(method, task, ledger))]
        if relation_rows(ledger):
            tables.append(Table(relation_rows(ledger)))
        sections.append(Section(heading=f"{task} / {method}", text=_teacher_line(ledger), tables=tables,
                                images=images))
    compare = root / f"{task}-compare" / "compare.md"
    if compare.is_file():
        import csv

        with open(compare.with_suffix(".csv"), newline="") as f:
            rows = list(csv.DictReader(f))
        note = [ln for ln in compare.read_text().splitlines() if ln.startswith("one-sided")]
        sections.append(Section(heading="method comparison (mean (std) over seeds, x 100)",
                                text="\n".join(note), tables=[Table(rows, caption="Tables 2/3: dev metrics x 100")]))
        sections.extend(paper_sections(compare.parent))
    if not sections:
        raise FileNotFoundError(f"no search of {task} in {storage}: run one first (or pass its --storage)")
    return write_html(out or root / f"{task}-report.html", f"fsd-tune report: {task}", sections)


def paper_sections(folder: Path) -> list[Section]:
    """The comparison's Tables 4-8 (those it wrote), Fig. 5 and each method's CKA heat map."""
    import csv

    out = []
    for name, caption in TABLES.items():
        path = folder / f"{name}.csv"
        if not path.is_file():
            continue
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        images = []
        if name == "table6-7-structure":
            fig5 = folder / "fig5-cka-vs-score.png"
            if fig5.is_file():
                images.append(Image(str(fig5), "Fig. 5: CKA diagonal against dev score, one point per method"))
            fig6 = folder / "fig6-relations-over-training.png"
            if fig6.is_file():
                images.append(Image(str(fig6), "Fig. 6: relation differences over training, one line per method"))
            for method, (seed, heatmap) in first_heatmaps(folder).items():
                images.append(Image(str(heatmap), f"{method}: teacher vs student CKA heat map (seed {seed})"))
        out.append(Section(heading=caption.split(":")[0], tables=[Table(rows, caption=caption)], images=images))
    return out


def first_heatmaps(folder: Path) -> dict[str, tuple[int, Path]]:
    """Per compared method, the heat map of its lowest seed (`analysis/<method>-<seed>-<digest>/`)."""
    found: dict[str, tuple[int, Path]] = {}
    for heatmap in folder.glob(f"analysis/*-*-*/{HEATMAP_FILE}"):
        method, seed, _ = heatmap.parent.name.rsplit("-", 2)
        if seed.isdigit() and (method not in found or int(seed) < found[method][0]):
            found[method] = (int(seed), heatmap)
    return dict(sorted(found.items()))


def _teacher_line(ledger: Ledger) -> str:
    return f"teacher: {ledger.data.get('teacher', '?')}; search: {ledger.data.get('search', {})}"
