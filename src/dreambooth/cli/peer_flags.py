"""The flags of diffusers' DreamBooth scripts and kohya's sd-scripts that users type out of habit, with
what ``dreambooth train`` calls them (the mapping is ``training.peer_names``, shared with ``--config``
files; docs/training.md has the tables). Where one is not ours, an unknown-option error names ours
instead of a near spelling."""
from __future__ import annotations

import dataclasses

from ..training.config import TrainConfig, flag
from ..training.peer_names import PEER_NAMES as PEER_FLAGS

__all__ = ["PEER_FLAGS", "peer_hint", "peer_name"]


def peer_name(name: str) -> str | None:
    """What ``dreambooth train`` calls a peer's setting (``--rank`` for ``network_dim``); our own
    setting typed with underscores (``--offset_noise``) is named as our flag. None: not known."""
    key = name.lstrip("-").replace("-", "_")
    if key in PEER_FLAGS:
        return PEER_FLAGS[key]
    return flag(key) if key in {f.name for f in dataclasses.fields(TrainConfig)} else None


def peer_hint(option: str) -> str | None:
    """``"; dreambooth train calls it --rank"`` for kohya's ``--network_dim`` (or ``--network-dim``)."""
    ours = peer_name(option)
    return f"; dreambooth train calls it {ours}" if ours else None
