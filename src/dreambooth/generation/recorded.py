"""What an image's infotext records: the settings line of :func:`sampling.generate`'s images.

A1111's keys in its order, then our own for ``--from-image``: the model's and LoRAs' paths, the batch
and the precision.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..outputs import recorded_path
from .loras import LoraFile
from .params import GenerationParams
from .pipeline import GenerationPipeline


def shared_path(spec: str | None) -> str | None:
    """A local path as a PNG carries it: relative to the working folder when it lies within it (a replay
    run from there finds it, and the PNG says nothing of the folders above), else as ``recorded_path``
    (the home folder as ``~``); a hub id as it is."""
    if not spec or spec == "toy" or not Path(spec).expanduser().exists():
        return spec
    path = Path(spec).expanduser().resolve()
    here = Path.cwd().resolve()
    return path.relative_to(here).as_posix() or "." if here in path.parents or path == here else recorded_path(path)


def _found(recorded: str, image: Path) -> str:
    """A path ``shared_path`` wrote relative to the folder the image was made in: as it stands where it
    exists from here, else from the image's folder or the nearest folder above it where it exists
    (images are mostly written below the folder they were made in), else as it stands."""
    path = Path(recorded)
    if path.is_absolute() or recorded.startswith("~") or path.exists():
        return recorded
    for folder in Path(image).expanduser().resolve().parents:
        if (folder / path).exists():
            return str(folder / path)
    return recorded


def located(info: dict, image: str | Path) -> dict:
    """``info`` (a parsed infotext) with its recorded relative paths found from wherever the replay runs."""
    out = dict(info)
    for key in ("Model path", "VAE path", "Model config"):
        if isinstance(out.get(key), str) and out[key]:
            out[key] = _found(out[key], Path(image))
    try:
        loras = json.loads(out["Lora paths"]) if out.get("Lora paths") else None
    except ValueError:
        loras = None
    if isinstance(loras, dict):
        out["Lora paths"] = json.dumps({k: _found(str(v), Path(image)) for k, v in loras.items()}, ensure_ascii=False)
    return out


def infotext_params(params: GenerationParams, seed: int, pipeline: GenerationPipeline,
                    loras: list[tuple[LoraFile, float]], img2img: bool, batch: str | None = None,
                    precision: str | None = None) -> dict:
    """The settings line of the infotext, in the WebUI's key order, then our own keys."""
    info = pipeline.info
    out = {
        "Steps": params.steps,
        "Sampler": params.sampler,
        "Schedule type": params.schedule,
        "CFG scale": params.cfg_scale,
        "Seed": seed,
        "Size": f"{params.width}x{params.height}",
        "Model hash": info.hash,
        "Model": info.name,
        "VAE": info.vae.name if info.vae else None,
        "Denoising strength": params.strength if img2img or params.hires else None,
        "Resize mode": params.resize_mode if img2img and params.resize_mode != "Just resize" else None,
        "Mask mode": "Inpaint not masked" if params.mask is not None and params.invert_mask else None,
        "Mask blur": params.mask_blur if params.mask is not None else None,
        "Inpaint area": "Only masked" if params.mask is not None and params.only_masked else None,
        "Masked area padding": params.masked_padding if params.mask is not None and params.only_masked else None,
        "Masked content": params.masked_content if params.mask is not None and params.masked_content != "original" else None,
        "Eta DDIM": params.sampler_eta or None,          # (0, DDIM's own, goes unrecorded, as in the WebUI)
        "Clip skip": params.clip_skip if params.clip_skip > 1 else None,
        "Hires upscale": params.hires_scale if params.hires and not (params.hires_width or params.hires_height) else None,
        "Hires resize": f"{params.hires_width}x{params.hires_height}" if params.hires and (params.hires_width or
                                                                                         params.hires_height) else None,
        "Hires steps": params.hires_steps if params.hires and params.hires_steps else None,
        "Hires upscaler": params.hires_upscaler if params.hires else None,
        "RNG": "CPU",           # every noise is drawn by CPU generators (A1111's default is its GPU's)
        "Lora hashes": ", ".join(f"{lo.name}: {lo.hash}" for lo, _ in loras if lo.hash) or None,
        # Ours, for --from-image: where the model and the LoRAs were (``shared_path``); none from a server
        "Model path": shared_path(info.spec) if info.spec != info.name and info.share_paths else None,  # hub id, toy: "Model"
        "Model config": shared_path(info.config) if info.share_paths else None,
        "VAE path": shared_path(info.vae_spec) if info.share_paths else None,
        "Lora paths": json.dumps({lo.name: shared_path(lo.source) for lo, _ in loras}, ensure_ascii=False)
        if loras and info.share_paths else None,
        "Batch": batch,
        "Precision": precision,      # the dtype the UNet ran in: --from-image remakes it in the same
    }
    return out
