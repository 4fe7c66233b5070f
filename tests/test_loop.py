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
