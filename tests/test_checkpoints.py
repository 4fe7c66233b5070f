"""Checkpoints are data: safetensors and JSON written, read back equal, and a pickle never executed."""

import os

import pytest
import torch

from fsd.checkpoints import (
    UnsafeCheckpoint,
    check_readable,
    drop_resume_state,
    from_data,
    load_checkpoint,
    resumable,
    save_checkpoint,
    to_data,
)


def _state():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / 10)
    for _ in range(2):
        model(torch.randn(5, 4)).sum().backward()
        opt.step()
        sched.step()
    return model, opt, sched, {
        "student": model.state_dict(), "objective": {"memory": torch.randn(2, 3)},
        "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "epoch": 1, "step": 2, "samples": 10,
        "best_score": 0.5, "config": {"task": "rte", "lr": 1e-3, "layers": [1, 2]},
        "rng": {"torch": torch.get_rng_state(), "cuda": None}}


def _equal(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_a_nested_state_survives_json_and_safetensors_with_its_int_keys_and_tuples():
    _, opt, _, state = _state()
    tree, tensors = to_data(state)
    back = from_data(tree, tensors)
    assert _equal(back, state)
    assert all(isinstance(k, int) for k in back["optimizer"]["state"])  # what load_state_dict matches on
    assert isinstance(back["optimizer"]["param_groups"][0]["betas"], tuple)


def test_a_saved_checkpoint_resumes_the_optimiser_exactly(tmp_path):
    model, opt, sched, state = _state()
    save_checkpoint(tmp_path / "c", state)
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.pkl"))
    back = load_checkpoint(tmp_path / "c")
    assert _equal(back, state)
    # Loaded into a fresh optimiser, the next step is the one the original would take.
    model2 = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    model2.load_state_dict(back["student"])
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-3, fused=True)
    opt2.load_state_dict(back["optimizer"])
    x = torch.randn(5, 4)
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        m(x).sum().backward()
        o.step()
    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(p, q)


def test_dropping_the_resume_state_keeps_the_student_and_the_progress(tmp_path):
    _, _, _, state = _state()
    folder = save_checkpoint(tmp_path / "c", state)
    assert resumable(folder)
    freed = drop_resume_state(folder)
    assert freed > 0 and not resumable(folder)
    back = load_checkpoint(folder)
    assert set(back) == {"student", "epoch", "step", "samples", "best_score", "config"}
    assert _equal(back["student"], state["student"])


def test_an_old_checkpoint_of_plain_values_still_loads(tmp_path):
    _, _, _, state = _state()
    (tmp_path / "old").mkdir()
    torch.save(state, tmp_path / "old" / "checkpoint.pt")
    check_readable(tmp_path / "old")
    assert _equal(load_checkpoint(tmp_path / "old"), state)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_planted_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "bad").mkdir()
    torch.save({"student": {}, "config": _Exploit(marker)}, tmp_path / "bad" / "checkpoint.pt")
    with pytest.raises(UnsafeCheckpoint, match="could run code.*--resume"):
        check_readable(tmp_path / "bad")
    with pytest.raises(UnsafeCheckpoint):
        load_checkpoint(tmp_path / "bad")
    assert not marker.exists()


def test_a_damaged_file_is_one_error_not_a_crash(tmp_path):
    _, _, _, state = _state()
    folder = save_checkpoint(tmp_path / "c", state)
    (tmp_path / "c" / "student" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UnsafeCheckpoint, match="not a readable checkpoint"):
        load_checkpoint(folder)
