"""Reading every GLUE task from a local folder, the tokenised cache, and batching."""

import os
from pathlib import Path

import pytest
import torch

from fsd.data import Batches, DataError, Holdout, cache_key, load_raw, load_task_data
from fsd.tasks import get_task

# (task, train rows, dev rows) as the shared folder's README states them
REAL = [("cola", 8551, 1043), ("sst2", 67349, 872), ("mrpc", 3667, 408), ("stsb", 5749, 1500),
        ("rte", 2490, 277), ("wnli", 635, 71)]


@pytest.mark.parametrize("task,n_train,n_dev", REAL)
def test_real_tasks_load_every_row(glue_dir, task, n_train, n_dev):
    data = load_raw(task, glue_dir)
    assert len(data["train"]) == n_train
    assert len(data["validation"]) == n_dev
    spec = get_task(task)
    labels = set(data["train"]["label"])
    if spec.is_regression:
        assert min(labels) >= 0 and max(labels) <= 5
    else:
        assert labels == set(range(spec.num_labels))
    assert ("text_b" in data["train"].column_names) == (len(spec.text_columns) == 2)


def test_mrpc_bom_and_rte_string_labels(glue_dir):
    mrpc = load_raw("mrpc", glue_dir)["validation"][0]
    assert mrpc["label"] == 1 and mrpc["text_a"].startswith("He said the foodservice pie")
    rte = load_raw("rte", glue_dir)["validation"][0]
    assert rte["label"] == get_task("rte").labels.index("not_entailment")


def test_cola_has_no_header_and_keeps_every_row(glue_dir):
    first = load_raw("cola", glue_dir)["validation"][0]
    assert first == {"text_a": "The sailors rode the breeze clear of the rocks.", "label": 1}


def test_qnli_dev_only_folder_says_what_is_missing(glue_dir):
    with pytest.raises(DataError, match=r"QNLI/train.tsv not found"):
        load_raw("qnli", glue_dir)


def _write(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join("\t".join(r) for r in [header, *rows]) + "\n")


def test_qqp_skips_malformed_lines(tmp_path, caplog):
    header = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
    rows = [["1", "1", "2", "How do I cook rice?", "What is the way to cook rice?", "1"],
            ["2", "3", "4", 'A "quoted" question?', "Unrelated?", "0"],
            ["3", "5", "6", "a line with a lost field", "1"]]  # malformed: 5 fields
    for split in ("train", "dev"):
        _write(tmp_path / "QQP" / f"{split}.tsv", header, rows)
    data = load_raw("qqp", str(tmp_path))
    assert data["train"]["label"] == [1, 0]
    assert data["train"]["text_a"][1] == 'A "quoted" question?'  # quoting off: quotes are text
    assert "skipped 1 malformed" in caplog.text


def test_mnli_matched_and_mismatched(tmp_path):
    base = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
            "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]

    def row(i, label, extra):
        return [str(i), "0", "0e", "fiction", "(x)", "(y)", "(X)", "(Y)", f"premise {i}", f"hypothesis {i}",
                *([label] * extra), label]

    _write(tmp_path / "MNLI" / "train.tsv", [*base, "label1", "gold_label"],
           [row(0, "neutral", 1), row(1, "contradiction", 1), row(2, "entailment", 1)])
    dev_header = [*base, *[f"label{i}" for i in range(1, 6)], "gold_label"]
    _write(tmp_path / "MNLI" / "dev_matched.tsv", dev_header, [row(3, "entailment", 5)])
    _write(tmp_path / "MNLI" / "dev_mismatched.tsv", dev_header, [row(4, "contradiction", 5), row(5, "neutral", 5)])
    data = load_raw("mnli", str(tmp_path))
    assert set(data) == {"train", "validation_matched", "validation_mismatched"}
    assert data["train"]["label"] == [1, 2, 0]
    assert data["validation_mismatched"]["text_b"] == ["hypothesis 4", "hypothesis 5"]


def test_label_outside_the_task_set_names_file_and_line(tmp_path):
    _write(tmp_path / "RTE" / "train.tsv", ["index", "sentence1", "sentence2", "label"],
           [["0", "a", "b", "entailment"], ["1", "c", "d", "maybe"]])
    _write(tmp_path / "RTE" / "dev.tsv", ["index", "sentence1", "sentence2", "label"], [["0", "a", "b", "entailment"]])
    with pytest.raises(DataError, match=r"RTE/train.tsv:3: label 'maybe'"):
        load_raw("rte", str(tmp_path))


def test_wrong_columns_and_empty_file(tmp_path):
    _write(tmp_path / "RTE" / "train.tsv", ["index", "premise", "hypothesis", "label"], [["0", "a", "b", "entailment"]])
    with pytest.raises(DataError, match="no column 'sentence1'"):
        load_raw("rte", str(tmp_path))
    (tmp_path / "RTE" / "train.tsv").write_text("")
    with pytest.raises(DataError, match="is empty"):
        load_raw("rte", str(tmp_path))


def test_tokenised_cache_is_reused_and_keyed(glue_dir, minilm_path, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_path)
    data = load_task_data("wnli", tok, 64, glue_dir, str(tmp_path), max_train_samples=10, max_eval_samples=5)
    assert len(data["train"]) == 10 and len(data["validation"]) == 5
    assert max(len(x) for x in data["train"]["input_ids"]) <= 64
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert folders == [cache_key(get_task("wnli"), tok, 64, glue_dir)]
    again = load_task_data("wnli", tok, 64, glue_dir, str(tmp_path))  # from the cache, whole
    assert len(again["train"]) == 635 and again["train"][0]["input_ids"] == data["train"][0]["input_ids"]
    load_task_data("wnli", tok, 32, glue_dir, str(tmp_path), max_train_samples=2)
    assert len(list(tmp_path.iterdir())) == 2  # another length, another cache
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_the_rows_key_follows_the_files_contents_not_their_place_or_time(glue_dir, tmp_path):
    """A copied GLUE folder (other path, new times) is the same data; one changed row is not."""
    import shutil

    from fsd.data import source_fingerprint

    task = get_task("wnli")
    copy = tmp_path / "copy"
    shutil.copytree(Path(glue_dir) / task.folder, copy / task.folder)  # copytree's copy2 keeps times: reset
    for f in (copy / task.folder).iterdir():
        os.utime(f, ns=(1_000_000_000, 1_000_000_000))
    assert source_fingerprint(task, str(copy)) == source_fingerprint(task, glue_dir)
    train = copy / task.folder / "train.tsv"
    original = train.read_text()
    lines = original.splitlines(keepends=True)
    row, label = lines[-1].rstrip("\n").rsplit("\t", 1)
    lines[-1] = f"{row}\t{1 - int(label)}\n"  # the last row's label flipped
    train.write_text("".join(lines))
    assert train.read_text() != original
    assert source_fingerprint(task, str(copy)) != source_fingerprint(task, glue_dir)


def _split(lengths):
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": [[101] + [7] * (n - 2) + [102] for n in lengths],
                              "token_type_ids": [[0] * n for n in lengths],
                              "label": [i % 2 for i in range(len(lengths))]})


def test_batches_pad_per_batch_or_to_max():
    split = _split([5, 9, 3, 4])
    dyn = list(Batches(split, 2, pad_id=0).epoch(0))
    assert [b["input_ids"].shape for b in dyn] == [torch.Size([2, 9]), torch.Size([2, 4])]
    assert dyn[0]["attention_mask"].sum(1).tolist() == [5, 9]
    assert dyn[1]["input_ids"][0, 3].item() == 0  # padded with the pad id
    fixed = list(Batches(split, 2, pad_id=0, pad_to=16).epoch(0))
    assert all(b["input_ids"].shape[1] == 16 for b in fixed)


def test_shuffle_depends_only_on_seed_and_epoch():
    split = _split([4] * 50)
    a = Batches(split, 8, pad_id=0, shuffle=True, seed=3)
    b = Batches(split, 8, pad_id=0, shuffle=True, seed=3)
    assert a.batch_rows(2) == b.batch_rows(2)
    assert a.batch_rows(1) != a.batch_rows(2)
    assert sorted(sum(a.batch_rows(1), [])) == list(range(50))


def test_length_grouped_batches_cover_every_row_once_and_pad_less():
    import random

    rng = random.Random(0)
    lengths = [rng.randint(3, 120) for _ in range(1000)]
    split = _split(lengths)
    plain = Batches(split, 16, pad_id=0, shuffle=True, seed=1)
    grouped = Batches(split, 16, pad_id=0, shuffle=True, seed=1, group_by_length=True)
    for epoch in (0, 1):
        rows = grouped.batch_rows(epoch)
        assert sorted(sum(rows, [])) == list(range(1000))
        assert sum(len(r) < 16 for r in rows) == 1  # one short batch, as without grouping
    assert grouped.batch_rows(0) == Batches(split, 16, pad_id=0, shuffle=True, seed=1,
                                            group_by_length=True).batch_rows(0)
    assert grouped.batch_rows(0) != grouped.batch_rows(1)

    def padded_tokens(b: Batches) -> int:
        return sum(len(r) * max(lengths[i] for i in r) for r in b.batch_rows(0))

    # Sorted windows of similar lengths: far fewer PAD tokens than random batches.
    assert padded_tokens(grouped) < 0.7 * padded_tokens(plain)
    assert padded_tokens(grouped) >= sum(lengths)
    # Batches are shuffled across windows: the first batch is not always the longest one.
    widths = [max(lengths[i] for i in r) for r in grouped.batch_rows(0)]
    assert widths != sorted(widths, reverse=True)


def test_a_pass_by_length_sees_every_row_once_window_by_window():
    import random

    rng = random.Random(1)
    lengths = [rng.randint(3, 120) for _ in range(1000)]
    b = Batches(_split(lengths), 16, pad_id=0)
    rows = list(b.by_length())
    flat = sum(rows, [])
    assert sorted(flat) == list(range(1000))
    window = 16 * Batches.GROUP_WINDOW
    for start in range(0, 1000, window):  # each window holds its own rows, shortest first
        part = flat[start:start + window]
        assert sorted(part) == list(range(start, min(start + window, 1000)))
        assert [lengths[i] for i in part] == sorted(lengths[i] for i in part)
    in_order = sum(len(r) * max(lengths[i] for i in r) for r in b.batch_rows())
    assert sum(len(r) * max(lengths[i] for i in r) for r in rows) < 0.7 * in_order


# ---------------------------------------------------------------------------------------------- the holdout
def test_holdout_is_disjoint_fixed_by_its_seed_and_stratified(glue_dir):
    labels = load_raw("mrpc", glue_dir)["train"]["label"]
    train, held = Holdout(300, seed=7).split(labels, regression=False)
    assert len(held) == 300 and len(train) == len(labels) - 300
    assert not set(train) & set(held) and sorted(train + held) == list(range(len(labels)))
    assert Holdout(300, seed=7).split(labels, regression=False) == (train, held)
    assert Holdout(300, seed=8).split(labels, regression=False)[1] != held
    # Stratified: the holdout's positive share is the training split's, to within one row.
    share = sum(labels) / len(labels)
    assert abs(sum(labels[i] for i in held) - 300 * share) <= 1
    # An unstratified draw of 300 rows misses that share by more than one row most of the time.
    rng = torch.Generator().manual_seed(0)
    misses = sum(abs(sum(labels[i] for i in torch.randperm(len(labels), generator=rng)[:300].tolist())
                     - 300 * share) > 1 for _ in range(20))
    assert misses >= 10


def test_holdout_rows_leave_the_training_split_before_its_limit(glue_dir, minilm_path, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_path)
    cache = str(tmp_path / "cache")
    plain = load_task_data("rte", tok, 64, glue_dir, cache, max_train_samples=500)
    data = load_task_data("rte", tok, 64, glue_dir, cache, max_train_samples=500, holdout=Holdout(200, 3))
    assert len(data["train"]) == 500 and len(data["holdout"]) == 200 and "holdout" not in plain
    assert len(data["validation"]) == len(plain["validation"])
    whole = load_task_data("rte", tok, 64, glue_dir, cache)["train"]
    rest, held = Holdout(200, 3).split(whole["label"], regression=False)
    assert data["holdout"]["input_ids"] == [whole[i]["input_ids"] for i in held]
    assert data["train"]["input_ids"] == [whole[i]["input_ids"] for i in rest[:500]]
    # Regression: a plain seeded draw.
    labels = load_raw("stsb", glue_dir)["train"]["label"]
    a = Holdout(100, 1).split(labels, regression=True)
    assert a == Holdout(100, 1).split(labels, regression=True) and len(a[1]) == 100


def test_holdout_that_cannot_be_drawn_says_why():
    with pytest.raises(DataError, match="leaves none of the 10 training rows"):
        Holdout(10, 0).split([0, 1] * 5, regression=False)
    with pytest.raises(DataError, match="cannot be stratified"):
        Holdout(1, 0).split([0, 1] * 5, regression=False)
