"""fsd/tuning/search/unreported.py: a checkpoint folder that no result of its trial names (Ray's copy into the
storage folder cut short) is passed over by the checks of stored files and removed before a stage restores;
a named one is still checked and kept. The end-to-end case (a real full disk) is the `long` test
`test_a_full_disk_stops_the_search_with_one_line_and_resume_finishes`."""

import json
from pathlib import Path

import pytest

from fsd.tuning.command.flags import UsageError
from fsd.tuning.command.stored import check_stored
from fsd.tuning.search.unreported import remove_unreported, reported, unreported


def _trial(experiment: Path, name: str, results: list[dict], cut_line: bool = False) -> Path:
    trial = experiment / name
    trial.mkdir(parents=True)
    text = "".join(json.dumps(r) + "\n" for r in results)
    if cut_line:
        text += '{"training_iteration": 3, "checkpoint_dir_name": "checkpoint_0000'  # the disk filled mid-line
    (trial / "result.json").write_text(text)
    return trial


def _checkpoint(trial: Path, name: str, whole: bool) -> Path:
    """A checkpoint as fsd-tune writes it, or as a cut copy leaves it: checkpoint.json whole (copied first),
    the student's config and the resume state empty."""
    folder = trial / name
    (folder / "student").mkdir(parents=True)
    (folder / "checkpoint.json").write_text(json.dumps({"epoch": 1, "step": 4, "config": {}}))
    (folder / "student" / "config.json").write_text(json.dumps({"model_type": "bert"}) if whole else "")
    return folder


@pytest.fixture
def stage(tmp_path):
    """A stage folder of task sst2 with two experiments: in each, a trial whose first checkpoint its results
    name and whose second was cut short before any result named it."""
    folder = tmp_path / "stages" / "sst2-vkd-0123456789abcdef"
    made = {}
    for experiment in ("sst2-vkd", "sst2-vkd-confirm"):
        trial = _trial(folder / experiment, "train_trial_1",
                       [{"training_iteration": 1, "checkpoint_dir_name": "checkpoint_000000"},
                        {"training_iteration": 2, "checkpoint_dir_name": None}], cut_line=True)
        made[experiment] = (_checkpoint(trial, "checkpoint_000000", whole=True),
                            _checkpoint(trial, "checkpoint_000001", whole=False))
    return tmp_path, folder, made


def test_the_names_come_from_whole_result_lines_only(tmp_path):
    trial = _trial(tmp_path, "t", [{"checkpoint_dir_name": "checkpoint_000002"}, {"checkpoint_dir_name": None},
                                   {"training_iteration": 3}, ["not", "an", "object"]], cut_line=True)
    assert reported(trial) == {"checkpoint_000002"}
    assert reported(tmp_path / "no-such-trial") == set()


def test_a_cut_copy_no_result_names_is_passed_over_and_a_named_one_still_checked(stage):
    storage, folder, made = stage
    assert unreported(folder) == sorted(cut for _, cut in made.values())
    check_stored(storage, "sst2", [], "file:///nowhere")  # the cut copies alone are damaged: passed over
    named, _ = made["sst2-vkd"]
    (named / "student" / "config.json").write_text("")  # the same damage in a checkpoint Ray took
    with pytest.raises(UsageError, match=r"checkpoint_000000/student/config.json cannot be read: it is empty"):
        check_stored(storage, "sst2", [], "file:///nowhere")


def test_a_restoring_stage_removes_only_its_own_experiments_cut_copies(stage):
    _, folder, made = stage
    gone = remove_unreported(folder / "sst2-vkd")
    assert gone == [made["sst2-vkd"][1]] and not made["sst2-vkd"][1].exists()
    assert made["sst2-vkd"][0].is_dir() and all(p.is_dir() for p in made["sst2-vkd-confirm"])
    assert remove_unreported(folder / "sst2-vkd") == []  # once only
