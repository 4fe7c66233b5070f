"""fsd.loop's CPU allocator setting: freed blocks are reused instead of being paged in again."""

import subprocess
import sys

import pytest

# Allocate and free the word embeddings' gradient (bert-base-uncased vocabulary x 384) 40 times, as 40 training
# steps do, and count the minor page faults. Kept memory takes a few rounds to settle (a freed block can be a
# little short of the next aligned request until free blocks coalesce): up to 9 of 16 rounds faulted here.
PROBE = """
import resource, sys, torch
from fsd.loop import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    torch.zeros(30522, 384)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_kept_memory_serves_a_large_tensor_again_without_page_faults():
    pages = 40 * 30522 * 384 * 4 // 4096  # every page of the 40 allocations
    assert _faults("default") > 0.9 * pages  # glibc unmaps a 47 MB block on free: each allocation faults anew
    assert _faults("keep") < 0.4 * pages  # kept: the freed block is handed out again, already paged in


def test_the_training_step_is_written_once():
    """Training, --estimate and both benchmarks take the same step (fsd.loop.training_step): no other module
    calls backward(), and each uses loop's own function."""
    import ast
    import importlib.util
    from pathlib import Path

    import fsd.loop
    import fsd.tuning.cost.estimate

    root = Path(__file__).resolve().parents[1]
    for path in [*root.glob("fsd/**/*.py"), *root.glob("bench/*.py")]:
        if path.name == "loop.py" and path.parent.name == "fsd":
            continue
        calls = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)
                 and isinstance(n.func, ast.Attribute) and n.func.attr == "backward"]
        assert not calls, f"{path.relative_to(root)} takes a training step of its own"
    assert fsd.tuning.cost.estimate.training_step is fsd.loop.training_step
    spec = importlib.util.spec_from_file_location("speed", root / "bench" / "speed.py")
    speed = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(root))
    spec.loader.exec_module(speed)
    assert speed.training_step is fsd.loop.training_step
    assert "training_step(b, loss_fn, params, optimizer, scheduler" in (root / "bench" / "gpu_check.py").read_text()


def test_the_step_clips_refuses_a_non_finite_loss_and_steps_the_schedule():
    import torch

    from fsd.loop import make_optimizer, training_step

    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.ones(3))
    optimizer, scheduler = make_optimizer([w], 0.1, 0.0, 10)
    parts = training_step({}, lambda b: ((w * 1000).sum(), {"x": w.sum()}), [w], optimizer, scheduler, 1.0,
                          torch.device("cpu"))
    assert set(parts) == {"loss", "x"} and parts["loss"] == 3000
    assert torch.linalg.vector_norm(w.grad) <= 1.0 + 1e-6  # clipped before the step
    assert scheduler.get_last_lr()[0] < 0.1  # the schedule moved
    with pytest.raises(FloatingPointError, match="non-finite loss at epoch 0 step 2 \\(parts: \\['x'\\]\\)"):
        training_step({}, lambda b: (w.sum() * float("nan"), {"x": torch.tensor(float("inf"))}), [w], optimizer,
                      scheduler, 1.0, torch.device("cpu"), where="epoch 0 step 2")
