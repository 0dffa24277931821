"""Class images for prior preservation, made by the frozen base model.

Images are generated in batches and each one is written the moment it exists, named by its index
(``class-00012.png``) with the seed ``seed + index``: an interrupted run keeps what it made, a rerun
generates only the missing indices, and every image can be reproduced alone.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from .data import IMAGE_SUFFIXES
from .progress import progress_bar


def existing_class_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def decode(pipe, latents: torch.Tensor):
    """Latents to PIL images with the VAE in its own precision, outside any autocast: the SDXL VAE
    overflows in fp16 (black images), so it is never autocast down."""
    vae = pipe.vae
    latents = latents.to(vae.device, vae.dtype) / vae.config.scaling_factor + (getattr(vae.config, "shift_factor", None) or 0.0)
    with torch.autocast(vae.device.type, enabled=False):
        images = vae.decode(latents).sample
    return pipe.image_processor.postprocess(images.float(), output_type="pil")


def ensure_class_images(pipe, class_prompt: str, folder: str | Path, count: int, batch_size: int, resolution: int,
                        steps: int, cfg: float, seed: int, negative_prompt: str = "",
                        autocast=contextlib.nullcontext) -> list[Path]:
    """Make sure ``folder`` holds at least ``count`` images; return the first ``count``.
    ``autocast`` is a context factory for the denoising loop (mixed precision)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    have = existing_class_images(folder)
    taken = {p.stem for p in have}
    missing = [i for i in range(count * 4) if f"class-{i:05d}" not in taken][: max(0, count - len(have))]
    if missing:
        with progress_bar(len(missing), "class images") as bar, torch.no_grad():
            for start in range(0, len(missing), batch_size):
                idx = missing[start:start + batch_size]
                gens = [torch.Generator("cpu").manual_seed(seed + i) for i in idx]
                with autocast():
                    latents = pipe(
                        [class_prompt] * len(idx), negative_prompt=[negative_prompt] * len(idx) if negative_prompt else None,
                        num_inference_steps=steps, guidance_scale=cfg, height=resolution, width=resolution,
                        generator=gens, output_type="latent",
                    ).images
                images = decode(pipe, latents)
                for i, image in zip(idx, images):
                    tmp = folder / f".class-{i:05d}.png.tmp"
                    image.save(tmp, format="PNG")
                    os.replace(tmp, folder / f"class-{i:05d}.png")   # never a half-written image
                bar.advance(len(idx))
    return existing_class_images(folder)[:count]
