"""`tune_main.py --task rte --report`: the report of every search of a task, rebuilt from the storage
folder (ledgers, analyses beside the winners' checkpoints, the comparison) and MLflow (every trial's dev
score), without training anything: one self-contained HTML page (its figures inline, drawn in a temporary
folder)."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

from fsd.analysis import HEATMAP_FILE, METRICS_FILE
from fsd.data import split_rows
from fsd.layout import COMPARE, LEDGER, Layout
from fsd.metrics import BEST_SCORE, DEV_SCORE, SCORE
from fsd.models import teacher_meta
from fsd.tuning.plan.evidence import expected_best
from fsd.tuning.plan.ledger import Ledger
from fsd.tuning.results.html import Image, Section, Table, curve_plot, score_plot, write_html
from fsd.tuning.results.summary import PAPER, SHOWN, evidence_columns, fresh_lines
from fsd.tuning.results.tables import TABLES
from fsd.tuning.tracking.records import PARENT_TAG, client_for
from search_spaces import get_schedule

RESTORATION = ("f1", "precision", "recall", "agreement", "pearson", "spearman")
COLUMNS = """What the winners' columns mean (docs/method.md §8), each measured on dev against the teacher:

- winner: the values of the stage's winning trial; "<stage>'s winner, carried": none of the stage's trials beat
  the winner of that earlier stage, which the stage kept (its scores and analyses are that student's)
- restoration precision, recall and F1: the student's predictions scored with the teacher's as the truth (macro
  over classes); agreement: the share of dev rows on which both predict the same class; for STS-B, restoration
  pearson and spearman: the correlation of the two models' outputs
- CKA diagonal: the mean of the diagonal of the teacher-vs-student CKA heat map over dev mini-batches (the
  paper's Table 6; 1 is the teacher's own structure)
- trials: the stage's own trials (0: skipped, an earlier winner kept)
- seeds, sd: the seeds the winner was trained on and the sd of its score over them; vs runner-up: the paired
  difference to the next candidate over their shared seeds with its 95% t interval; tied: the candidates
  whose interval holds 0, or that the winner leads by less than the ranking split's sampling error
  (docs/search.md, "Seeds and ties")"""


def searches(storage: Path, task: str) -> dict[str, Ledger]:
    """method -> ledger of every search of `task` in `storage`."""
    out = {}
    for path in sorted(storage.glob(f"{task}-*/{LEDGER}")):
        method = path.parent.name[len(task) + 1:]
        if method != COMPARE:
            out[method] = Ledger(path.parent)
    return out


def stage_order(ledger: Ledger) -> list[str]:
    """The ledger's stages in the order its search ran them (its schedule), any other stage last."""
    search = ledger.data.get("search", {})
    try:
        grids = {key: tuple(v) for key, v in search.get("grids", {}).items()}
        order = [st.name for st in get_schedule(search["method"], search["task"], search["preset"], grids).stages]
    except (KeyError, ValueError):
        order = []
    names = list(ledger.records())
    return [n for n in order if n in names] + [n for n in names if n not in order]


def origin(stage: str, record: dict[str, Any]) -> str:
    """The stage whose trial trained `stage`'s winner: itself, or the earlier stage whose winner it carried
    (none of its trials beat it, or it was skipped)."""
    return record.get("trained_in") or record.get("carried_from") or stage


def carried_winners(ledger: Ledger) -> dict[str, tuple[float, str]]:
    """stage -> (its winner's score x 100, the stage that trained it), for each stage whose winner was carried
    in from an earlier stage: what the trial plot marks instead of the stage's best trial."""
    out = {}
    for stage, record in ledger.records().items():
        if record.get("status") == "done" and record.get("score") is not None and origin(stage, record) != stage:
            out[stage] = (100 * record["score"], origin(stage, record))
    return out


def trial_scores(uri: str, ledger: Ledger) -> dict[str, list[float]]:
    """stage -> the best score x 100 of each of its trials (on what they were ranked), read from MLflow, in
    schedule order."""
    client = client_for(uri)
    exp_id = ledger.data.get("experiment_id")
    out: dict[str, list[float]] = {}
    for stage in stage_order(ledger):
        record = ledger.records()[stage]
        if not record.get("run_id") or record.get("trials", 0) == 0:
            continue
        holder = record.get("reused_from") or record["run_id"]  # a reused stage's trials hang under its first run
        runs = client.search_runs([exp_id], filter_string=f"tags.`{PARENT_TAG}` = '{holder}'",
                                  max_results=10000)
        # a trial halving stopped has a rung's score, not comparable with a final one: left out of the plot
        out[stage] = [100 * r.data.metrics.get(BEST_SCORE, math.nan) for r in runs
                      if r.data.tags.get("early_stopped") != "true"]
    return out


def stage_rows(method: str, task: str, ledger: Ledger) -> list[dict[str, Any]]:
    """The teacher, the majority-class floor, then each stage's winner in schedule order (scores x 100)."""
    holdout = ledger.data.get("search", {}).get("select_on") == "holdout"
    rows: list[dict[str, Any]] = []
    meta = teacher_meta(ledger.data["teacher"]) if ledger.data.get("teacher") else None
    if meta and SCORE in meta.get("dev", {}):
        rows.append({"stage": "teacher", "dev score": _pct(meta["dev"][SCORE]),
                     "winner": Path(ledger.data["teacher"]).name, "paper": PAPER["teacher"].get(task, "-")})
    floor = ledger.data.get("majority")
    if floor:
        rows.append({"stage": "majority class", "dev score": _pct(floor[SCORE]),
                     "winner": "the most frequent training label"})
    for stage in stage_order(ledger):
        record = ledger.records()[stage]
        if record.get("skipped") and (record.get("trials", 0) == 0 or record.get("status") != "done"):
            # no trial of its own: what it kept, not a score it did not earn
            kept = record.get("carried_from")
            rows.append({"stage": stage, "trials": 0, "winner": f"skipped: {record['skipped']}"
                         + (f"; {kept}'s winner kept" if kept else "")})
            continue
        if record.get("status") != "done" or record.get("score") is None:
            continue
        analysis = record.get("analysis", {})
        row: dict[str, Any] = {"stage": stage, "trials": record.get("trials", 0)}
        if holdout and "dev" in record:  # ranked on a holdout: its score, and dev measured for the winner alone
            row.update({"holdout score": _pct(record["score"]), "dev score": _pct(record["dev"][DEV_SCORE])})
        else:
            row["dev score"] = _pct(record["score"])
        row["winner"] = ", ".join(f"{k}={record['winner'][k]}" for k in SHOWN if k in record["winner"])
        if origin(stage, record) != stage:  # none of its trials beat an earlier winner: that student, named
            row["winner"] = f"{origin(stage, record)}'s winner, carried: {row['winner']}"
        if record.get("evidence"):  # named with its evidence: seeds, sd, the runner-up, the ties
            row.update(evidence_columns(record["evidence"]))
        for key in RESTORATION:
            if f"analysis/restoration_{key}" in analysis:
                row[f"restoration {key}"] = analysis[f"analysis/restoration_{key}"]
        if "analysis/cka_diagonal_mean" in analysis:
            row["CKA diagonal"] = analysis["analysis/cka_diagonal_mean"]
        row["paper"] = PAPER.get(stage, {}).get(task, "-")
        rows.append(row)
    return rows


def references(ledger: Ledger) -> dict[str, float]:
    """The teacher's and the majority class's dev scores x 100, the lines a trial plot is read against."""
    out = {}
    meta = teacher_meta(ledger.data["teacher"]) if ledger.data.get("teacher") else None
    if meta and SCORE in meta.get("dev", {}):
        out["teacher"] = 100 * meta["dev"][SCORE]
    if (ledger.data.get("majority") or {}).get(SCORE) is not None:
        out["majority class"] = 100 * ledger.data["majority"][SCORE]
    return out


def _pct(score: float) -> str:
    return f"{100 * score:.2f}"


def relation_rows(ledger: Ledger) -> list[dict[str, Any]]:
    """Each stage winner's relation differences, under the stage that trained it only (a stage that carried
    an earlier winner holds a copy of that stage's)."""
    rows = []
    for stage in stage_order(ledger):
        record = ledger.records()[stage]
        if origin(stage, record) != stage:
            continue
        values = {k[len("analysis/reldiff_"):]: v for k, v in record.get("analysis", {}).items()
                  if k.startswith("analysis/reldiff_")}
        if values:
            rows.append({"stage": stage, **values})
    return rows


def settings(ledger: Ledger) -> str:
    """The search's settings as a short list (what --resume keeps)."""
    s = ledger.data.get("search", {})
    if not s:
        return f"teacher: `{ledger.data.get('teacher', '?')}`"
    held = s.get("select_on") == "holdout"
    lines = [f"- teacher: `{ledger.data.get('teacher', s.get('teacher'))}`",
             f"- student: the first {s.get('student_layers')} layers of "
             + (f"`{s['student_init']}`" if s.get("student_init") else "the teacher's pre-trained backbone"),
             f"- data: `{s.get('data_dir') or 'nyu-mll/glue (hub)'}`, sequences of {s.get('max_seq_len')} tokens",
             f"- preset `{s.get('preset')}`, strategy `{s.get('strategy')}`, {s.get('seeds')} seed(s) per grid point",
             "- trials ranked on " + (f"a holdout of {s.get('holdout_rows')} training rows (dev measured for the "
                                      "stage winners only)" if held else "dev (the paper's protocol)")]
    if s.get("extra"):
        lines.append("- `--set` " + ", ".join(f"`{k}={v}`" for k, v in s["extra"].items()))
    if s.get("grids"):
        lines.append("- `--grid` " + ", ".join(f"`{k}={','.join(map(str, v))}`" for k, v in s["grids"].items()))
    return "\n".join(lines)


def heatmaps(method: str, ledger: Ledger) -> tuple[list[Image], list[str]]:
    """The stage winners' CKA heat maps that have more than one cell, titled, and the stages left out; a
    winner carried from an earlier stage is shown under that stage only."""
    shown, single = [], []
    for stage in stage_order(ledger):
        if origin(stage, ledger.records()[stage]) != stage:
            continue
        folder = Path(ledger.records()[stage].get("checkpoint") or "/nonexistent") / "analysis"
        if not (folder / HEATMAP_FILE).is_file():
            continue
        saved = folder / METRICS_FILE
        shape = json.loads(saved.read_text()).get("heatmap_shape") if saved.is_file() else None
        cells = shape[0] * shape[1] if shape else _batches(ledger.records()[stage].get("winner", {})) ** 2
        if cells <= 1:
            single.append(stage)
            continue
        shown.append(Image(str(folder / HEATMAP_FILE), f"{method} / {stage} heat map",
                           f"{method} / {stage}: teacher (rows) vs student (columns) CKA over dev mini-batches"))
    return shown, single


def _batches(winner: dict[str, Any]) -> int:
    """The side of the heat map of a winner's analysis (analyses written before their heat map's shape was kept):
    its full dev mini-batches (a smaller last one is dropped, `fsd.analysis.cka_heatmap`), or 1 when dev fits
    in one."""
    task = winner.get("task")
    if task is None:
        return 2  # unknown: shown
    dev = split_rows(task, winner.get("data_dir"), None, winner.get("max_eval_samples"))[1]
    return max(1, dev // winner.get("eval_batch_size", 128))


def at_majority(ledgers: dict[str, Ledger]) -> str | None:
    """A warning when every stage winner of every search is within 0.5 points of the majority class."""
    scores, floor = [], None
    for ledger in ledgers.values():
        floor = (ledger.data.get("majority") or {}).get(SCORE, floor)
        for record in ledger.records().values():
            if record.get("status") == "done" and record.get("score") is not None:
                scores.append(record["dev"][DEV_SCORE] if "dev" in record else record["score"])
    if floor is None or not scores or max(scores) > floor + 0.005:
        return None
    return (f"**Every student is at the majority class** (dev score {100 * floor:.2f}): this budget is too small "
            "for the task to learn anything, so the tables below say nothing about the methods. Give the trials "
            "more rows or epochs (e.g. `--preset cpu` on SST-2, or `--set max_train_samples=none --set epochs=3`).")


def worth_sections(mlflow_uri: str, ledgers: dict[str, Ledger], figures: Path, task: str) -> list[Section]:
    """What each search bought: the expected best score of n of its trials (Dodge et al. 2019), drawn from every
    trial it recorded, beside the untuned start points' fresh-seed means; and its --fresh-seeds table."""
    curves, levels, sections = {}, {}, []
    for method, ledger in ledgers.items():
        pooled = [x for scores in trial_scores(mlflow_uri, ledger).values() for x in scores
                  if x is not None and math.isfinite(x)]
        if pooled:
            ns = list(range(1, len(pooled) + 1))
            strategy = ledger.data.get("search", {}).get("strategy", "grid")
            curves[f"{method} ({strategy}, {len(pooled)} trials)"] = (ns, [expected_best(pooled, n) for n in ns])
        fresh = fresh_lines(ledger)
        if fresh:
            sections.append(Section(heading=f"{task} / {method}: was the search worth it", text="\n".join(fresh)))
            for label, run in ledger.data["fresh"]["runs"].items():
                if label.startswith("untuned") and run.get("mean") is not None:
                    levels[f"{label} (fresh seeds)"] = 100 * run["mean"]
    if curves:
        path = curve_plot(curves, figures / "expected-best.png", "trials drawn (n)", "expected best score x 100",
                          f"{task}: expected best of n trials (expected validation performance)", levels)
        sections.insert(0, Section(heading="expected best score of n trials", text=(
            "The expected best score x 100 of n trials drawn with replacement from each search's recorded trials "
            "(every stage's, on what they were ranked on: Dodge et al. 2019, 'Show Your Work'); dashed: the untuned "
            "start points' mean on fresh seeds, where --fresh-seeds ran."), images=[Image(
                path, "expected best of n trials", "one line per search")]))
    return sections


def build_report(storage: str, task: str, mlflow_uri: str, out: str | None = None) -> str:
    """Write `<storage>/<task>-report.html` (or `out`), one file with its figures inline, and return its path."""
    root = Path(storage)
    with tempfile.TemporaryDirectory(prefix=f"{task}-report-") as tmp:  # the page holds the figures, inline
        return _build_report(root, task, mlflow_uri, Path(tmp), out)


def _build_report(root: Path, task: str, mlflow_uri: str, figures: Path, out: str | None) -> str:
    ledgers = searches(root, task)
    sections = []
    warning = at_majority(ledgers)
    if warning:
        sections.append(Section(heading="Warning", text=warning))
    for method, ledger in ledgers.items():
        held = ledger.data.get("search", {}).get("select_on") == "holdout"
        ranked = "holdout" if held else "dev"
        images = []
        scores = trial_scores(mlflow_uri, ledger)
        if scores:
            lines = references(ledger)
            carried = {s: c for s, c in carried_winners(ledger).items() if s in scores}
            images.append(Image(score_plot(scores, figures / f"{method}-scores.png", ylabel=f"{ranked} score x 100",
                                           title=f"{task} / {method}: every trial's {ranked} score x 100, per stage",
                                           lines=lines, carried=carried),
                                f"{method}: {ranked} score of every trial per stage",
                                f"Every trial's best {ranked} score x 100 per stage, in schedule order; a star marks "
                                "the stage's winner (trials stopped early by halving left out)"
                                + ("; a hollow star, an earlier stage's winner that none of the stage's trials beat, "
                                   "at its score (its tick names that stage)" if carried else "")
                                + "; dashed lines: " + ", ".join(lines) + (" (measured on dev)" if held else "")))
        maps, single = heatmaps(method, ledger)
        text = settings(ledger)
        if single:
            text += (f"\n\nCKA heat maps of {', '.join(single)} are not shown: they have a single cell (the dev split "
                     "holds fewer than two full evaluation mini-batches).")
        kept = [s for s in stage_order(ledger) if origin(s, ledger.records()[s]) != s]
        if kept:
            text += (f"\n\nStages that kept an earlier stage's winner (their winner cell names it): {', '.join(kept)}; "
                     "that student's relation differences and CKA heat map appear once, under the stage that trained "
                     "it.")
        units = ("holdout and dev scores" if held else "dev scores") + " x 100; restoration rates and the CKA " \
                "diagonal as fractions in [0, 1]; paper: its BERT-base figure x 100"
        text += "\n\n" + COLUMNS
        tables = [Table(stage_rows(method, task, ledger), caption=f"Stage winners in schedule order ({units})")]
        if relation_rows(ledger):
            tables.append(Table(relation_rows(ledger), caption="Relation differences of each stage winner to the "
                                "teacher on dev (Eq. 12-13; mean absolute difference, smaller is closer)"))
        sections.append(Section(heading=f"{task} / {method}", text=text, tables=tables, images=images,
                                thumbnails=maps))
    sections.extend(worth_sections(mlflow_uri, ledgers, figures, task))
    compare = Layout(root).compare(task) / "compare.md"
    if compare.is_file():
        import csv

        with open(compare.with_suffix(".csv"), newline="") as f:
            rows = list(csv.DictReader(f))
        # The tests under the table: from their first line (each baseline's, then "every baseline") to the end.
        lines = compare.read_text().splitlines()
        note = next((lines[i:] for i, ln in enumerate(lines) if ln.startswith("one-sided")), [])
        sections.append(Section(heading="method comparison (mean (std) over seeds, x 100)",
                                text="\n".join(note), tables=[Table(rows, caption="Tables 2/3: dev metrics x 100")]))
        sections.extend(paper_sections(compare.parent))
    if not sections:
        raise FileNotFoundError(f"no search of {task} in {root}: run one first (or pass its --storage)")
    return write_html(out or Layout(root).report(task), f"fsd-tune report: {task}", sections)


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
        maps = [Image(str(heatmap), f"{method}: teacher vs student CKA heat map (seed {seed})",
                      f"{method} (seed {seed}): teacher vs student CKA over dev mini-batches")
                for method, (seed, heatmap) in first_heatmaps(folder).items()] if name == "table6-7-structure" else []
        out.append(Section(heading=caption.split(":")[0], tables=[Table(rows, caption=caption)], images=images,
                           thumbnails=maps))
    return out


def first_heatmaps(folder: Path) -> dict[str, tuple[int, Path]]:
    """Per compared method, the heat map of its lowest seed (`analysis/<method>-<seed>-<digest>/`)."""
    found: dict[str, tuple[int, Path]] = {}
    for heatmap in folder.glob(f"analysis/*-*-*/{HEATMAP_FILE}"):
        method, seed, _ = heatmap.parent.name.rsplit("-", 2)
        if seed.isdigit() and (method not in found or int(seed) < found[method][0]):
            found[method] = (int(seed), heatmap)
    return dict(sorted(found.items()))
