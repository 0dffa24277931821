"""Hashes as the WebUI shows them (``Model hash``, ``Lora hashes``), cached: big checkpoints take
seconds to read, and a file's hash is kept by path, size and modification time."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from ..outputs import read_cache, update_cache

CACHE_FILE = "hashes.json"
_VARIANT = re.compile(r"\.(fp16|fp32|bf16|ema|non_ema)\.")


def file_sha256(path: Path, skip_safetensors_header: bool = False) -> str:
    path = Path(path)
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{int(skip_safetensors_header)}"
    cache = read_cache(CACHE_FILE)
    if key in cache:
        return cache[key]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if skip_safetensors_header:
            header_len = int.from_bytes(f.read(8), "little")
            f.seek(8 + header_len)
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    update_cache(CACHE_FILE, lambda cache: cache.update({key: digest.hexdigest()}))
    return digest.hexdigest()


def _pipeline_weight_files(folder: Path) -> list[Path]:
    """The weight files ``from_pretrained`` loads from a diffusers folder: those of the components
    named in model_index.json, without variants (``.fp16.``) or checkpoints kept beside them."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        index = {}
    components = [k for k, v in index.items() if isinstance(v, list) and v and v[0]]
    files = []
    for name in sorted(components):
        sub = folder / name
        if not sub.is_dir():
            continue
        found = sorted(p for p in sub.iterdir() if p.is_file() and not _VARIANT.search(p.name)
                       and p.suffix in (".safetensors", ".bin"))
        safetensors = [p for p in found if p.suffix == ".safetensors"]
        files += safetensors or found
    return files


def model_hash(path: Path) -> str:
    """``Model hash`` of the infotext: the WebUI's sha256[:10] of a checkpoint file; for a diffusers
    folder, sha256[:10] over the names and sha256s of the weight files its pipeline loads."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)[:10]
    digest = hashlib.sha256()
    for p in _pipeline_weight_files(path):
        digest.update(f"{p.relative_to(path).as_posix()}:{file_sha256(p)}\n".encode())
    return digest.hexdigest()[:10]


def lora_hash(path: Path) -> str:
    """``Lora hashes`` entry: sha256[:12] of the tensor data of a .safetensors file (the WebUI's
    and Civitai's hash for LoRAs), of the whole file otherwise."""
    path = Path(path)
    return file_sha256(path, skip_safetensors_header=path.suffix == ".safetensors")[:12]
