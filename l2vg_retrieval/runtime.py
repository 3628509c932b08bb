"""Device and dtype choice, shared by the encoder, the baselines and the trainer."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch


@functools.cache
def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 dot products (AVX512-BF16 or AMX).

    Without them bf16 matmuls are emulated and slower than fp32, so "auto" stays fp32.
    """
    flags = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        flags = cpuinfo.read_text(errors="ignore")
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """'auto' picks bf16 on a GPU or a bf16-capable CPU, else fp32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = (dtype or "auto").lower()
    if name in ("float32", "fp32"):
        return torch.float32
    if name in ("bfloat16", "bf16"):
        return torch.bfloat16
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16
        return torch.bfloat16 if cpu_supports_bf16() else torch.float32
    raise ValueError(f"dtype must be 'auto', 'float32' or 'bfloat16', got {dtype!r}")


@functools.cache
def _libc_function(function: str) -> object | None:
    """A glibc function by name, or ``None`` (another libc, or no libc found)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return getattr(ctypes.CDLL(name), function, None)
    except OSError:
        return None


# glibc's mallopt parameters and their defaults (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_DEFAULT_THRESHOLD = 128 * 1024


@contextmanager
def large_blocks_from_the_os(threshold: int = 1 << 20) -> Iterator[bool]:
    """Within the block, glibc serves allocations of ``threshold`` bytes or more with their
    own mmap and returns them to the OS on free (yields whether that took effect).

    For a pass whose live memory is small but whose transient blocks vary in size: the
    SimCSE step (64 sequences through 30 checkpointed layers) peaked at 8.9 GB resident with
    glibc's adaptive threshold, because freed blocks stayed in its heap fragmented, and at
    2.3 GB with this, 76 vs 86 s/step, batch 32, 2 steps each on this machine. It is not
    used for the L2VG trainer, whose peak it did not lower (1.9 GB either way over 4 steps)
    and whose steps it slowed from 8.7 to 10.3 s. Process-wide while it lasts; on exit the
    thresholds go back to glibc's defaults.
    """
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        yield False
        return
    mallopt(_M_MMAP_THRESHOLD, threshold)  # type: ignore[operator]
    mallopt(_M_TRIM_THRESHOLD, 0)  # type: ignore[operator]
    try:
        yield True
    finally:
        mallopt(_M_MMAP_THRESHOLD, _DEFAULT_THRESHOLD)  # type: ignore[operator]
        mallopt(_M_TRIM_THRESHOLD, _DEFAULT_THRESHOLD)  # type: ignore[operator]
        release_free_memory()


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (monotonic: it never goes down)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def release_free_memory() -> None:
    """Give freed heap memory back to the OS (glibc only; a no-op elsewhere).

    Training allocates activations of a different shape at every step (batches of varying
    length); glibc keeps the freed blocks fragmented across its arenas, and the process's
    resident memory grew from ~3 GB to ~13 GB within 13 steps of the default run (batch
    32 with a LoRA) and fell back to ~3 GB after one ``malloc_trim``.
    """
    trim = _libc_function("malloc_trim")
    if trim is not None:
        trim(0)  # type: ignore[operator]
