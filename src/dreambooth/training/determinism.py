"""``--deterministic``: the same kernels' results from the same inputs on a GPU, so that two runs with
the same settings, and a run resumed from a checkpoint, end with the same weights bit for bit there too.

On the CPU a run is already deterministic. On a GPU, cuDNN may choose its algorithm by timing it,
cuBLAS splits work by its workspace, and the attention kernels' backward passes add partial results
in whatever order their threads finish. torch has a deterministic path for each of them, but takes
it only in its strict mode: with ``warn_only=True`` flash and memory-efficient attention warn and
stay nondeterministic. So the mode is strict, and an operation that has no deterministic path stops
the run with one line naming it. torch's NaN-filling of new tensors, a debugging aid that comes with
the mode, stays off: results do not depend on it, and it costs a write of every new tensor.

The settings are process-wide and restored when the run ends; in the server, images made while such
a job trains are made under them too.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

from ..errors import UserError

CUBLAS_WORKSPACE = ":4096:8"      # a fixed cuBLAS workspace per stream, as torch's reproducibility notes ask


@contextlib.contextmanager
def deterministic_kernels(on: bool) -> Iterator[None]:
    if not on:
        yield
        return
    cudnn, fill = torch.backends.cudnn, torch.utils.deterministic
    was_on, was_warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    was_cudnn = (cudnn.deterministic, cudnn.benchmark, fill.fill_uninitialized_memory)
    was_workspace = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True)
    fill.fill_uninitialized_memory = False
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    except RuntimeError as exc:
        what = str(exc).partition(" does not have a deterministic implementation")
        if not what[1]:
            raise
        raise UserError(f"--deterministic: {what[0].strip()} has no deterministic implementation on this device; "
                        "run without --deterministic (the run is then not bit-exact on a GPU)") from None
    finally:
        torch.use_deterministic_algorithms(was_on, warn_only=was_warn_only)
        cudnn.deterministic, cudnn.benchmark, fill.fill_uninitialized_memory = was_cudnn
        if was_workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


@contextlib.contextmanager
def caller_random_state_kept() -> Iterator[None]:
    """A run seeds torch's global generators (dropout) and a resume sets Python's and NumPy's too: the
    caller's (a notebook's) are as they were once the run ends."""
    import random

    import numpy as np
    saved = (random.getstate(), np.random.get_state(), torch.random.get_rng_state(),
             torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None)
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.random.set_rng_state(saved[2])
        if saved[3] is not None:
            torch.cuda.set_rng_state_all(saved[3])
