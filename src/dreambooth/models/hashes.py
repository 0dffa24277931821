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


def _cache_key(path: Path, skip_safetensors_header: bool) -> str:
    stat = path.stat()
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{int(skip_safetensors_header)}"


def cached_sha256(path: Path, skip_safetensors_header: bool = False) -> str | None:
    """The file's sha256 where it was computed before (for these bytes: path, size and time), else None."""
    return read_cache(CACHE_FILE).get(_cache_key(Path(path), skip_safetensors_header))


def file_sha256(path: Path, skip_safetensors_header: bool = False) -> str:
    path = Path(path)
    key = _cache_key(path, skip_safetensors_header)
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


def model_hash(path: Path, sha256=file_sha256) -> str | None:
    """``Model hash`` of the infotext: the WebUI's sha256[:10] of a checkpoint file; for a diffusers
    folder, sha256[:10] over the names and sha256s of the weight files its pipeline loads. None where
    ``sha256`` (``cached_sha256``: no file read) has none of a file."""
    path = Path(path)
    if path.is_file():
        whole = sha256(path)
        return whole[:10] if whole else None
    digest = hashlib.sha256()
    for p in _pipeline_weight_files(path):
        if (one := sha256(p)) is None:
            return None
        digest.update(f"{p.relative_to(path).as_posix()}:{one}\n".encode())
    return digest.hexdigest()[:10]


def known_model_hash(path: Path) -> str | None:
    """The model's hash if its files were hashed before (by a generation, here or in an earlier process),
    without reading a checkpoint: what a model list shows (A1111 lists hashes from its cache file too)."""
    return model_hash(path, cached_sha256)


def lora_hash(path: Path) -> str:
    """``Lora hashes`` entry: sha256[:12] of the tensor data of a .safetensors file (the WebUI's
    and Civitai's hash for LoRAs), of the whole file otherwise."""
    path = Path(path)
    return file_sha256(path, skip_safetensors_header=path.suffix == ".safetensors")[:12]
