"""The one device choice: CUDA when there is a GPU, then Apple's MPS, else the CPU."""
from __future__ import annotations

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
