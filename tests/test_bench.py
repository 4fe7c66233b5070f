"""The benchmarks' code paths run (on a CPU with tiny models): a GPU session must not find them broken."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_and_reports_rate_and_memory_per_trial():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu", "--tiny",
                          "--steps", "1", "--warmup", "1", "--packs", "1,2", "--modes", "cache"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    rows = json.loads(out.strip().splitlines()[-1])
    assert [(r["mode"], r["trials"]) for r in rows] == [("cache", 1), ("cache", 2)]
    assert all(r["per_trial"] > 0 and abs(r["total"] - r["per_trial"] * r["trials"]) < 1e-6 for r in rows)
    assert "| cache | 2 |" in out


def test_the_qqp_scale_folders_are_qqp_files_that_load_as_qqp(glue_dir, tmp_path):
    """bench/qqp_scale.py's folders: QQP's columns, the asked number of training rows (a smaller folder is the
    first rows of a larger one), QQP's 40,430 dev rows, duplicates at QQP's share, each a reworded question."""
    from fsd.data import load_raw

    out = subprocess.run([sys.executable, str(ROOT / "bench" / "qqp_scale.py"), "build", "--glue-dir", glue_dir,
                          "--out", str(tmp_path), "--sizes", "300", "3000"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    said = json.loads(out.strip().splitlines()[-1])
    assert said["train"] == 3000 and said["dev"] == 40_430 and 20 < said["mean_tokens_per_pair"] < 45
    small, large = (load_raw("qqp", str(tmp_path / f"rows-{n}")) for n in (300, 3000))
    assert (small.num_rows["train"], large.num_rows["train"]) == (300, 3000)
    assert small.num_rows["validation"] == large.num_rows["validation"] == 40_430
    assert small["train"][:] == large["train"][:300]
    rows = large["train"]
    assert 0.32 < sum(rows["label"]) / len(rows) < 0.42
    for a, b, label in zip(rows["text_a"], rows["text_b"], rows["label"], strict=True):
        assert a.endswith("?") and b.endswith("?")
        if label == 1:  # one word dropped, the rest the same words
            assert len(b.split()) == len(a.split()) - 1 and set(b[:-1].split()) <= set(a[:-1].split())


def test_the_recomputed_p_values_the_docs_quote_come_from_the_raw_files():
    """bench/recompute_p.py, run on the committed raw files, prints bench/results/recomputed-p.md as committed;
    its STS-B answer checked by hand: scipy's Welch p against each baseline, Holm over four."""
    from scipy import stats

    out = subprocess.run([sys.executable, str(ROOT / "bench" / "recompute_p.py")], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out == (ROOT / "bench" / "results" / "recomputed-p.md").read_text()
    runs = json.loads((ROOT / "bench" / "results" / "stsb-compare-holdout" / "compare.json").read_text())["runs"]
    fsd = [r["eval/score"] for r in runs["fsd"]]
    raw = sorted(stats.ttest_ind(fsd, [r["eval/score"] for r in rows], equal_var=False, alternative="greater").pvalue
                 for m, rows in runs.items() if m != "fsd")
    largest = max(min(1.0, (4 - k) * p) for k, p in enumerate(raw))
    assert f"fsd better than every baseline: p = {largest:.4f}" in out.split("## stsb-compare-holdout")[1]


def test_the_hold_rate_counts_declared_winners_that_still_beat_their_runner_up(tmp_path):
    """bench/hold_rate.py: which stages it re-trains (own winner, a runner-up) and the rate over the declared."""
    sys.path.insert(0, str(ROOT / "bench"))
    from hold_rate import contests, hold_rate

    from fsd.tuning.plan.ledger import Ledger

    ledger = Ledger(tmp_path)
    clear = {"candidates": 2, "tied": 0, "untested": 0, "runner_up": {"values": {"alpha": 0.7}}}
    ledger.data["stages"] = {
        "vkd": {"status": "done", "winner": {"alpha": 0.2}, "evidence": clear},
        "fsdi": {"status": "done", "winner": {"beta": 1.0}, "evidence": {**clear, "tied": 1}},
        "fsdl": {"status": "done", "winner": {"alpha": 0.2}, "carried_from": "vkd", "evidence": clear},
        "fsdil": {"status": "done", "winner": {"beta": 3.0}, "evidence": {"candidates": 1, "tied": 0}}}
    found = contests(ledger)
    assert sorted(found) == ["fsdi", "vkd"] and found["fsdi"]["tied"] and not found["vkd"]["tied"]
    assert found["vkd"]["runner_up"] == {"alpha": 0.7}  # the winner's alpha replaced by the runner-up's
    ledger.data["stages"]["vkd"]["winner"] = {"alpha": 0.2, "temperature": 10.0, "method": "vkd"}
    assert contests(ledger)["vkd"]["runner_up"] == {"alpha": 0.7, "temperature": 10.0, "method": "vkd"}
    results = {"vkd": {"tied": False, "winner_scores": {"1001": 0.8, "1002": 0.7},
                       "runner_up_scores": {"1001": 0.78, "1002": 0.75}},
               "fsdi": {"tied": True, "winner_scores": {"1001": 0.8}, "runner_up_scores": {"1001": 0.7}}}
    out = hold_rate(results)
    assert out["declared"] == 1 and out["held"] == 0 and out["rate"] == 0.0  # 0.75 < 0.765: vkd did not hold
    assert [r["holds"] for r in out["rows"]] == [False, True]


@pytest.mark.long
def test_the_hold_rate_and_a_reseed_re_train_a_real_search_s_configurations(tmp_path, tiny_bert, glue_dir):
    """bench/hold_rate.py end to end on a smoke VKD search that confirmed its two points on a second seed: both
    re-trained on the fresh seeds as their own configurations (the runner-up's alpha, not the winner's), logged
    to the search's MLflow store, the rate written; then bench/reseed.py, a start point with values laid over."""
    import mlflow
    from conftest import rte_search_setup, tune_main_args

    setup = rte_search_setup(tmp_path, tiny_bert, glue_dir)
    storage = tmp_path / "search"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(tune_main_args(setup, storage, "vkd", "--confirm-top", "2", "--confirm-seeds", "1"),
                       capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    ledger = json.loads((storage / "rte-vkd" / "ledger.json").read_text())
    winner, evidence = ledger["stages"]["vkd"]["winner"], ledger["stages"]["vkd"]["evidence"]
    out = tmp_path / "hold.json"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "hold_rate.py"), str(storage), "--task", "rte",
                        "--method", "vkd", "--seeds", "2", "--out", str(out)],
                       capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    said = json.loads(out.read_text())
    assert said["seeds"] == [1001, 1002] and list(said["stages"]) == ["vkd"]
    row = said["stages"]["vkd"]
    assert sorted(row["winner_scores"]) == sorted(row["runner_up_scores"]) == ["1001", "1002"]
    assert said["declared"] == (0 if row["tied"] else 1) and json.loads(r.stdout.splitlines()[-1])["held"] \
        == said["held"]
    mlflow.set_tracking_uri(f"sqlite:///{storage}/mlflow.db")
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.stage = 'hold-rate'",
                              output_format="list")
    alphas = {(r.data.tags.get("method"), float(r.data.params["alpha"])) for r in runs if "alpha" in r.data.params}
    assert alphas == {("vkd-winner", winner["alpha"]), ("vkd-runner_up", evidence["runner_up"]["values"]["alpha"])}
    assert winner["alpha"] != evidence["runner_up"]["values"]["alpha"]
    # bench/reseed.py on the same search: the untuned fsdil start point with alpha and lr laid over it
    out = tmp_path / "reseed.json"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "reseed.py"), str(storage), "--task", "rte",
                        "--method", "vkd", "--as", "fsdil", "--label", "other", "--set", "alpha=0.3",
                        "--set", "lr=2e-4", "--seeds", "2", "--out", str(out)],
                       capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    said = json.loads(out.read_text())
    assert said["config"]["method"] == "fsdil" and said["config"]["alpha"] == 0.3 and said["config"]["lr"] == 2e-4
    assert said["config"]["teacher"] == winner["teacher"]
    assert sorted(said["scores"]) == ["1001", "1002"]
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.stage = 'reseed'",
                              output_format="list")
    assert {(r.data.params.get("method"), r.data.params.get("alpha")) for r in runs if "seed" in r.data.params} \
        == {("fsdil", "0.3")}


def test_the_noise_table_counts_ties_and_verdicts_from_the_raw_files():
    """bench/noise_table.py: the recorded grid's exact ties at the top of a stage (5 of its 9, issue 34) and its
    samples and wall time; a noise-aware ledger's stages as declared, tied, or handed on."""
    sys.path.insert(0, str(ROOT / "bench"))
    from noise_table import recorded_grid, verdicts

    grid = recorded_grid()
    assert (grid["declared"], grid["tied"], grid["samples"]) == (4, 5, 308_800)
    assert 117 * 60 < grid["search_s"] < 118 * 60
    runner_up = {"runner_up": {"values": {}}, "candidates": 2}
    ledger = {"stages": {
        "vkd": {"evidence": {**runner_up, "tied": 1, "untested": 0}},
        "fsdi": {"evidence": {**runner_up, "tied": 0, "untested": 0}},
        "fsdl": {"evidence": {**runner_up, "tied": 0, "untested": 1}},  # nothing tested: no verdict either way
        "fsdil": {"carried_from": "fsdl", "evidence": {**runner_up, "tied": 0, "untested": 0}},
        "fsdg-refine-lam": {"skipped": "lam = 0"}, "memory": {}}}
    assert verdicts(ledger) == (1, 2, 2)
