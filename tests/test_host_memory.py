"""Freed host memory is kept for the next step: reallocating gradient-sized tensors stops faulting pages in."""
import platform
import subprocess
import sys

import pytest

# 3 rounds of 32 tensors of 8 MiB, allocated and freed, after one warm-up round: the page faults they cost.
ROUNDS = """
import resource, sys, torch
if sys.argv[1] == "keep":
    from dreambooth.host_memory import keep_freed_host_memory
    assert keep_freed_host_memory()
def round_():
    kept = [torch.ones(2 << 20) for _ in range(32)]
    del kept
round_()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    round_()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
PAGES = 3 * 32 * (8 << 20) // 4096


def faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", ROUNDS, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_freed_memory_is_reused_not_faulted_in_again():
    default, kept = faults("default"), faults("keep")
    assert default > PAGES // 4, (default, PAGES)        # glibc's defaults hand the memory back and fault it in again
    assert kept < PAGES // 10, (kept, PAGES)


def test_other_c_libraries_are_left_alone(monkeypatch):
    import ctypes.util

    from dreambooth import host_memory
    host_memory.keep_freed_host_memory.cache_clear()
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    try:
        assert host_memory.keep_freed_host_memory() is False
    finally:
        host_memory.keep_freed_host_memory.cache_clear()


RELEASE = """
import torch
from dreambooth.host_memory import keep_freed_host_memory, release_freed_host_memory
assert keep_freed_host_memory()
resident = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096
kept = [torch.ones(2 << 20) for _ in range(64)]      # 512 MiB in 8 MiB blocks, from the heap
del kept
before = resident()
release_freed_host_memory()
print(before - resident())
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_release_gives_freed_memory_back():
    out = subprocess.run([sys.executable, "-c", RELEASE], capture_output=True, text=True, check=True)
    assert int(out.stdout.split()[-1]) > 256 << 20      # most of the 512 MiB freed and kept, given back
