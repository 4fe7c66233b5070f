import pytest

from fsd.tasks import TASKS, get_task


def test_nine_tasks_with_paper_constants():
    assert sorted(TASKS) == sorted(["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"])
    for name, task in TASKS.items():
        assert task.teacher_lr == (5e-5 if name in ("stsb", "wnli") else 2e-5)
        assert task.memory_size == (300 if name in ("qqp", "mnli") else 100)


@pytest.mark.parametrize("name,labels,score", [
    ("cola", 2, "mcc"), ("sst2", 2, "accuracy"), ("mrpc", 2, "f1_acc"), ("stsb", 1, "pearson_spearman"),
    ("qqp", 2, "f1_acc"), ("mnli", 3, "accuracy"), ("qnli", 2, "accuracy"), ("rte", 2, "accuracy"),
    ("wnli", 2, "accuracy"),
])
def test_labels_and_primary_score(name, labels, score):
    task = get_task(name)
    assert task.num_labels == labels
    assert task.score == score
    assert task.is_regression == (name == "stsb")


def test_mnli_has_matched_and_mismatched_dev():
    assert get_task("mnli").dev_splits == ("validation_matched", "validation_mismatched")


def test_names_are_forgiving_and_unknown_names_list_the_valid_ones():
    assert get_task("SST-2").name == "sst2"
    with pytest.raises(ValueError, match="choose one of cola, sst2"):
        get_task("squad")
