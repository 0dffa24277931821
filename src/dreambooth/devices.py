"""The one device choice: CUDA when there is a GPU, then Apple's MPS, else the CPU."""
from __future__ import annotations

import torch


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_device(device: str | torch.device | None) -> torch.device:
    """``device`` as given (``--device cuda:1``), or the default."""
    return torch.device(device) if device else default_device()
