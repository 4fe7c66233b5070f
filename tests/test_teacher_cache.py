"""The teacher-output cache: same losses and gradients as the live teacher, written once, never stale,
and a clear fall-back to the live teacher when it does not fit the disk budget."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import fsd.cache_pass as cache_pass
import fsd.teacher_source as teacher_source
from fsd.config import DistillConfig
from fsd.data import Batches, cache_key, load_task_data
from fsd.loop import make_batches
from fsd.models import build_student, load_tokenizer
from fsd.objectives import Setup, build_objective
from fsd.tasks import get_task
from fsd.teacher_source import TeacherSource, open_cache
from fsd.train import distill, make_loss_fn

CACHED_METHODS = ["vkd", "pkd", "rkd", "minilm", "fsdi", "fsdl", "fsd"]


def _config(tiny_bert, glue_dir, storage, **kw):
    return DistillConfig.from_dict({
        "task": "rte", "teacher": tiny_bert, "student_layers": 2, "epochs": 1, "batch_size": 8,
        "max_train_samples": 24, "max_eval_samples": 16, "max_seq_len": 64, "data_dir": glue_dir,
        "storage": str(storage), "memory_size": 4, "beta": 0.5, "lr": 1e-3, **kw})


def _loss_and_grads(config):
    """Loss parts and student gradients on the first training batch, live teacher or cache per config."""
    task = get_task(config.task)
    tok = load_tokenizer(config.teacher)
    train, _, _ = make_batches(config.data, tok, config.storage)
    objective = build_objective(config, task.is_regression)
    key = cache_key(task, tok, config.max_seq_len, config.data_dir)
    source = TeacherSource.open(config, objective, train, key, torch.device("cpu"))
    teacher, cache = source.model, source.cache
    torch.manual_seed(0)
    attn = "eager" if objective.needs_attentions else "sdpa"
    student = build_student(config.teacher, config.student_layers, task.num_labels, attn)
    objective.setup(Setup(student, config.max_seq_len, torch.ones(4, 64 * 32) if objective.needs_memory else None))
    loss, parts = make_loss_fn(objective, source, student)(next(train.epoch(0)))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
    return teacher, cache, {k: float(v.detach()) for k, v in {"loss": loss, **parts}.items()}, grads


@pytest.mark.parametrize("method", CACHED_METHODS)
def test_cache_gives_the_live_teachers_losses_and_gradients(method, tiny_bert, glue_dir, tmp_path):
    live_teacher, live_cache, live, live_grads = _loss_and_grads(
        _config(tiny_bert, glue_dir, tmp_path, method=method, teacher_cache=False))
    assert live_teacher is not None and live_cache is None
    for dtype, tol in (("float32", 1e-5), ("float16", 1e-3)):
        teacher, cache, cached, grads = _loss_and_grads(
            _config(tiny_bert, glue_dir, tmp_path, method=method, cache_dtype=dtype))
        assert teacher is None and cache is not None  # no teacher held: the batches carry its outputs
        assert cached.keys() == live.keys()
        for k in live:
            assert cached[k] == pytest.approx(live[k], rel=tol, abs=tol), (dtype, k)
        for n in live_grads:
            torch.testing.assert_close(grads[n], live_grads[n], rtol=tol * 10, atol=tol * 10)


def test_unmasked_structures_run_the_teacher_live(tiny_bert, glue_dir, tmp_path):
    teacher, cache, _, _ = _loss_and_grads(_config(tiny_bert, glue_dir, tmp_path, method="fsd", structure_mask=False,
                                                    pad_to_max=True))
    assert teacher is not None and cache is None
    assert not (tmp_path / "cache").exists()


def test_minilm_under_the_cache_runs_only_the_last_self_attention(tiny_bert, glue_dir, tmp_path):
    """Unmasked or not (MiniLM's losses always mask PAD), MiniLM reads the cached logits and features and
    keeps one module of the teacher: its last layer's self-attention."""
    for mask in (True, False):
        teacher, cache, _, _ = _loss_and_grads(_config(tiny_bert, glue_dir, tmp_path / str(mask), method="minilm",
                                                       structure_mask=mask, pad_to_max=not mask))
        assert teacher is None and cache is not None and cache.fields == ("logits", "penultimate")
    config = _config(tiny_bert, glue_dir, tmp_path, method="minilm")
    task = get_task("rte")
    tok = load_tokenizer(tiny_bert)
    train, _, _ = make_batches(config.data, tok, config.storage)
    source = TeacherSource.open(config, build_objective(config), train, cache_key(task, tok, 64, glue_dir),
                                torch.device("cpu"))
    layers = {type(m).__name__ for m in source.attention.modules()}
    assert "BertSelfAttention" in layers and "BertLayer" not in layers and "BertEmbeddings" not in layers


def test_distill_with_and_without_cache_gives_the_same_run(tiny_bert, glue_dir, tmp_path):
    def run(**kw):
        return [r.metrics for r in distill(_config(tiny_bert, glue_dir, tmp_path, method="fsd", epochs=2,
                                                    cache_dtype="float32", **kw))]

    live, cached = run(teacher_cache=False), run()
    for a, b in zip(live, cached, strict=True):
        for k in a:
            if k.startswith(("train/", "eval/")) and "per_s" not in k:
                assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-5), k
    (folder,) = (tmp_path / "cache").iterdir()
    assert sorted(p.name for p in folder.iterdir()) == ["key.json", "logits.npy", "penultimate-float32.npy"]


def _open(config):
    task = get_task(config.task)
    tok = load_tokenizer(config.teacher)
    train, _, _ = make_batches(config.data, tok, config.storage)
    passes = []
    real = teacher_source.load_teacher

    def load(*args, **kw):
        passes.append(1)
        return real(*args, **kw)

    key = cache_key(task, tok, config.max_seq_len, config.data_dir)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(teacher_source, "load_teacher", load)
        cache = open_cache(config, ("logits", "penultimate"), train, key, torch.device("cpu"), task.num_labels)
    return cache, len(passes)


def test_cache_is_written_once_and_a_changed_teacher_or_tokenisation_invalidates_it(tiny_bert, glue_dir, tmp_path):
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_bert, teacher)
    config = _config(str(teacher), glue_dir, tmp_path / "runs", method="fsd")
    first, passes = _open(config)
    assert passes == 1
    again, passes = _open(config)
    assert passes == 0 and again.folder == first.folder  # read, not recomputed
    assert not [p for p in first.folder.iterdir() if p.name.endswith(".tmp")]

    longer, passes = _open(config.replace(max_seq_len=48))  # another tokenisation: other rows, other cache
    assert passes == 1 and longer.folder != first.folder

    logits_before = np.load(first.folder / "logits.npy")
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(teacher)
    with torch.no_grad():
        model.classifier.weight.mul_(-1.0)  # same shapes, different teacher
    model.save_pretrained(teacher)
    changed, passes = _open(config)
    assert passes == 1 and changed.folder != first.folder
    assert not np.allclose(np.load(changed.folder / "logits.npy"), logits_before)


def test_half_written_files_are_never_read(tiny_bert, glue_dir, tmp_path):
    config = _config(tiny_bert, glue_dir, tmp_path, method="fsd")
    cache, _ = _open(config)
    target = cache.folder / "penultimate-float16.npy"
    os.remove(target)
    (cache.folder / ".penultimate-float16.npy.partial").write_bytes(b"half")  # a killed pass, no record of it
    again, passes = _open(config)
    assert passes == 1 and target.is_file()
    assert again.arrays["penultimate"].shape == cache.arrays["penultimate"].shape
    assert sorted(p.name for p in cache.folder.iterdir()) == ["key.json", "logits.npy", "penultimate-float16.npy"]


def _counting_teacher(patch, stop_after: int | None = None) -> list[int]:
    """The cache pass's teacher calls, counted (their rows); with `stop_after`, the pass dies at that call."""
    calls, real = [], cache_pass.run_model

    def run(model, batch, **kw):
        if stop_after is not None and len(calls) == stop_after:
            raise KeyboardInterrupt  # the driver killed mid-pass: nothing after this line of the pass runs
        calls.append(len(batch["input_ids"]))
        return real(model, batch, **kw)

    patch.setattr(cache_pass, "run_model", run)
    return calls


def test_a_pass_cut_short_is_taken_up_at_its_last_whole_window(tiny_bert, glue_dir, tmp_path, console_lines,
                                                                  monkeypatch, capsys):
    """200 rows in batches of 8 (25 batches), windows of 4 batches: a pass dies in its 11th batch, after two
    whole windows. The next goes on at row 64 (teacher calls for the 17 batches left only) and its files
    equal, bit for bit, those of a pass that was never cut."""
    monkeypatch.setattr(Batches, "GROUP_WINDOW", 4)
    config = _config(tiny_bert, glue_dir, tmp_path / "cut", method="fsd", max_train_samples=200)
    with pytest.MonkeyPatch.context() as patch:
        _counting_teacher(patch, stop_after=10)
        with pytest.raises(KeyboardInterrupt):
            _open(config)
    (folder,) = [p for p in (tmp_path / "cut" / "cache").glob("rte-*") if p.is_dir()]
    assert not (folder / "logits.npy").exists() and (folder / cache_pass.PASS_STATE).is_file()
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as patch:
        calls = _counting_teacher(patch)
        cache, passes = _open(config)
    progress = capsys.readouterr().err.splitlines()
    assert passes == 1 and len(calls) == 25 - 8 and sum(calls) == 200 - 64
    assert "teacher cache: going on from row 64 of 200, where a pass cut short stopped" in console_lines
    assert sorted(p.name for p in folder.iterdir()) == ["key.json", "logits.npy", "penultimate-float16.npy"]
    whole, _ = _open(config.replace(storage=str(tmp_path / "whole")))
    for name in ("logits.npy", "penultimate-float16.npy"):
        assert np.array_equal(np.load(folder / name), np.load(whole.folder / name)), name
    # The progress line counts the rows of this pass: its last says 136 of 136, once.
    last = [line for line in progress if line.startswith("teacher cache (logits, penultimate): 136/136 rows")]
    assert len(last) == 1, progress


def test_a_record_of_another_pass_is_not_taken_up(tiny_bert, glue_dir, tmp_path, monkeypatch):
    """A record that names other fields, or that does not parse, starts the pass afresh: stopped 12 teacher calls
    in, its record says 12 batches (a pass that went on from the 8 recorded would say 20)."""
    monkeypatch.setattr(Batches, "GROUP_WINDOW", 4)
    config = _config(tiny_bert, glue_dir, tmp_path, method="fsd", max_train_samples=200)
    with pytest.MonkeyPatch.context() as patch:
        _counting_teacher(patch, stop_after=10)
        with pytest.raises(KeyboardInterrupt):
            _open(config)
    (folder,) = [p for p in (tmp_path / "cache").glob("rte-*") if p.is_dir()]
    record = folder / cache_pass.PASS_STATE
    state = json.loads(record.read_text())
    for damaged in (json.dumps({**state, "fields": ["logits"]}), record.read_text()[:20], ""):
        record.write_text(damaged)
        with pytest.MonkeyPatch.context() as patch:
            _counting_teacher(patch, stop_after=12)
            with pytest.raises(KeyboardInterrupt):
                _open(config)
        assert json.loads(record.read_text())["batches"] == 12  # afresh: 12 batches in, three windows recorded


def test_over_budget_falls_back_to_the_live_teacher_with_a_message(tiny_bert, glue_dir, tmp_path, console_lines):
    said = console_lines
    config = _config(tiny_bert, glue_dir, tmp_path, method="fsd", cache_budget_gb=1e-6)
    cache, passes = _open(config)
    assert cache is None and passes == 0
    (message,) = said
    assert "over --cache-budget-gb" in message and "running the teacher live" in message
    assert "raise --cache-budget-gb" in message
    assert not (tmp_path / "cache").exists()
    (report,) = list(distill(config))  # and the run itself still trains, with the live teacher
    assert np.isfinite(report.metrics["train/loss"])


def test_a_written_cache_is_read_when_the_disk_has_filled_since(tiny_bert, glue_dir, tmp_path, monkeypatch,
                                                                console_lines):
    """The chaos soak's one difference (docs/faults.md): two trials retried while the disk was full found no room
    for a cache that was already written, ran the teacher live and trained students whose losses differed from
    the quiet run's in the 7th digit (the live teacher runs in the trial's batches on its one thread, the cache
    pass ran in length-sorted windows on the driver's two). A written cache is read whatever the disk holds now."""
    config = _config(tiny_bert, glue_dir, tmp_path, method="fsd", cache_dtype="float32")
    (before,) = list(distill(config))
    monkeypatch.setattr(teacher_source, "free_bytes", lambda storage: 0)
    assert not teacher_source.cache_decision(1, None, str(tmp_path))[0]  # a cache would not be written now
    console_lines.clear()
    cache, passes = _open(config)
    assert cache is not None and passes == 0
    assert not [line for line in console_lines if "live" in line]
    (after,) = list(distill(config))
    same = [k for k in before.metrics if k.startswith(("train/", "eval/")) and k != "train/samples_per_s"]
    assert "train/intra" in same and all(after.metrics[k] == before.metrics[k] for k in same)


def test_the_size_and_decision_are_said_when_the_features_are_written_not_at_every_read(tiny_bert, glue_dir,
                                                                                       tmp_path, console_lines):
    config = _config(tiny_bert, glue_dir, tmp_path, method="fsd")
    _open(config)
    decided = [ln for ln in console_lines if "features of rte need" in ln]
    assert len(decided) == 1 and "; cached (" in decided[0]
    console_lines.clear()
    _open(config)  # a later stage reading the same cache
    assert not [ln for ln in console_lines if "features of rte need" in ln]


def test_cached_rows_match_the_batch_layout(tiny_bert, glue_dir, tmp_path):
    """Each row's cached features sit at its real tokens, zeros at PAD, whatever the batch padding."""
    config = _config(tiny_bert, glue_dir, tmp_path, method="rkd", cache_dtype="float32")
    cache, _ = _open(config)
    tok = load_tokenizer(tiny_bert)
    data = load_task_data("rte", tok, 64, glue_dir, None, 24, 16)
    from fsd.data import Batches
    from fsd.models import load_teacher, run_model

    teacher = load_teacher(tiny_bert, 2).eval()
    for pad_to in (None, 64):
        batches = Batches(data["train"], 5, tok.pad_token_id, shuffle=True, seed=3, pad_to=pad_to,
                          group_by_length=True)
        batch = next(batches.epoch(1))
        out = cache.outputs(batch)
        with torch.no_grad():
            live = run_model(teacher, batch, hidden=True)
        mask = batch["attention_mask"].bool()
        torch.testing.assert_close(out.penultimate[mask], live.penultimate[mask], rtol=1e-5, atol=1e-5)
        assert out.penultimate[~mask].abs().sum() == 0
        torch.testing.assert_close(out.logits, live.logits, rtol=1e-5, atol=1e-5)


def test_a_pass_in_length_sorted_windows_puts_every_row_at_its_place(tiny_bert, glue_dir, tmp_path, monkeypatch):
    """The cache pass runs rows out of order (sorted by length, window by window): each row's logits, [CLS]
    vectors and real-token features land where row i is read, as the teacher gives them for row i alone."""
    from fsd.data import Batches
    from fsd.models import load_teacher, run_model

    monkeypatch.setattr(Batches, "GROUP_WINDOW", 3)  # 6 rows a window: 24 rows cross 4 windows
    tok = load_tokenizer(tiny_bert)
    data = load_task_data("rte", tok, 64, glue_dir, None, 24, 16)
    batches = Batches(data["train"], 2, tok.pad_token_id)
    assert [r for r in batches.by_length()] != [r for r in batches.batch_rows()]
    teacher = load_teacher(tiny_bert, 2).eval()
    fields = ("logits", "penultimate", "cls")
    teacher_source.write_cache(tmp_path, fields, teacher, batches, "float32", torch.device("cpu"))
    cache = teacher_source.TeacherCache(tmp_path, fields, "float32", batches.lengths)
    for i in range(batches.num_examples):
        alone = batches.collate([i])
        with torch.no_grad():
            live = run_model(teacher, alone, hidden=True)
        out = cache.outputs(alone)
        torch.testing.assert_close(out.logits, live.logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.penultimate, live.penultimate, rtol=1e-5, atol=1e-5)
        for got, want in zip(out.cls_states, live.cls, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_rows_are_read_from_the_file_as_numpy_stores_them_without_mapping_it(tmp_path):
    """NpyRows gives the rows np.load gives (float16 and float32, 2-d and 3-d, both .npy header versions), and
    reading leaves no mapping of the file in the process (the pages stay in the kernel's cache)."""
    rng = np.random.default_rng(0)
    for dtype, shape, version in (("float16", (500, 7), (1, 0)), ("float32", (300, 3, 5), (2, 0))):
        path = tmp_path / f"{dtype}.npy"
        want = rng.standard_normal(shape).astype(dtype)
        with open(path, "wb") as f:
            np.lib.format.write_array(f, want, version=version)
        rows = teacher_source.NpyRows(path)
        starts = rng.integers(0, shape[0] - 20, size=12)
        stops = starts + rng.integers(0, 20, size=12)
        got = rows.ranges(starts, stops)
        np.testing.assert_array_equal(got, np.concatenate([want[a:b] for a, b in zip(starts, stops, strict=True)]))
        assert str(path) not in Path("/proc/self/maps").read_text()
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 10)
    with pytest.raises(ValueError, match="shorter than its header"):
        teacher_source.NpyRows(path).ranges(np.array([shape[0] - 1]), np.array([shape[0]]))


def test_without_a_budget_the_cache_takes_at_most_half_the_free_disk(monkeypatch, tmp_path):
    """The default: a cache that fits in half the storage folder's free disk is written; one that does not runs
    the teacher live and says what to do; a budget the user gave decides alone."""
    from fsd import teacher_source

    monkeypatch.setattr(teacher_source, "free_bytes", lambda storage: 40e9)
    assert teacher_source.cache_decision(17e9, None, str(tmp_path)) == (True, f"cached (40.0 GB free in {tmp_path})")
    cached, why = teacher_source.cache_decision(25e9, None, str(tmp_path))
    assert not cached and why.startswith("more than 50% of the 40.0 GB free in") and "--cache-budget-gb 26.2" in why
    assert teacher_source.cache_decision(25e9, 30.0, str(tmp_path))[0]  # the user's budget, whatever is free
    assert not teacher_source.cache_decision(25e9, 10.0, str(tmp_path))[0]
