"""The paper's Tables 4-8 from the runs of a `--compare` (pure arithmetic on their numbers; no Ray, no I/O).

Every function takes what the comparison measured and returns table rows (one dict per row, scores x 100);
`markdown` and `write_csv` turn rows into the files beside the comparison.
  - Table 4 (`ablation`): FSD without one or two of its structures, as differences from FSD, each tested
    (fsd/tuning/results/significance.py);
  - Table 5 (`batch_stability`): the std of the dev score across mini-batch sizes;
  - Tables 6 and 7 (`structure`): the CKA heat map's diagonal and the relation differences per method,
    with each method's rank per relation and its average rank (1: closest to the teacher);
  - Table 8 (`cost`): parameters, training and inference time of each method relative to VKD.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from fsd.tuning.results import significance

# The tables beside compare.md: file name -> caption.
TABLES = {"table4-ablation": "Table 4: FSD without some of its structures (the same seeds), x 100; p (fsd better): "
                             + significance.METHOD_NOTE + " (test: the one each row used)",
          "table5-batch-size": "Table 5: dev score x 100 per mini-batch size, and its std across sizes",
          "table6-7-structure": "Tables 6 and 7: CKA diagonal and relation differences (smaller: closer to the "
                                "teacher), rank among the methods, average rank; means over seeds",
          "table8-cost": "Table 8: student parameters, training and inference time, relative to VKD (measured in "
                         "this comparison)"}


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else math.nan


def ablation(scores: dict[str, Sequence[float]], full: str = "fsd",
             seeds: dict[str, Sequence[int]] | None = None) -> list[dict[str, Any]]:
    """Table 4. `scores`: row label -> the dev scores (fractions) of its seeds, `full` among them; `seeds`:
    row label -> the seed of each score, when known (paired tests need them).

    Each row: the mean (std) x 100, its difference from FSD's mean, the test that FSD is better (one-sided;
    paired by seed when both ran the same seeds, else Welch), its p-value uncorrected and Holm-corrected
    over the rows (`p (fsd better)`; NaN when a side has one seed)."""
    base = [100 * s for s in scores[full]]
    tests = {c.versus: c for c in significance.versus_each(scores, seeds, full)}
    rows = []
    for label, values in scores.items():
        mine = [100 * s for s in values]
        mean, std = _mean_std(mine)
        row = {"method": label, "seeds": len(mine), "dev score mean": mean, "dev score std": std}
        if label != full:
            row["difference from fsd"] = mean - float(np.mean(base))
            row["test"] = tests[label].test or None
            row["p uncorrected"] = tests[label].p
            row["p (fsd better)"] = tests[label].p_holm
        rows.append(row)
    return rows


def batch_stability(scores: dict[str, dict[int, Sequence[float]]]) -> list[dict[str, Any]]:
    """Table 5. `scores`: row label -> batch size -> the dev scores of its seeds. Each row: the mean x 100
    at each batch size, and the std (ddof 1) of those means across batch sizes: the smaller, the steadier."""
    rows = []
    for label, by_size in scores.items():
        means = {b: 100 * float(np.mean(v)) for b, v in sorted(by_size.items())}
        row: dict[str, Any] = {"method": label}
        row.update({f"batch {b}": m for b, m in means.items()})
        row["std across batch sizes"] = _mean_std(list(means.values()))[1]
        rows.append(row)
    return rows


def ranks(values: dict[str, float]) -> dict[str, float]:
    """1 for the smallest value, ties sharing their mean rank (NaN ranks last)."""
    names = list(values)
    keyed = [math.inf if math.isnan(values[n]) else values[n] for n in names]
    return dict(zip(names, (float(r) for r in stats.rankdata(keyed)), strict=True))


def structure(analyses: dict[str, dict[str, float]], scores: dict[str, float]) -> list[dict[str, Any]]:
    """Tables 6 and 7. `analyses`: method -> its `analysis/*` metrics (fsd.analysis, means over seeds);
    `scores`: method -> mean dev score (fraction). Each row: the dev score x 100, the CKA diagonal, each
    relation difference (the smaller, the closer to the teacher's structure), the method's rank among the
    compared methods on each, and its average rank over the relations."""
    relations = sorted({k for a in analyses.values() for k in a if k.startswith("analysis/reldiff_")})
    ranked = {k: ranks({m: a.get(k, math.nan) for m, a in analyses.items()}) for k in relations}
    rows = []
    for method, values in analyses.items():
        row: dict[str, Any] = {"method": method, "dev score": 100 * scores[method],
                               "CKA diagonal": values.get("analysis/cka_diagonal_mean", math.nan)}
        for k in relations:
            name = k[len("analysis/reldiff_"):]
            row[name] = values.get(k, math.nan)
            row[f"rank {name}"] = ranked[k][method]
        row["average rank"] = float(np.mean([ranked[k][method] for k in relations])) if relations else math.nan
        rows.append(row)
    return rows


def cost(measured: dict[str, dict[str, float]], reference: str = "vkd") -> list[dict[str, Any]]:
    """Table 8. `measured`: method -> `params` (the student's), `train_s` and `samples` (training seconds
    and samples over its seed runs), `eval_s` and `eval_rows` (evaluation). Each row: parameters in
    millions, training seconds per 1,000 samples, inference seconds per 1,000 rows, each relative to
    `reference` (absent: no ratios)."""
    def per(m: dict[str, float]) -> tuple[float, float, float]:
        return m["params"], 1000 * m["train_s"] / m["samples"], 1000 * m["eval_s"] / m["eval_rows"]

    ref = per(measured[reference]) if reference in measured else None
    rows = []
    for method, m in measured.items():
        params, train, infer = per(m)
        row = {"method": method, "parameters (M)": params / 1e6, "training s per 1k samples": train,
               "inference s per 1k rows": infer}
        if ref is not None:
            row.update({"parameters vs vkd": params / ref[0], "training time vs vkd": train / ref[1],
                        "inference time vs vkd": infer / ref[2]})
        rows.append(row)
    return rows


def markdown(rows: Sequence[dict[str, Any]], digits: int = 2) -> str:
    """A Markdown table of `rows` (columns in first-seen order; floats to `digits` places, NaN as '-')."""
    columns = list(dict.fromkeys(k for r in rows for k in r))

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "-" if math.isnan(v) else f"{v:.{digits}f}"
        return "-" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
