"""Training images: find, check, orient, convert, resize and crop, without torchvision.

Photos are read once: EXIF orientation applied, any mode converted to RGB, the short side resized
to the training resolution (Lanczos). Per step only a crop (random or centre) and an optional flip
remain, drawn from a seeded generator whose state is part of every checkpoint. Each example keeps
the original size and the crop offset, which SDXL takes as micro-conditioning.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .backdrop import Backdrop
from .errors import UserError

log = logging.getLogger("dreambooth")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB; transparency is composited on white, 16-bit is scaled down."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or arr.max() > 255 else 255.0
        image = Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image


def load_image(path: str | Path) -> Image.Image:
    """Open, apply EXIF orientation, convert to RGB. Raises OSError/ValueError for unusable files."""
    with Image.open(path) as im:
        im.load()
        im = ImageOps.exif_transpose(im)
        return to_rgb(im)


@dataclass
class Example:
    image: Image.Image               # resized so its short side is the training resolution
    prompt: str
    original_hw: tuple[int, int]     # (height, width) after EXIF rotation, before resizing
    path: Path


def scan_images(folder: str | Path, flag: str = "--instance-dir") -> list[Path]:
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"{flag} {folder}: no such folder")
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def resize_short_side(image: Image.Image, size: int) -> Image.Image:
    w, h = image.size
    scale = size / min(w, h)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    return image if new == (w, h) else image.resize(new, Image.LANCZOS)


def load_examples(folder: str | Path, prompt: str, resolution: int, captions: bool = False,
                  flag: str = "--instance-dir", warn=None) -> list[Example]:
    """Every usable image in ``folder``; unusable files are skipped with a warning naming them."""
    warn = warn or log.warning
    examples: list[Example] = []
    files = scan_images(folder, flag)
    image_stems = {p.stem for p in files if p.suffix.lower() in IMAGE_SUFFIXES}
    for path in files:
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            if path.suffix.lower() == ".txt" and path.stem in image_stems:
                if not captions:
                    warn(f"ignoring {path}: caption files are used only with --captions")
            else:
                warn(f"skipping {path}: not an image ({', '.join(IMAGE_SUFFIXES)})")
            continue
        try:
            image = load_image(path)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
            warn(f"skipping {path}: unreadable image ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")
            continue
        text = prompt
        caption = path.with_suffix(".txt")
        if captions and caption.is_file():
            text = caption.read_text(encoding="utf-8", errors="replace").strip() or prompt
        examples.append(Example(resize_short_side(image, resolution), text, (image.height, image.width), path))
    if not examples:
        raise UserError(f"{flag} {folder}: no usable image (looked for {', '.join(IMAGE_SUFFIXES)})")
    return examples


def crop_and_flip(example: Example, size: int, center: bool, flip: bool, gen: torch.Generator,
                  mask: np.ndarray | None = None):
    """Crop ``size``x``size`` and maybe flip; returns (CHW float tensor in [-1, 1], crop (top, left),
    ``mask`` (an (H, W) array of the picture) cut the same way, or None).

    Both random draws are always made, so the generator advances the same way whatever the flags
    and a resumed run sees the same stream.
    """
    w, h = example.image.size
    r_top, r_left, r_flip = torch.rand(3, generator=gen).tolist()
    if center:
        top, left = (h - size) // 2, (w - size) // 2
    else:
        top, left = int(r_top * (h - size + 1)), int(r_left * (w - size + 1))
    image = example.image.crop((left, top, left + size, top + size))
    if mask is not None:
        mask = mask[top:top + size, left:left + size]
    if flip and r_flip < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
        mask = None if mask is None else mask[:, ::-1]
    arr = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous(), (top, left), mask


@dataclass
class Batch:
    pixels: torch.Tensor             # (B, 3, H, W) in [-1, 1]
    prompts: list[str]
    original_hw: list[tuple[int, int]]
    crop_top_left: list[tuple[int, int]]
    is_prior: torch.Tensor           # (B,) bool
    indices: list[int | None]        # example index (class examples offset by len(instance)); None:
                                     # a picture made for this step only (a recoloured backdrop)
    loss_weights: torch.Tensor | None = None   # (B, 1, H, W) per-pixel weights; None: all equal


class ExampleStream:
    """An endless, seeded, resumable stream of batches: each epoch is a permutation of the
    instance examples; class examples are drawn from their own permutation, as many per step.
    With ``backdrop_augment`` > 0, that share of the instance examples that have a plain backdrop
    are shown on a backdrop of a random colour, and with ``backdrop_loss_weight`` < 1 an instance
    picture's plain backdrop weighs that much in the loss (``backdrop.py``). With ``backdrop_caption``
    the new backdrop is a named colour, the prompt names it, and it weighs fully. With ``caption_dropout``
    > 0, that share of all examples (instance and class) gets an empty prompt."""

    def __init__(self, instance: list[Example], prior: list[Example], batch_size: int, size: int,
                 center_crop: bool, random_flip: bool, seed: int, backdrop_augment: float = 0.0,
                 backdrop_loss_weight: float = 1.0, backdrop_caption: bool = False, caption_dropout: float = 0.0):
        self.instance, self.prior = instance, prior
        self.batch_size, self.size = batch_size, size
        self.center_crop, self.random_flip = center_crop, random_flip
        self.gen = torch.Generator().manual_seed(seed)
        self._order = {"instance": [], "prior": []}
        self.backdrop_augment = backdrop_augment
        self.backdrop_loss_weight = backdrop_loss_weight
        self.backdrop_caption = backdrop_caption
        self.caption_dropout = caption_dropout
        # found once per picture; a recoloured backdrop covers the same pixels, so its mask serves both flags
        uses_backdrops = backdrop_augment or backdrop_loss_weight != 1
        self.backdrops = [Backdrop.of(e.image) for e in instance] if uses_backdrops else [None] * len(instance)

    def _instance_pick(self, i: int) -> tuple[Example, bool, int | None, np.ndarray | None]:
        """(example, is_prior, index, backdrop mask) of instance example ``i``, its backdrop maybe recoloured."""
        example, backdrop = self.instance[i], self.backdrops[i]
        mask = None if backdrop is None else backdrop.mask
        if not self.backdrop_augment or torch.rand(1, generator=self.gen).item() >= self.backdrop_augment \
                or backdrop is None:
            return example, False, i, mask
        if self.backdrop_caption:
            image, prompt = backdrop.recaptioned(example.image, example.prompt, self.gen)
            named = prompt != example.prompt     # a backdrop the prompt names is taught, so it weighs fully
            return replace(example, image=image, prompt=prompt), False, None, None if named else mask
        return replace(example, image=backdrop.recoloured(example.image, self.gen)), False, None, mask

    def _take(self, kind: str, n: int, count: int) -> list[int]:
        out = []
        while len(out) < n:
            if not self._order[kind]:
                self._order[kind] = torch.randperm(count, generator=self.gen).tolist()
            out.append(self._order[kind].pop(0))
        return out

    def next_batch(self) -> Batch:
        picks = [self._instance_pick(i) for i in self._take("instance", self.batch_size, len(self.instance))]
        if self.prior:
            off = len(self.instance)
            picks += [(self.prior[i], True, off + i, None) for i in self._take("prior", self.batch_size, len(self.prior))]
        pixels, crops, weights = [], [], []
        for example, _, _, mask in picks:
            tensor, crop, mask = crop_and_flip(example, self.size, self.center_crop, self.random_flip, self.gen, mask)
            pixels.append(tensor)
            crops.append(crop)
            if self.backdrop_loss_weight != 1:   # the backdrop (cut like the picture) weighs less; the rest 1
                weights.append(torch.ones(1, *tensor.shape[1:]))
                if mask is not None:
                    weights[-1][0, torch.from_numpy(mask.copy())] = self.backdrop_loss_weight
        prompts = [p[0].prompt for p in picks]
        if self.caption_dropout:         # drawn only when on, so streams without it stay as they were
            drop = torch.rand(len(prompts), generator=self.gen) < self.caption_dropout
            prompts = ["" if d else p for p, d in zip(prompts, drop.tolist())]
        return Batch(torch.stack(pixels), prompts, [p[0].original_hw for p in picks], crops,
                     torch.tensor([p[1] for p in picks]), [p[2] for p in picks],
                     torch.stack(weights) if weights else None)

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state(), "order": {k: list(v) for k, v in self._order.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
        self._order = {k: list(v) for k, v in state["order"].items()}
