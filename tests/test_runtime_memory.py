"""runtime.large_blocks_from_the_os: freed large blocks leave the process at once (glibc)."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from l2vg_retrieval.runtime import large_blocks_from_the_os


def _resident_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _touch_and_free(n: int = 150, mb: int = 2) -> tuple[float, float]:
    """RSS after touching ``n`` blocks of ``mb`` MB, then after freeing them. A small block
    stays allocated after each, as in a real step, so glibc cannot hand the freed space back
    by shrinking the top of its heap: only blocks it mmapped leave the process on free."""
    blocks, pins = [], []
    for _ in range(n):
        blocks.append(torch.ones(mb * 2**20 // 4))
        pins.append(torch.ones(1024))
    held = _resident_mb()
    del blocks
    after = _resident_mb()
    del pins
    return held, after


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs glibc (Linux)")
def test_freed_large_blocks_leave_the_process_inside_the_block() -> None:
    # glibc raises its mmap threshold to the size of any mmapped block it frees (up to
    # 32 MB), as a long-running process has: after this, 2 MB blocks come from its heap.
    big = torch.ones(24 * 2**20 // 4)
    del big
    with large_blocks_from_the_os() as active:
        assert active, "glibc's mallopt should be found on Linux"
        held, after = _touch_and_free()
    # 300 MB were resident while held; inside the block each 2 MB tensor is its own mapping,
    # so freeing them returns (nearly) all of it at once, with no trim.
    assert held - after > 250, (held, after)
