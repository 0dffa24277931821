"""Freed host memory kept for reuse, so CPU training does not fault its gradients in afresh each step.

glibc serves a block above its mmap threshold (128 KiB at first, at most 32 MiB) with a fresh mapping
and unmaps it when freed, and gives the top of its heap back to the system once more than the trim
threshold is free. A CPU training step frees and reallocates every gradient (hundreds of MB): with
those defaults each step paid ~60,000 page faults and a third of its backward pass in the kernel
(docs/benchmarks.md). The WebUI preloads tcmalloc for the same reason; this asks glibc itself.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3      # mallopt's parameter numbers (malloc.h)
MMAP_THRESHOLD = 32 << 20                         # glibc's own ceiling for it on 64-bit
TRIM_THRESHOLD = 2**31 - 1                        # mallopt takes an int: effectively never trim


def _libc(symbol: str):
    """``symbol`` of the C library when it has one (glibc's mallopt, malloc_trim), else None."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return getattr(ctypes.CDLL(name), symbol)
    except (OSError, AttributeError):
        return None


@functools.lru_cache(maxsize=None)
def keep_freed_host_memory() -> bool:
    """Blocks up to 32 MiB come from the heap and freed memory stays in the process for the next
    step. The cost: the process's RSS does not shrink after a peak. True when glibc took it; False
    elsewhere (macOS, Windows, musl), where nothing changes."""
    mallopt = _libc("mallopt")
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def release_freed_host_memory() -> None:
    """Give freed heap memory back to the system now (glibc's malloc_trim), after a one-off burst of
    frees such as a model's weights copied into another layout: with trimming off it would stay in the
    process, out of reach of blocks of other sizes, and raise its peak. Elsewhere nothing happens."""
    trim = _libc("malloc_trim")
    if trim is not None:
        trim(0)
