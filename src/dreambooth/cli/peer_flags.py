"""The flags of diffusers' DreamBooth scripts and kohya's sd-scripts that users type out of habit, with
what ``dreambooth train`` calls them (the mapping is ``training.peer_names``, shared with ``--config``
files; docs/training.md has the tables). Where one is not ours, an unknown-option error names ours
instead of a near spelling."""
from __future__ import annotations

from ..training.peer_names import PEER_NAMES as PEER_FLAGS, peer_name

__all__ = ["PEER_FLAGS", "peer_hint"]


def peer_hint(option: str) -> str | None:
    """``"; dreambooth train calls it --rank"`` for kohya's ``--network_dim`` (or ``--network-dim``)."""
    ours = peer_name(option)
    return f"; dreambooth train calls it {ours}" if ours else None
