"""The final table of a search: each stage's winner, its dev score, the paper's figure for the task."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from fsd.layout import Layout
from fsd.metrics import DEV_SCORE, SCORE
from fsd.models import teacher_meta
from fsd.tuning.plan.evidence import split_error_line
from fsd.tuning.plan.ledger import Ledger
from fsd.tuning.plan.winners import not_last_line
from search_spaces import Schedule

# docs/method.md §8, the paper's selection score per task and method (GLUE dev, BERT-base teacher, BERT6 student)
PAPER = {
    "teacher": {"wnli": 56.34, "rte": 66.79, "stsb": 88.63, "cola": 55.47, "mrpc": 83.55, "sst2": 92.09,
                "qnli": 91.60, "qqp": 89.57, "mnli": 84.70},
    "vkd": {"wnli": 54.37, "rte": 65.40, "stsb": 88.00, "cola": 41.46, "mrpc": 83.50, "sst2": 90.92,
            "qnli": 88.46, "qqp": 89.50, "mnli": 82.20},
    "pkd": {"wnli": 54.37, "rte": 63.90, "stsb": 88.27, "cola": 41.87, "mrpc": 83.68, "sst2": 90.77,
            "qnli": 88.57, "qqp": 89.46, "mnli": 82.27},
    "rkd": {"wnli": 51.83, "rte": 65.22, "stsb": 88.28, "cola": 43.07, "mrpc": 84.36, "sst2": 91.02,
            "qnli": 88.91, "qqp": 89.67, "mnli": 82.39},
    "fsd": {"wnli": 55.49, "rte": 66.61, "stsb": 88.51, "cola": 43.03, "mrpc": 84.65, "sst2": 91.04,
            "qnli": 88.97, "qqp": 89.67, "mnli": 82.42},
}
SHOWN = ("alpha", "temperature", "lr", "epochs", "beta", "gamma_i", "gamma_l", "gamma_g", "lam")


def summary_table(ledger: Ledger, schedule: Schedule) -> str:
    """One row per stage: its winner's searched values and score x 100; a search ranked on a holdout shows
    the winner's holdout score (what was maximised) and its dev score (measured once, for the winner)."""
    task = schedule.task
    holdout = ledger.data.get("search", {}).get("select_on") == "holdout"
    scores = "holdout score | dev score" if holdout else "dev score"
    # A search whose stages named their winners with evidence shows it (docs/search.md, "Seeds and ties").
    noisy = any(r.get("evidence") for r in ledger.records().values())
    head = f"| stage | winner | {scores} |{EVIDENCE_HEAD if noisy else ''} paper |"
    lines = [f"search {task} / {schedule.method} / {schedule.preset}", head, "|---" * (head.count("|") - 1) + "|"]
    blank = " - |" if holdout else ""  # the teacher and the floor are not ranked on the holdout
    none = " |" * EVIDENCE_HEAD.count("|") if noisy else ""
    meta = teacher_meta(ledger.data["teacher"]) if ledger.data.get("teacher") else None
    if meta and SCORE in meta.get("dev", {}):
        name = Path(ledger.data["teacher"]).name
        score = 100 * meta["dev"][SCORE]
        lines.append(f"| teacher | {name} |{blank} {score:.2f} |{none} {PAPER['teacher'].get(task, '-')} |")
    floor = ledger.data.get("majority")
    if floor:
        lines.append(f"| majority class | the most frequent training label |{blank} {100 * floor[SCORE]:.2f} "
                     f"|{none} - |")
    for stage in schedule.stages:
        record = ledger.records().get(stage.name, {})
        if record.get("status") != "done" or stage.prepare:
            status = "memory built" if record.get("status") == "done" else "not run"
            lines.append(f"| {stage.name} | {status} |" + " |" * (head.count("|") - 3))
            continue
        if record.get("trials") == 0 and (stage.carry or record.get("skipped")):
            lines.append(f"| {stage.name} | {skipped_text(stage, record)} |" + " |" * (head.count("|") - 3))
            continue
        shown = winner_text(schedule, stage, record)
        paper = PAPER.get(stage.method, {}).get(task)
        score = f"{100 * record['score']:.2f}"
        if holdout:
            dev = record.get("dev", {}).get(DEV_SCORE)
            score += " | " + ("-" if dev is None else f"{100 * dev:.2f}")
        shown_evidence = evidence_cells(record.get("evidence")) if noisy else ""
        lines.append(f"| {stage.name} | {shown} | {score} |{shown_evidence} {paper if paper else '-'} |")
    return "\n".join(lines)


EVIDENCE_HEAD = " seeds | sd | vs runner-up [95%] | tied |"


def evidence_columns(found: dict | None) -> dict[str, str]:
    """A stage's evidence as columns: its winner's seeds and sd, the paired difference to the runner-up with
    its interval, and the candidates tied with it (all blank without evidence)."""
    if not found:
        return dict.fromkeys(("seeds", "sd", "vs runner-up [95%]", "tied"), "")
    d = found.get("diff")
    if not d:
        diff = "-"
    elif d.get("lo") is None:
        diff = f"{100 * d['diff']:+.2f} (no interval)"
    else:
        diff = f"{100 * d['diff']:+.2f} [{100 * d['lo']:+.2f}, {100 * d['hi']:+.2f}]"
    others = found["candidates"] - 1
    return {"seeds": str(found["n"]), "sd": "-" if found.get("sd") is None else f"{100 * found['sd']:.2f}",
            "vs runner-up [95%]": diff, "tied": f"{found['tied']} of {others}" if others else "-"}


def evidence_cells(found: dict | None) -> str:
    """`evidence_columns` as the summary table's cells."""
    return "".join(f" {v} |" for v in evidence_columns(found).values())


def winner_text(schedule: Schedule, stage, record) -> str:
    """A stage winner's searched and inherited values; a winner trained in another stage (carried in) with
    that stage's values, and says so."""
    origin = record.get("trained_in", stage.name)
    where = schedule.stage(origin) if origin in {s.name for s in schedule.stages} else stage
    winner = record["winner"]
    keys = [k for k in SHOWN if k in where.grid or k in where.inherit or any(k in d.param for d in where.derived)
            or (k in where.fixed and k != "beta")]
    shown = ", ".join(f"{k}={winner.get(k)}" for k in keys if k in winner)
    return shown if where is stage else f"{origin}'s winner, carried: {shown}"


def skipped_text(stage, record) -> str:
    """Why a stage ran no trial, and whose winner it kept."""
    source = record.get("carried_from") or ", ".join(stage.carry)
    why = record.get("skipped")
    if why is None:  # a ledger written before stages said why: a refine stage around 0
        return (f"skipped: {source}'s winner has {', '.join(d.param for d in stage.derived)} = 0, nothing to "
                "refine; its winner kept")
    return f"skipped: {why}; {source}'s winner kept"


def pointers(ledger: Ledger, schedule: Schedule, storage: str, mlflow_uri: str, wall_s: float) -> str:
    """Where the results are, after the table: the best student's registered model, the MLflow UI and report
    commands, the folders, the wall time and the training samples the search's own stages processed."""
    from fsd.progress import format_duration

    task, method = schedule.task, schedule.method
    records = ledger.records()
    lines = []
    best = ledger.data.get("best")
    if best and best.get("checkpoint"):
        holdout = ledger.data.get("search", {}).get("select_on") == "holdout"
        lines.append(f"best student: trained in stage {best['stage']} ({'holdout' if holdout else 'dev'} score "
                     f"{100 * best['score']:.2f}), models:/fsd-{task}-{method}@best (mlflow.transformers.load_model "
                     "loads it as a text-classification pipeline)")
        lines.extend(filter(None, [not_last_line(records, schedule, holdout)]))
    else:
        last = [s for s in schedule.stages if records.get(s.name, {}).get("model_version")]
        if last:  # a ledger written before the search recorded its best student
            stage = last[-1].name
            lines.append(f"best student (stage {stage}): models:/fsd-{task}-{method}@{stage.replace('-', '_')} "
                         "(mlflow.transformers.load_model loads it as a text-classification pipeline)")
    if mlflow_uri.startswith("sqlite:///"):
        lines.append(f"MLflow UI: mlflow ui --backend-store-uri {mlflow_uri} --port 5000")
    else:
        lines.append(f"MLflow: {mlflow_uri}")
    lines.append(f"report: python tune_main.py --task {task} --storage {storage} --report "
                 f"(writes {Layout(storage).report(task)})")
    lines.append(f"storage: {Layout(storage).search(task, method)} (ledger), {Layout(storage).stages} (trials)")
    samples = sum(int(r.get("samples") or 0) for r in records.values() if not r.get("reused_from"))
    lines.append(f"wall time {format_duration(wall_s)}; students trained on {samples:,} samples in this search's "
                 "stages (stages reused from another search not counted)")
    return "\n".join(lines)


def noise_lines(ledger: Ledger) -> list[str]:
    """How finely the search could rank: the ranking split's sampling error beside the stages' leads over their
    runner-ups (a lead smaller than it is within what the split's size alone can move)."""
    ranking = ledger.data.get("ranking")
    if not ranking:
        return []
    best = (ledger.data.get("best") or {}).get("score")
    line = split_error_line(ranking["score"], ranking["split"], ranking["rows"], best)
    if ranking["score"] != "accuracy":
        return [line]
    from fsd.tuning.plan.evidence import binomial_error

    error = binomial_error(0.5 if best is None else best, ranking["rows"])
    leads = [r["evidence"]["diff"]["diff"] for r in ledger.records().values()
             if (r.get("evidence") or {}).get("diff") and not r.get("carried_from")]
    if leads:
        small = sum(1 for d in leads if abs(d) < error)
        line += (f"; {small} of the {len(leads)} stage winners that trained their own lead their runner-up by less "
                 "than that (said tied)")
    return [line]


def fresh_lines(ledger: Ledger) -> list[str]:
    """The search's best beside the untuned start points and VKD's winner on fresh seeds (`--fresh-seeds`): each
    one's mean (sd) on dev, the difference to the search's best and the one-sided p that the search's best is
    higher (paired by seed, Holm-corrected over the others); a start point at the majority class says so."""
    from fsd.tuning.results.significance import versus_each
    from fsd.tuning.search.fresh import SEARCHED

    fresh = ledger.data.get("fresh")
    if not fresh or SEARCHED not in fresh["runs"]:
        return []
    runs = {label: r for label, r in fresh["runs"].items() if r["scores"]}
    scores = {label: list(r["scores"].values()) for label, r in runs.items()}
    seeds = {label: [int(s) for s in r["scores"]] for label, r in runs.items()}
    tests = {c.versus: c for c in versus_each(scores, seeds, full=SEARCHED)} if SEARCHED in scores else {}
    floor = (ledger.data.get("majority") or {}).get(SCORE)
    lines = [f"was the search worth it: dev x 100 on {len(fresh['seeds'])} seeds no search used "
             f"({fresh['seeds'][0]}-{fresh['seeds'][-1]})",
             "| students | mean (sd) | vs the search's best | p (search's best higher, Holm) | at the majority class |",
             "|---|---|---|---|---|"]
    for label, values in scores.items():
        sd = statistics.stdev(values) if len(values) > 1 else float("nan")
        test = tests.get(label)
        diff = "-" if test is None else f"{100 * (statistics.fmean(scores[SEARCHED]) - statistics.fmean(values)):+.2f}"
        p = "-" if test is None or math.isnan(test.p_holm) else f"{test.p_holm:.3f} ({test.test})"
        majority = "-" if floor is None else f"{sum(1 for v in values if v <= floor + 1e-9)} of {len(values)}"
        lines.append(f"| {label} ({runs[label]['method']}) | {100 * statistics.fmean(values):.2f} ({100 * sd:.2f}) | "
                     f"{diff} | {p} | {majority} |")
    return lines
