"""The HTML report: self-contained (images inline), and, opened in a real headless chromium, its images load
and its tables are there."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from browser import open_in_chromium, parse_html
from conftest import ROOT

from fsd.tuning.results.html import Image, Section, Table, score_plot, write_html

WINNERS = [{"stage": "1-vkd", "score": 0.5523, "alpha": 0.5}, {"stage": "2-fsdi", "score": 0.5812, "beta": 0.01}]
COMPARISON = [{"method": "vkd", "mean": 0.55, "std": 0.01}, {"method": "fsd", "mean": 0.58, "std": 0.02}]


def _report(tmp_path: Path) -> Path:
    from matplotlib.image import imsave

    heat = tmp_path / "heat.png"
    imsave(heat, np.linspace(0, 1, 64).reshape(8, 8))
    scores = score_plot({"1-vkd": [0.5, 0.55, float("nan")], "2-fsdi": [0.58, 0.52], "3-mix": []},
                        tmp_path / "scores.png")
    return Path(write_html(tmp_path / "out" / "report.html", "RTE <fsd> search", [
        Section("Stage winners", text="The **best** trial of each stage, `eval/score`.\n\n- one\n- two",
                tables=[Table(WINNERS, caption="winners")]),
        {"heading": "Comparison", "tables": [COMPARISON],
         "images": [Image(heat, alt="CKA heat map"), Path(scores).read_bytes()]},
    ]))


def test_report_is_self_contained(tmp_path):
    text = _report(tmp_path).read_text()
    dom = parse_html(text)
    assert len(dom.images) == 2
    assert all(img["src"].startswith("data:image/png;base64,iVBORw0KGgo") for img in dom.images)
    assert [img["alt"] for img in dom.images] == ["CKA heat map", "image"]
    assert dom.tables == [["stage", "score", "alpha", "beta"], ["method", "mean", "std"]]
    assert not re.search(r"""(src|href)=["'](?!data:)""", text)  # nothing fetched from elsewhere
    assert "RTE &lt;fsd&gt; search" in text and "<strong>best</strong>" in text and "<code>eval/score</code>" in text
    assert "<li>one</li><li>two</li>" in text and "0.5523" in text


def test_report_refuses_an_image_that_is_not_png(tmp_path):
    with pytest.raises(ValueError, match="must be PNG"):
        write_html(tmp_path / "r.html", "t", [Section("s", images=[b"GIF89a..."])])


def test_score_plot_writes_a_png(tmp_path):
    from matplotlib.image import imread

    path = score_plot({"a": [0.1, 0.2, 0.3], "b": [0.4], "c": [0.35, 0.38]}, tmp_path / "s.png")
    assert imread(path).shape == (400, 530, 4)  # (1.1 * 3 + 2) x 4 inches at 100 dpi, RGBA


def test_report_in_headless_chromium(tmp_path):
    page = _report(tmp_path)
    dom = open_in_chromium(page, tmp_path / "profile")
    assert dom.body.get("data-images-total") == "2", dom.body
    assert dom.body.get("data-images-loaded") == "2"
    assert dom.tables == [["stage", "score", "alpha", "beta"], ["method", "mean", "std"]]


def test_paper_tables_render_in_headless_chromium(tmp_path):
    """Tables 4-8 as a comparison writes them (fsd/tuning/results/tables.py), with Figs. 5 and 6, in the report's
    sections: every table's columns and every figure reach the browser."""
    from matplotlib.image import imsave

    from fsd.tuning.results import tables
    from fsd.tuning.results.html import scatter_plot
    from fsd.tuning.results.report import paper_sections

    folder = tmp_path / "rte-compare"
    (folder / "analysis" / "fsd-0-abcd1234").mkdir(parents=True)
    rows = {"table4-ablation": tables.ablation({"fsd": [0.8, 0.82], "fsd w/o G": [0.78, 0.79]}),
            "table5-batch-size": tables.batch_stability({"fsdg": {8: [0.8], 16: [0.81]}}),
            "table6-7-structure": tables.structure({"fsd": {"analysis/cka_diagonal_mean": 0.8,
                                                            "analysis/reldiff_intra_cosine": 0.1}}, {"fsd": 0.8}),
            "table8-cost": tables.cost({"vkd": {"params": 1e6, "train_s": 1, "samples": 10, "eval_s": 1,
                                                "eval_rows": 10}})}
    for name, table_rows in rows.items():
        (folder / f"{name}.csv").write_text(tables.to_csv(table_rows))
    scatter_plot({"fsd": (0.8, 80.0), "vkd": (0.7, 79.0)}, folder / "fig5-cka-vs-score.png", "x", "y", "Fig. 5")
    scatter_plot({"fsd": (1.0, 2.0)}, folder / "fig6-relations-over-training.png", "x", "y", "Fig. 6")
    imsave(folder / "analysis" / "fsd-0-abcd1234" / "cka_heatmap.png", np.eye(7))
    page = Path(write_html(tmp_path / "report.html", "tables", paper_sections(folder)))
    text = page.read_text()
    assert all(caption in text for caption in tables.TABLES.values())
    dom = open_in_chromium(page, tmp_path / "profile")
    assert dom.body.get("data-images-total") == "3" and dom.body.get("data-images-loaded") == "3"
    headers = [h for t in dom.tables for h in t]
    for column in ("difference from fsd", "std across batch sizes", "average rank", "training time vs vkd"):
        assert column in headers, column


def test_the_report_shows_each_methods_lowest_seed_heatmap(tmp_path):
    from fsd.tuning.results.report import first_heatmaps

    for name in ("fsd-43-aaaa0000", "fsd-42-bbbb1111", "rkd-7-cccc2222", "ablation-fsdg-3-dddd3333", "stray"):
        (tmp_path / "analysis" / name).mkdir(parents=True)
        (tmp_path / "analysis" / name / "cka_heatmap.png").write_bytes(b"png")
    found = first_heatmaps(tmp_path)
    assert {m: (seed, p.parent.name) for m, (seed, p) in found.items()} == {
        "ablation-fsdg": (3, "ablation-fsdg-3-dddd3333"), "fsd": (42, "fsd-42-bbbb1111"), "rkd": (7, "rkd-7-cccc2222")}


def test_a_skipped_stage_shows_why_and_whose_winner_it_kept_not_a_score(tmp_path):
    from fsd.tuning.plan.ledger import Ledger
    from fsd.tuning.results.report import COLUMNS, stage_rows

    ledger = Ledger(tmp_path / "rte-fsd")
    ledger.data["search"] = {"task": "rte", "method": "fsd", "preset": "smoke", "select_on": "dev"}
    winner = {"alpha": 0.5, "gamma_g": 0.0, "lam": 0.0}
    ledger.data["stages"].update({
        "fsdg-coarse": {"status": "done", "score": 0.6, "winner": winner, "trials": 1},
        "fsdg-refine-g": {"status": "done", "score": 0.6, "winner": winner, "trials": 0, "carried_from": "fsdg-coarse",
                          "skipped": "fsdg-coarse's winner has gamma_g = 0, nothing to refine around"},
        "fsd": {"status": "not run", "skipped": "the budget is spent"}})
    rows = {r["stage"]: r for r in stage_rows("fsd", "rte", ledger)}
    assert rows["fsdg-coarse"]["dev score"] == "60.00"
    assert "dev score" not in rows["fsdg-refine-g"] and rows["fsdg-refine-g"]["trials"] == 0
    assert rows["fsdg-refine-g"]["winner"] == ("skipped: fsdg-coarse's winner has gamma_g = 0, nothing to refine "
                                               "around; fsdg-coarse's winner kept")
    assert rows["fsd"]["winner"] == "skipped: the budget is spent"
    assert "restoration precision" in COLUMNS and "CKA diagonal" in COLUMNS  # the columns are defined on the page


def test_the_report_shows_every_baselines_test_under_the_comparison(tmp_path):
    """The tests `--compare` writes under its table (compare.md) reach the report: one item per baseline, then
    the answer for every baseline."""
    from fsd.tuning.results import tables
    from fsd.tuning.results.compare import table
    from fsd.tuning.results.report import build_report

    folder = tmp_path / "rte-compare"
    folder.mkdir()
    runs = {m: [{"eval/score": s} for s in scores] for m, scores in
            {"vkd": [0.60, 0.62, 0.61], "pkd": [0.55, 0.56, 0.57], "fsd": [0.64, 0.66, 0.65]}.items()}
    markdown, rows, p = table("rte", runs, None, None, {m: [1, 2, 3] for m in runs})
    (folder / "compare.md").write_text(markdown + "\n")
    (folder / "compare.csv").write_text(tables.to_csv(rows))
    text = Path(build_report(str(tmp_path), "rte", f"sqlite:///{tmp_path}/mlflow.db")).read_text()
    items = re.findall(r"<li>(fsd &gt; \w+: paired t over 3 seeds, p = [\d.]+ \(uncorrected [\d.]+\))</li>", text)
    assert [i.split(":")[0] for i in items] == ["fsd &gt; vkd", "fsd &gt; pkd"]
    assert f"<p>fsd better than every baseline: p = {p:.4f} (the largest corrected p)</p>" in text
    assert "Holm-corrected over the comparisons of this table" in text


def _carrying_ledger(folder: Path):
    """An fsd search whose fsdg-coarse trial (50.92) lost to VKD's winner (69.27), carried in, and whose
    fsdg-refine-g was skipped, keeping it: both records hold copies of VKD's analysis and checkpoint."""
    from fsd.analysis import HEATMAP_FILE, METRICS_FILE
    from fsd.tuning.plan.ledger import Ledger

    analysis = folder / "stages" / "vkd-winner" / "analysis"
    analysis.mkdir(parents=True)
    from matplotlib.image import imsave

    imsave(analysis / HEATMAP_FILE, np.eye(6))
    (analysis / METRICS_FILE).write_text('{"task": "rte", "metrics": {}, "heatmap_shape": [6, 6]}')
    vkd = {"status": "done", "score": 0.6927, "trials": 2, "checkpoint": str(analysis.parent), "trained_in": "vkd",
           "winner": {"alpha": 0.2, "temperature": 10.0, "lr": 0.0002},
           "analysis": {"analysis/cka_diagonal_mean": 0.9, "analysis/reldiff_inter_euclidean": 0.12}}
    copy = {k: vkd[k] for k in ("score", "checkpoint", "analysis")}
    ledger = Ledger(folder / "rte-fsd")
    ledger.data["search"] = {"task": "rte", "method": "fsd", "preset": "smoke", "select_on": "dev"}
    ledger.data["stages"].update({
        "vkd": vkd,
        "fsdg-coarse": {"status": "done", "trials": 1, "trained_in": "vkd", "carried_from": "vkd", **copy,
                        "winner": {"gamma_g": 0.0, "lam": 0.0001}},
        "fsdg-refine-g": {"status": "done", "trials": 0, "trained_in": "vkd", "carried_from": "fsdg-coarse", **copy,
                          "winner": {"gamma_g": 0.0, "lam": 0.0001},
                          "skipped": "fsdg-coarse's winner has gamma_g = 0, nothing to refine around"}})
    ledger.save()
    return ledger


def test_a_carried_winner_is_named_as_carried_in_the_winners_table(tmp_path):
    """fsdg-coarse's own trial lost to VKD's winner: its row shows that student's score and says whose it is."""
    from fsd.tuning.results.report import stage_rows

    rows = {r["stage"]: r for r in stage_rows("fsd", "rte", _carrying_ledger(tmp_path))}
    assert rows["fsdg-coarse"]["dev score"] == "69.27"
    assert rows["fsdg-coarse"]["winner"] == "vkd's winner, carried: gamma_g=0.0, lam=0.0001"
    assert rows["vkd"]["winner"] == "alpha=0.2, temperature=10.0, lr=0.0002"  # its own trial: no word of carried
    assert rows["fsdg-refine-g"]["winner"].startswith("skipped: ")


def test_the_trial_plot_stars_a_carried_winner_at_its_score_not_on_the_stages_best_trial(tmp_path):
    from fsd.tuning.results.html import score_figure
    from fsd.tuning.results.report import carried_winners

    carried = carried_winners(_carrying_ledger(tmp_path))
    assert {s: (round(score, 2), source) for s, (score, source) in carried.items()} == {
        "fsdg-coarse": (69.27, "vkd"), "fsdg-refine-g": (69.27, "vkd")}
    fig = score_figure({"vkd": [69.27, 60.1], "fsdg-coarse": [50.92]}, carried={"fsdg-coarse": carried["fsdg-coarse"]})
    ax = fig.axes[0]
    stars = {c.get_gid(): c for c in ax.collections if (c.get_gid() or "").startswith("winner:")}
    assert stars["winner:vkd"].get_offsets()[0][1] == pytest.approx(69.27)
    assert stars["winner:fsdg-coarse"].get_offsets()[0][1] == pytest.approx(69.27)  # not 50.92, its own trial
    assert [t.get_text() for t in ax.get_xticklabels()] == ["vkd", "fsdg-coarse\n(vkd's winner)"]
    assert "winner carried in (no trial beat it)" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_stages_that_kept_another_stages_winner_have_no_relation_rows_or_heat_maps(tmp_path):
    """Their records hold copies of VKD's analysis and checkpoint: VKD's model is shown once, under vkd."""
    from fsd.tuning.results.report import heatmaps, relation_rows

    ledger = _carrying_ledger(tmp_path)
    assert [r["stage"] for r in relation_rows(ledger)] == ["vkd"]
    shown, single = heatmaps("fsd", ledger)
    assert [image.alt for image in shown] == ["fsd / vkd heat map"] and single == []


def test_the_column_definitions_are_a_list(tmp_path):
    from fsd.tuning.results.report import COLUMNS

    text = Path(write_html(tmp_path / "r.html", "t", [Section("s", text=COLUMNS)])).read_text()
    items = re.findall(r"<li>(.*?)</li>", text)
    assert [i.split(":")[0] for i in items] == ["winner", "restoration precision, recall and F1", "CKA diagonal",
                                                "trials", "seeds, sd"]
    assert "for STS-B, restoration pearson and spearman" in items[1]  # a wrapped line stays in its item
    assert len(re.findall(r"<p>", text)) == 1  # the lead-in alone


def test_the_report_is_one_file_with_its_figures_inline(tmp_path, monkeypatch):
    """build_report writes the page and nothing beside it (docs/search.md: "One self-contained file")."""
    from fsd.tuning.results import report

    _carrying_ledger(tmp_path)
    monkeypatch.setattr(report, "trial_scores", lambda uri, ledger: {"vkd": [69.27, 60.1], "fsdg-coarse": [50.92]})
    before = {p.name for p in tmp_path.iterdir()}
    page = Path(report.build_report(str(tmp_path), "rte", f"sqlite:///{tmp_path}/mlflow.db"))
    assert {p.name for p in tmp_path.iterdir()} - before == {"rte-report.html"}
    text = page.read_text()
    images = parse_html(text).images
    assert len(images) == 3 and all(i["src"].startswith("data:image/png;base64,") for i in images)  # plot, map, curve
    assert "a hollow star, an earlier stage&#x27;s winner" in text
    assert "Stages that kept an earlier stage&#x27;s winner (their winner cell names it): fsdg-coarse, " \
           "fsdg-refine-g;" in text


def test_the_search_page_says_the_heat_maps_size_on_sst2(tmp_path):
    """One cell per full dev mini-batch: SST-2's 872 dev rows in batches of 128 are 6 full ones and 104 rows,
    dropped; what the report falls back on for an analysis without its shape says the same."""
    import torch

    from fsd.analysis import cka_heatmap
    from fsd.data import split_rows
    from fsd.tuning.results.report import _batches

    dev = split_rows("sst2", None, None, None)[1]
    sizes = [min(128, dev - start) for start in range(0, dev, 128)]
    feats = [torch.randn(n, 2, 3, generator=torch.Generator().manual_seed(n)) for n in sizes]
    side = cka_heatmap(feats, [f.flip(-1) for f in feats]).shape[0]
    assert (dev, side, _batches({"task": "sst2"})) == (872, 6, 6)
    page = (ROOT / "docs" / "search.md").read_text()
    assert f"{side} x {side} on SST-2's {dev} rows" in " ".join(page.split())
