"""Whether a search folder can take a search (fsd/tuning/plan/resume.py), checked by the command before anything
runs and by the search again under its lock: no ledger for a new search; for --resume, one that agrees."""

import dataclasses

import pytest

from fsd.tuning.plan.ledger import Ledger
from fsd.tuning.plan.resume import Refused, check_resume
from fsd.tuning.plan.spec import SearchSpec, identity


def _spec(tmp_path) -> SearchSpec:
    return SearchSpec(task="rte", method="vkd", storage=str(tmp_path), mlflow_uri="", teacher="t", preset="smoke")


def test_a_new_search_needs_a_folder_without_a_ledger_and_resume_one_with_it(tmp_path):
    spec = _spec(tmp_path)
    check_resume(spec, resume=False)
    with pytest.raises(Refused, match=f"--resume: no search to resume in {spec.folder}; run without --resume"):
        check_resume(spec, resume=True)
    ledger = Ledger(spec.folder)
    ledger.data["search"] = identity(spec)
    ledger.save()
    check_resume(spec, resume=True)
    with pytest.raises(Refused, match=f"a search already exists in {spec.folder}: add --resume"):
        check_resume(spec, resume=False)


def test_a_resumed_search_agrees_with_the_stored_one_but_for_what_is_ignored(tmp_path):
    spec = _spec(tmp_path)
    ledger = Ledger(spec.folder)
    ledger.data["search"] = identity(spec)
    ledger.save()
    other = dataclasses.replace(spec, seeds=3)
    with pytest.raises(Refused, match="^--resume: seeds is 3 but the stored search used 1; use the same value"):
        check_resume(other, resume=True)
    with pytest.raises(Refused, match=f"^--compare: seeds is 3 but the stored search in {spec.folder} used 1"):
        check_resume(other, resume=True, flag="--compare")
    check_resume(other, resume=True, flag="--compare", ignore=("seeds",))
    with pytest.raises(Refused, match="--set gives lr=0.0001 but the stored search used nothing"):
        check_resume(dataclasses.replace(spec, extra={"lr": 1e-4}), resume=True)


def test_a_ledger_that_does_not_parse_is_refused_with_the_way_out(tmp_path):
    spec = _spec(tmp_path)
    Ledger(spec.folder).path.parent.mkdir(parents=True)
    Ledger(spec.folder).path.write_text("{cut")
    with pytest.raises(Refused, match="ledger.json cannot be read .*: restore it from a backup or use another"):
        check_resume(spec, resume=True)
