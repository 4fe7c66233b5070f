"""A 3-layer MiniLM student's logits on SST-2's dev split in the stored order (batches of 128, as evaluation ran
before 83d78a6) and in length-sorted batches under inference mode (fsd.loop.predict since): padded tokens,
seconds of each pass on one thread, and whether the logits and the predicted classes are the same.

    PYTHONPATH=<clone> HF_HUB_OFFLINE=1 python eval_order.py <storage with SST-2's tokenised data> [<GLUE folder>]
"""

import sys
import time
from pathlib import Path

import numpy as np
import torch

from fsd.config import DataSpec
from fsd.loop import make_batches, predict
from fsd.models import build_student, load_tokenizer, run_model

torch.set_num_threads(1)
tokenizer = load_tokenizer("packaged-minilm")
GLUE = sys.argv[2] if len(sys.argv) > 2 else str(Path(__file__).resolve().parents[4] / "shared" / "glue_data")
_, dev, _ = make_batches(DataSpec("sst2", GLUE, max_train_samples=1600), tokenizer, sys.argv[1])
batches = dev["validation"]
torch.manual_seed(0)
student = build_student("packaged-minilm", 3, 2, "sdpa").eval()


@torch.no_grad()
def stored_order(model: torch.nn.Module) -> np.ndarray:
    return torch.cat([run_model(model, b).logits.float() for b in batches.epoch(0)]).numpy()


for attempt in range(2):  # alternated, twice
    started = time.perf_counter()
    before = stored_order(student)
    stored_s = time.perf_counter() - started
    started = time.perf_counter()
    after = predict(student, batches, torch.device("cpu"))
    sorted_s = time.perf_counter() - started
    print(f"pass {attempt + 1}: stored order {stored_s:.2f} s, length-sorted {sorted_s:.2f} s, "
          f"ratio {sorted_s / stored_s:.2f}")
padded = sum(max(batches._length[i] for i in rows) * len(rows) for rows in batches.batch_rows(0))
ordered = sum(max(batches._length[i] for i in rows) * len(rows) for rows in batches.by_length())
print(f"padded tokens: stored order {padded:,}, length-sorted {ordered:,}; real {int(batches.lengths.sum()):,}")
print(f"logits equal: {np.array_equal(before, after)}, largest difference {np.abs(before - after).max():.2e}, "
      f"predicted classes equal: {bool((before.argmax(1) == after.argmax(1)).all())}")
