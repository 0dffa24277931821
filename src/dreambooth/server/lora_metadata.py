"""What ``/sdapi/v1/loras`` says of a LoRA file beside its name: its safetensors metadata."""
from __future__ import annotations

import json
from pathlib import Path

_metadata_cache: dict[tuple[str, int, int], dict] = {}


def lora_metadata(path: Path) -> dict:
    """A LoRA file's safetensors metadata, as A1111's /sdapi/v1/loras gives it (kohya's ``ss_*``
    fields: clients tell an SDXL LoRA by ``ss_base_model_version``), its JSON-object values decoded; {}
    for a file without any. Only the header is read, once per version of the file."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        return {}
    try:
        stat = path.stat()
    except OSError:
        return {}
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key not in _metadata_cache:
        from safetensors import safe_open
        try:
            with safe_open(str(path), "pt") as handle:
                raw = handle.metadata() or {}
        except Exception:          # a damaged file: listed, without metadata (loading it says why)
            raw = {}
        if len(_metadata_cache) > 4096:          # files rewritten again and again: the old versions go
            _metadata_cache.clear()
        _metadata_cache[key] = {k: _decoded(v) for k, v in raw.items()}
    return dict(_metadata_cache[key])


def _decoded(value: str):
    """kohya stores dicts (``ss_tag_frequency``, ...) as JSON text; A1111 lists them decoded."""
    if isinstance(value, str) and value.startswith("{"):
        try:
            return json.loads(value)
        except ValueError:
            pass
    return value
