"""The recorded comparisons' p-values under the tests `--compare` runs now (fsd/tuning/results/significance.py),
from the raw files in bench/results/ alone; docs/results.md quotes them.

    python bench/recompute_p.py > bench/results/recomputed-p.md

Tables 2/3: compare.json keeps every run's dev score but, before the seeds were written beside them, not
which seed gave it, so these tests are Welch's (unpaired), Holm-corrected over the four baselines.
Table 4: its CSV keeps the old uncorrected Welch p-values and no seed's score, so they are only
Holm-corrected over the four rows, not re-tested paired.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fsd.tuning.results.significance import beats_every, holm, versus_each  # noqa: E402

RESULTS = ROOT / "bench" / "results"
FOLDERS = ("sst2-compare-holdout", "stsb-compare-holdout")


def main() -> None:
    print("# p-values of the recorded comparisons, recomputed (`python bench/recompute_p.py`)\n")
    for folder in FOLDERS:
        saved = json.loads((RESULTS / folder / "compare.json").read_text())
        scores = {m: [r["eval/score"] for r in rows] for m, rows in saved["runs"].items()}
        tests = versus_each(scores, saved.get("seeds"))
        print(f"## {folder}\n\nTables 2/3, fsd against each baseline on eval/score (recorded p: "
              f"{saved['p_value']:.4f}, Welch against the best mean only):\n")
        print("| baseline | test | p uncorrected | p Holm |\n|---|---|---|---|")
        for t in tests:
            print(f"| {t.versus} | {t.test} | {t.p:.4f} | {t.p_holm:.4f} |")
        every = beats_every(tests)
        print(f"\nfsd better than every baseline: p = {'-' if every is None else f'{every:.4f}'}\n")
        path = RESULTS / folder / "table4-ablation.csv"
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["p (fsd better)"]]
        corrected = holm([float(r["p (fsd better)"]) for r in rows])
        print("Table 4, the recorded (uncorrected Welch) p-values Holm-corrected over the rows:\n")
        print("| row | p recorded | p Holm |\n|---|---|---|")
        for r, q in zip(rows, corrected, strict=True):
            print(f"| {r['method']} | {float(r['p (fsd better)']):.4f} | {q:.4f} |")
        print()


if __name__ == "__main__":
    main()
