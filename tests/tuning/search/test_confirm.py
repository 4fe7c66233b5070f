"""A stage that confirms its leading points on more seeds, end to end on real Ray and MLflow: the confirmation
trials are ordinary trials (nested under their stage, one MLflow run each, counted by --dry-run), the winner
is named with its evidence, and a driver killed during the confirmation resumes to the same answer. Three grid
points, two of them leading: the confirmation is an experiment of its own; a stage whose every point leads runs
its confirmation seeds in its own experiment, to the same scores."""

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, rte_search_setup, tune_main_args

pytestmark = pytest.mark.slow
CONFIRM = ("--confirm-top", "2", "--confirm-seeds", "2", "--grid", "alpha=0.2,0.5,0.7")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_bert, glue_dir):
    return rte_search_setup(tmp_path_factory.mktemp("confirm"), tiny_bert, glue_dir)


def _args(setup, storage, *extra):
    return tune_main_args(setup, storage, "vkd", *CONFIRM, *extra)


def _env(**more):
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **more}


def _stage(storage):
    return json.loads((Path(storage) / "rte-vkd" / "ledger.json").read_text())["stages"]["vkd"]


def _trial_runs(storage, stage="vkd"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{storage}/mlflow.db")
    exp = client.get_experiment_by_name("rte")
    return [r for r in client.search_runs([exp.experiment_id], max_results=1000) if "ray_trial_id" in r.data.tags
            and r.data.tags.get("stage") == stage]


@pytest.fixture(scope="module")
def confirmed(setup):
    storage = setup[0] / "a"
    r = subprocess.run(_args(setup, storage, "--fresh-seeds", "2"), capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return storage, r.stdout + r.stderr


def test_dry_run_counts_the_confirmation_trials(setup, tmp_path):
    r = subprocess.run(_args(setup, tmp_path / "dry", "--dry-run", "--fresh-seeds", "3"), capture_output=True,
                       text=True, env=_env())
    assert r.returncode == 0, r.stderr[-2000:]
    assert "fresh seeds: at most 1 configuration(s) x 3 seeds = 3 runs after the search, 192 training samples" \
        in r.stdout
    assert "| vkd | vkd | 3 + 4 confirming | grid | 64 | 448 |" in r.stdout  # 3 points + 2 leaders x 2 seeds
    assert "ranking split: dev, 64 rows" in r.stdout


def test_a_confirmed_stage_names_its_winner_with_its_evidence(confirmed):
    storage, out = confirmed
    record = _stage(storage)
    assert record["trials"] == 7 and record["confirm_trials"] == 4
    assert sorted(record["seed_scores"]) == ["42", "43", "44"]  # the search's seed, then two more
    assert record["score"] == pytest.approx(sum(record["seed_scores"].values()) / 3)
    evidence = record["evidence"]
    assert evidence["n"] == 3 and evidence["candidates"] == 2 and evidence["diff"]["n"] == 3
    assert evidence["rule"] in ("clear", "tie settled by the higher seed mean",
                                "tie settled by the point nearest the previous stage's winner",
                                "tie settled by the values' sort order")
    # Ranked on RTE's 64 dev rows: a lead under one accuracy's binomial error there is a tie.
    from fsd.tuning.plan.evidence import binomial_error

    assert evidence["margin"] == pytest.approx(binomial_error(evidence["mean"], 64))
    d = evidence["diff"]
    assert (evidence["tied"] == 1) == (abs(d["diff"]) < evidence["margin"]
                                       or (d["lo"] is not None and d["lo"] <= 0 <= d["hi"]))
    assert "stage vkd: confirming its 2 leading points on 2 more seeds (43, 44): 4 trials" in out
    assert "stage vkd: dev " in out and "runner-up" in out and "paired difference" in out
    assert "| stage | winner | dev score | seeds | sd | vs runner-up [95%] | tied | paper |" in out
    # One MLflow run per trial, the confirmation's tagged, all nested under the stage's run.
    runs = _trial_runs(storage)
    assert len(runs) == 7 and len({r.data.tags["ray_trial_id"] for r in runs}) == 7
    assert sum(r.data.tags.get("confirm") == "true" for r in runs) == 4
    assert len({r.data.tags["mlflow.parentRunId"] for r in runs}) == 1
    seeds = sorted(int(r.data.params["seed"]) for r in runs if r.data.tags.get("confirm") == "true")
    assert seeds == [43, 43, 44, 44]
    # What stays on disk: the winner's checkpoint alone, in whichever experiment trained it.
    kept = list((storage / "stages").glob("*/rte-vkd*/*/checkpoint_*"))
    assert [str(k) for k in kept] == [record["checkpoint"]]


def test_the_confirmation_seeds_are_ordinary_trials_whose_scores_match_their_runs(confirmed):
    storage, _ = confirmed
    record = _stage(storage)
    winner_alpha = record["winner"]["alpha"]
    by_seed = {int(r.data.params["seed"]): r.data.metrics["eval/score"] for r in _trial_runs(storage)
               if float(r.data.params["alpha"]) == winner_alpha}
    assert {str(k): v for k, v in by_seed.items()} == pytest.approx(record["seed_scores"])


@pytest.mark.long
def test_killed_during_the_confirmation_resumes_to_the_same_answer(setup, confirmed):
    storage = setup[0] / "b"
    # mid-stage: the driver dies at the fourth trial result, the first of the confirmation (3 points ran first).
    killed = subprocess.run(_args(setup, storage), capture_output=True, text=True,
                            env=_env(FSD_KILL_AT="mid-stage:4", RAY_DEDUP_LOGS="0"))
    assert killed.returncode == -signal.SIGKILL
    assert "confirming its 2 leading points" in killed.stdout + killed.stderr
    resumed = subprocess.run(_args(setup, storage, "--resume"), capture_output=True, text=True, env=_env())
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    first, again = _stage(confirmed[0]), _stage(storage)
    assert again["seed_scores"] == pytest.approx(first["seed_scores"])
    for key in ("mean", "sd", "n", "candidates", "tied", "rule"):
        assert again["evidence"][key] == pytest.approx(first["evidence"][key])
    assert again["evidence"]["diff"] == pytest.approx(first["evidence"]["diff"])
    assert {k: v for k, v in again["winner"].items() if k != "storage"} == \
        {k: v for k, v in first["winner"].items() if k != "storage"}
    runs = _trial_runs(storage)
    assert len(runs) == 7 and len({r.data.tags["ray_trial_id"] for r in runs}) == 7  # nothing ran twice


def test_fresh_seeds_retrain_the_searchs_best_on_seeds_no_search_used(confirmed):
    storage, out = confirmed
    ledger = json.loads((Path(storage) / "rte-vkd" / "ledger.json").read_text())
    fresh = ledger["fresh"]
    assert fresh["seeds"] == [1001, 1002] and list(fresh["runs"]) == ["the search's best"]  # a vkd search
    assert sorted(fresh["runs"]["the search's best"]["scores"]) == ["1001", "1002"]
    runs = _trial_runs(storage, stage="fresh")
    assert sorted(int(r.data.params["seed"]) for r in runs) == [1001, 1002]
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {ledger["search_run_id"]}  # under the search
    assert "was the search worth it: dev x 100 on 2 seeds no search used (1001-1002)" in out


def test_a_stage_whose_every_point_leads_confirms_them_in_its_own_experiment(setup, confirmed):
    """Two points and two leaders: the confirmation seeds are known before a trial runs, so the stage runs every
    point on all three seeds in one experiment (a slot's worker serves its next trial); the winner is named by
    the same rule, and every point and seed both searches trained scored the same."""
    storage = setup[0] / "at-once"
    r = subprocess.run(tune_main_args(setup, storage, "vkd", "--confirm-top", "2", "--confirm-seeds", "2", "--grid",
                                      "alpha=0.2,0.7"), capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert ("stage vkd: 6 trials (grid), up to 64 training samples each; its 2 points are its leading points, "
            "confirmed at once: each on seeds 42, 43, 44") in out
    assert "confirming its" not in out
    record = _stage(storage)
    assert record["trials"] == 6 and record["confirm_trials"] == 4
    assert sorted(record["seed_scores"]) == ["42", "43", "44"] and record["evidence"]["candidates"] == 2
    assert not list((storage / "stages").glob("*/rte-vkd-confirm"))  # no second experiment
    (experiment,) = (storage / "stages").glob("*/rte-vkd")
    pids = {json.loads((t / "timeline.json").read_text())["pid"] for t in experiment.glob("train_trial_*")}
    assert len(list(experiment.glob("train_trial_*"))) == 6 and len(pids) <= 2  # 2 slots' workers, reused
    runs = _trial_runs(storage)
    assert len(runs) == 6 and len({r.data.tags["mlflow.parentRunId"] for r in runs}) == 1
    # The same (point, seed) scored what it scored in the three-point search.
    def scores(path):
        return {(float(r.data.params["alpha"]), int(r.data.params["seed"])): r.data.metrics["eval/score"]
                for r in _trial_runs(path)}

    here, there = scores(storage), scores(confirmed[0])
    shared = here.keys() & there.keys()
    assert {(0.2, 42), (0.7, 42)} <= shared and all(here[k] == there[k] for k in shared)
