"""One run of a trial's configuration as trials ran before the overhead cuts (issue 37): in a process of its
own, without Ray, evaluating in the split's stored order under `torch.no_grad` (the evaluation as it was),
writing no checkpoint. Prints every report's metrics as JSON lines and keeps the student's weights at each
report in `<out>/<samples>.safetensors`, for tests/test_overhead.py to compare with a search's trials.

    python tests/unchanged_path.py <checkpoint.json of a trial> <out folder>
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fsd import loop  # noqa: E402
from fsd.config import DistillConfig  # noqa: E402
from fsd.metrics import SAMPLES  # noqa: E402
from fsd.models import run_model  # noqa: E402
from fsd.train import distill  # noqa: E402


@torch.no_grad()
def stored_order_predict(model: torch.nn.Module, batches, device: torch.device) -> np.ndarray:
    """fsd.loop.predict before length-sorted evaluation (commit 50b990c), word for word."""
    model.eval()
    chunks = []
    for batch in batches.epoch(0):
        with loop.autocast(device):
            chunks.append(run_model(model, loop.to_device(batch, device)).logits.float().cpu())
    return torch.cat(chunks).numpy()


def main() -> None:
    config = DistillConfig.from_dict(json.loads(Path(sys.argv[1]).read_text())["config"])
    out = Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    loop.predict = stored_order_predict  # evaluate() looks it up in fsd.loop at each call
    for report in distill(config):
        save_file({k: v.contiguous() for k, v in report.state()["student"].items()},
                  out / f"{int(report.metrics[SAMPLES])}.safetensors")
        print(json.dumps(report.metrics), flush=True)


if __name__ == "__main__":
    main()
