"""The one device choice: CUDA when there is a GPU, then Apple's MPS, else the CPU; the precisions
generation and training run in on each, and the memory a run may use on one."""
from __future__ import annotations

import functools
import os

import torch

from .errors import UserError


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_device(device: str | torch.device | None, flag: str = "--device") -> torch.device:
    """``device`` as given (``--device cuda:1``), or the default; one that is not here is a one-line error."""
    if not device:
        return default_device()
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UserError(f"{flag} {device}: not a device; use cpu, cuda, cuda:N or mps") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()}
    if not available.get(chosen.type, False):
        raise UserError(f"{flag} {device}: no such device on this machine"
                        + (f" (use {default_device().type})" if chosen.type != "cpu" else ""))
    if chosen.type == "cuda" and chosen.index is not None and chosen.index >= torch.cuda.device_count():
        raise UserError(f"{flag} {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return chosen

# The --dtype choices of the CLI (auto: ``generation_dtype``).
DTYPES = {"auto": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PRECISIONS = {dtype: name for name, dtype in DTYPES.items() if dtype is not None}     # as infotexts record it


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (/proc/cpuinfo; empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            return frozenset(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        return frozenset()


def cpu_has_native_bf16() -> bool:
    """The CPU multiplies bf16 in hardware (AMX or AVX512-BF16): there bf16 sampling takes about two
    thirds of fp32's time (measured, docs/benchmarks.md); elsewhere bf16 is emulated and slower."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def cpu_has_amx() -> bool:
    """The CPU has AMX tiles for bf16 (Intel Xeon from Sapphire Rapids on)."""
    return "amx_bf16" in cpu_flags()


def generation_dtype(device: torch.device) -> torch.dtype:
    """What generation runs in unless asked otherwise: fp16 on CUDA (as diffusers' users do), bf16
    on a CPU with native bf16, fp32 elsewhere."""
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def training_precision(device: torch.device, fp16: bool = True) -> str:
    """What ``--mixed-precision auto`` trains under: bf16 where the device multiplies it in hardware
    (CUDA from Ampere on; a CPU with AMX or AVX512-BF16, where the mid-size full + text encoder step takes
    0.6-0.8 of fp32's: docs/benchmarks.md), fp16 on older GPUs (unless ``fp16`` is False), else fp32 ("no")."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return "bf16"
        return "fp16" if fp16 else "no"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "no"


def out_of_gpu_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an accelerator's allocator refusing (CUDA's out of memory), not a bug."""
    return isinstance(exc, torch.OutOfMemoryError)


def _meminfo_kib(path: str, key: str) -> int | None:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def first_process() -> bool:
    """This process is the first (or only) one ``accelerate launch`` started: what every process
    would say alike, the first says."""
    return os.environ.get("RANK", "0") in ("", "0")


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):        # missing, or "max" (no limit)
        return None


def cgroup_free_kib() -> int | None:
    """What a memory-limited container (Docker ``--memory``, a notebook service) leaves this process's
    group: its limit less its use; None without a limit. /proc/meminfo speaks for the whole machine."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, used = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and used is not None and limit < 2**60:     # v1 writes "no limit" as a huge number
            return max(0, limit - used) // 1024
    return None


def available_memory(device, held: int | None = None, sharers: int = 1) -> int | None:
    """Bytes this run may use on ``device``: what is free plus what this process already holds
    (the model is loaded). CPU: MemAvailable plus this process's anonymous memory (its file-backed
    pages, e.g. memory-mapped weights, are already in MemAvailable); CUDA: free plus what this process's
    allocator keeps cached unused plus ``held``, the run's own tensors there (what else the process
    holds, such as a server's generation model, is not the run's to use; without ``held``, all it has
    reserved), within the share of the card torch lets it take (``set_per_process_memory_fraction``: a
    shared GPU, or a benchmark acting as a smaller card). On a CPU, within a container's memory limit, and
    ``sharers``: the run's processes on this machine, which share its memory. None where unknown (the
    estimate is then only printed)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        share = getattr(torch.cuda, "get_per_process_memory_fraction", lambda d: 1.0)(device)
        reserved = torch.cuda.memory_reserved(device)
        mine = reserved if held is None else reserved - torch.cuda.memory_allocated(device) + held
        return int(min(free + mine, share * total))
    if device.type == "cpu":
        available = _meminfo_kib("/proc/meminfo", "MemAvailable")
        limited = cgroup_free_kib()
        if available is not None and limited is not None:
            available = min(available, limited)
        held = _meminfo_kib("/proc/self/status", "RssAnon")
        if held is None:
            held = _meminfo_kib("/proc/self/status", "VmRSS")
        # ``sharers`` processes of one run on this machine's memory: each may count on its share of what is free
        return None if available is None else (available // max(1, sharers) + (held or 0)) * 1024
    return None
