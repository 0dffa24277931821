"""Training outputs this installation has made, remembered in the cache folder, so a LoRA can be
named in a prompt (``<lora:my_dog:0.8>``) without a path, and a server can list what was trained."""
from __future__ import annotations

import time
from pathlib import Path

from ..outputs import read_cache, update_cache

CACHE_FILE = "trained.json"


def remember_output(output: Path, kind: str) -> None:
    """Record a finished training output (``kind`` "lora" or "full")."""
    key = str(Path(output).expanduser().resolve())
    update_cache(CACHE_FILE, lambda data: data.update({key: {"kind": kind, "time": time.time()}}))


def trained_outputs(kind: str | None = None) -> list[Path]:
    """Remembered outputs that still exist, newest first."""
    data = read_cache(CACHE_FILE)
    rows = sorted(((v.get("time", 0), Path(k)) for k, v in data.items()
                   if isinstance(v, dict) and (kind is None or v.get("kind") == kind)), reverse=True)
    return [path for _, path in rows if path.is_dir()]
