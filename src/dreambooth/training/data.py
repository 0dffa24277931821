"""Training images: find, check, orient, convert, resize and crop, without torchvision.

Photos are read once (``images.open_image``: EXIF orientation applied, any mode converted to RGB),
the short side resized to the training resolution (Lanczos). Per step only a crop (random or centre)
and an optional flip remain, drawn from a seeded generator whose state is part of every checkpoint.
Each example keeps the original size and the crop offset, which SDXL takes as micro-conditioning,
and optionally a loss mask (``masks``), cut and flipped with it.

Data transforms (:class:`ExampleTransform`) change instance examples as they are drawn, with the
stream's generator, so a resumed run sees the same pictures: the toy world's recoloured backdrops
(``dreambooth.toy.backdrops``) are one, passed in by the toy preset.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np
import torch
from PIL import Image

from .. import progress
from ..errors import UserError
from ..images import (IMAGE_SUFFIXES, MASK_SUFFIX, MAX_ASPECT, UNREAD_SUFFIXES, is_mask_file, list_files, middle,
                      read_image, to_rgb, transparent_all_over, unread_formats)
from ..text_files import decode_text
from .masks import load_mask
from .photo_notes import Repeats, one_line as _one_line, photo_notes, transparent

log = logging.getLogger("dreambooth")
MANY_PHOTOS = 100      # DreamBooth teaches a subject from 3-20 photos; far more is likely another folder or task
CAPTION_SUFFIXES = (".txt", ".caption")      # .caption: kohya's default caption extension; .txt wins beside it


@dataclass
class Example:
    image: Image.Image               # resized so its short side is the training resolution
    prompt: str
    original_hw: tuple[int, int]     # (height, width) after EXIF rotation, before resizing
    path: Path
    mask: np.ndarray | None = None   # (H, W) loss weights in [0, 1] at the image's size; None: all 1
    digest: str | None = None        # the file's SHA-256 (photos; not class images)


class ExampleTransform(Protocol):
    """Changes an instance example as it is drawn for a step.

    ``prepare`` sees the instance examples once before training (and may give them masks);
    ``__call__`` gets one example and the stream's generator and returns it, or a new example made
    for this step only (which is then never cached as latents). Every call must draw from ``gen``
    the same way whatever it decides, so the stream stays reproducible."""

    def prepare(self, examples: list[Example], say: Callable[[str], None]) -> None: ...

    def __call__(self, example: Example, gen: torch.Generator) -> Example: ...


def resize_short_side(image: Image.Image, size: int) -> Image.Image:
    image = middle(image)
    w, h = image.size
    scale = size / min(w, h)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    return image if new == (w, h) else image.resize(new, Image.LANCZOS)


def read_caption(path: Path, warn) -> str:
    """A caption file's text (``decode_text``); other bytes are replaced, with a warning."""
    raw = path.read_bytes()
    try:
        return decode_text(raw).strip()
    except UnicodeDecodeError:
        warn(f"{path}: not UTF-8 text; its undecodable bytes are replaced (save it as UTF-8)")
        return decode_text(raw, errors="replace").strip()


def load_examples(folder: str | Path, prompt: str, resolution: int, captions: bool = False,
                  flag: str = "--instance-dir", warn=None, masks: bool = False) -> list[Example]:
    """Every usable image in ``folder``; unusable files are skipped with a warning naming them (one
    line for the files passed over for one reason). With ``masks`` each photo gets its loss mask
    (``masks.load_mask``) where it has one."""
    warn = warn or log.warning
    examples: list[Example] = []
    # files passed over for one reason: one line for them all (a folder of 20 captioned photos without
    # --captions would otherwise print 20)
    unused_masks, unused_captions, not_images, small, empty, long, blank, masklike, unread, shadowed, clear = \
        ([] for _ in range(11))
    copies = Repeats()
    # (path, detail); captions are the photos' (class images are trained with --class-prompt)
    caption_use = "only with --captions" if flag != "--class-dir" else "for the photos only, with --captions"
    files = list_files(folder, flag, warn=warn)
    image_stems = {p.stem for p in files if p.suffix.lower() in IMAGE_SUFFIXES and not is_mask_file(p)}
    caption_files = {p.stem: p for p in sorted(files, key=lambda p: p.suffix.lower() == ".txt")   # NAME.txt last: kept
                     if p.suffix.lower() in CAPTION_SUFFIXES}          # NAME.txt, NAME.TXT or NAME.caption
    for path in files:
        if is_mask_file(path):          # never a photo of its own
            if not masks:
                unused_masks.append((path, ""))
            elif path.name[:-len(MASK_SUFFIX)] not in image_stems:
                warn(f"ignoring {path}: no photo named {path.name[:-len(MASK_SUFFIX)]} beside it")
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES and path.stem.lower().endswith(("_mask", "-mask", ".mask")):
            masklike.append((path, ""))        # trained as a photo, as named; masks are NAME.mask.png
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            if path.suffix.lower() in CAPTION_SUFFIXES and path.stem in image_stems:
                if not captions:
                    unused_captions.append((path, ""))
                elif caption_files[path.stem] != path:
                    shadowed.append((path, ""))
            elif path.suffix.lower() in UNREAD_SUFFIXES:
                unread.append(path.name)        # pictures (HEIC from a phone): said with what to do
            else:
                not_images.append((path, ""))
            continue
        try:
            image = read_image(path)
        except UserError as exc:
            warn(f"skipping {exc}")
            continue
        if transparent_all_over(image):      # composited on white it would train as a blank picture
            clear.append((path, ""))
            continue
        image = to_rgb(image)
        text = prompt
        caption = caption_files.get(path.stem)
        if captions and caption is not None:
            text = read_caption(caption, warn)
            if not text:
                empty.append((caption, ""))
            text = text or prompt
        # the photos' bytes hashed once: copies said, and a checkpoint's fingerprint (resume_settings); not
        # the class images, which the model made one by one and which may be thousands
        digest = copies.add(path, text) if flag != "--class-dir" else None
        if min(image.size) < resolution:
            small.append((path, f"{image.width}x{image.height}"))
        if max(image.size) > MAX_ASPECT * min(image.size):
            long.append((path, f"{image.width}x{image.height}"))
        resized = resize_short_side(image, resolution)
        mask = None
        if masks:
            try:
                mask = load_mask(path, resized.size, image.size, warn)
            except UserError as exc:
                warn(f"no mask for {path}: {exc}")
            if mask is not None and not mask.any():
                blank.append((path, ""))
        examples.append(Example(resized, text, (image.height, image.width), path, mask, digest))
    suffixes = ", ".join(IMAGE_SUFFIXES)
    a_picture, pictures = ("a photo", "photos") if flag == "--instance-dir" else ("an image", "images")
    for group, alone, together in (
            (unused_masks, lambda p, _: f"ignoring {p}: mask files are used only with --masked-loss",
             lambda n, names: f"ignoring {n} mask files in {folder} ({names}): they are used only with --masked-loss"),
            (unused_captions, lambda p, _: f"ignoring {p}: caption files are used {caption_use}",
             lambda n, names: f"ignoring {n} caption files in {folder} ({names}): they are used {caption_use}"),
            (masklike, lambda p, _: f"{p}: named like a mask but trained as a photo (a mask is NAME.mask.png, with "
                                    "--masked-loss)",
             lambda n, names: f"{n} files in {folder} are named like masks but trained as photos ({names}); a mask is "
                              "NAME.mask.png, with --masked-loss"),
            (shadowed, lambda p, _: f"ignoring {p}: the {p.stem}.txt beside it is its photo's caption",
             lambda n, names: f"ignoring {n} .caption files in {folder} ({names}): the NAME.txt beside each is its "
                              "photo's caption"),
            transparent(clear, folder),
            copies.group(folder, pictures),
            (not_images, lambda p, _: f"skipping {p}: not an image ({suffixes})",
             lambda n, names: f"skipping {n} files in {folder} that are not images ({names}; images are {suffixes})"),
            (small, lambda p, size: f"{p}: {size}, upscaled to the training size {resolution}; {a_picture} at least "
                                    "that large trains sharper",
             lambda n, names: f"{n} {pictures} in {folder} are below the training size {resolution} and are upscaled "
                              f"({names}); {pictures} at least that large train sharper"),
            (empty, lambda p, _: f"{p}: an empty caption; its photo is trained with --instance-prompt",
             lambda n, names: f"{n} empty caption files in {folder} ({names}): their photos are trained with "
                              "--instance-prompt"),
            (long, lambda p, size: f"{p}: {size}, longer than {MAX_ASPECT}:1; its middle {MAX_ASPECT}:1 is trained",
             lambda n, names: f"{n} photos in {folder} are longer than {MAX_ASPECT}:1 ({names}); their middle "
                              f"{MAX_ASPECT}:1 is trained"),
            (blank, lambda p, _: f"--masked-loss: {p}'s mask is black all over: nothing of it is trained",
             lambda n, names: f"--masked-loss: {n} photos' masks are black all over ({names}): nothing of them "
                              "is trained")):
        if group:
            warn(_one_line(group, alone, together))
    if unread:
        warn(unread_formats(f"{flag} {folder}", unread))
    if flag == "--instance-dir" and len(examples) > MANY_PHOTOS:
        warn(f"{flag} {folder}: {len(examples)} photos, where DreamBooth teaches a subject from 3 to 20; with so "
             "many each is seen only a few times in --max-steps (check that the folder is the one meant, or raise "
             "--max-steps)")
    if captions and flag == "--instance-dir" and examples and not caption_files:
        warn(f"--captions: no caption file (NAME.txt or NAME.caption beside NAME.jpg) in {folder}; every photo is trained with "
             "--instance-prompt")
    if not examples:
        inner = image_subfolders(folder)
        hint = f"; its sub-folders are not read: give one, e.g. {flag} '{inner[0]}'" if inner else ""
        raise UserError(f"{flag} {folder}: no usable image (looked for {', '.join(IMAGE_SUFFIXES)}){hint}")
    if masks:
        with_mask = sum(e.mask is not None for e in examples)
        if examples and len(blank) == len(examples):
            raise UserError(f"--masked-loss: every mask in {folder} is black all over, so nothing would be trained; "
                            "white (or opaque) marks what counts")
        if not with_mask:
            warn(f"--masked-loss: no photo in {folder} has an alpha channel or a NAME{MASK_SUFFIX} beside it; "
                 "every pixel counts")
    return examples


def image_subfolders(folder: str | Path) -> list[Path]:
    """The sub-folders of ``folder`` with images in them (kohya's ``img/10_sks dog``), which are not read."""
    return sorted(d for d in Path(folder).expanduser().iterdir() if d.is_dir() and not d.name.startswith(".")
                  and any(f.suffix.lower() in IMAGE_SUFFIXES for f in d.iterdir()))


def draw_crop(example: Example, size: int, center: bool, flip: bool, gen: torch.Generator) -> tuple[tuple[int, int], bool]:
    """Where to crop ``size``x``size`` (top, left) and whether to flip. Both random draws are always
    made, so the generator advances the same way whatever the flags and a resumed run sees the same stream."""
    w, h = example.image.size
    r_top, r_left, r_flip = torch.rand(3, generator=gen).tolist()
    if center:
        return ((h - size) // 2, (w - size) // 2), flip and r_flip < 0.5
    return (int(r_top * (h - size + 1)), int(r_left * (w - size + 1))), flip and r_flip < 0.5


def cut(example: Example, size: int, crop: tuple[int, int], flipped: bool, pixels: bool = True):
    """(CHW float tensor in [-1, 1], or None when not ``pixels``; the example's mask cut the same way or None)."""
    top, left = crop
    mask = None if example.mask is None else example.mask[top:top + size, left:left + size]
    if flipped and mask is not None:
        mask = mask[:, ::-1]
    if not pixels:
        return None, mask
    image = example.image.crop((left, top, left + size, top + size))
    if flipped:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    arr = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous(), mask


def crop_and_flip(example: Example, size: int, center: bool, flip: bool, gen: torch.Generator):
    """Crop ``size``x``size`` and maybe flip; returns (CHW float tensor in [-1, 1], crop (top, left),
    the example's mask cut the same way or None, whether it was flipped)."""
    crop, flipped = draw_crop(example, size, center, flip, gen)
    tensor, mask = cut(example, size, crop, flipped)
    return tensor, crop, mask, flipped


@dataclass
class Batch:
    pixels: torch.Tensor | None      # (B, 3, H, W) in [-1, 1]; rows not made (``needs_pixels``) are 0; None: no row made
    prompts: list[str]
    original_hw: list[tuple[int, int]]
    crop_top_left: list[tuple[int, int]]
    is_prior: torch.Tensor           # (B,) bool
    indices: list[int | None]        # example index (class examples offset by len(instance)); None:
                                     # a picture made for this step only (by a transform)
    loss_weights: torch.Tensor | None = None   # (B, 1, H, W) per-pixel weights; None: all equal
    cache_keys: list | None = None   # (index, crop, flipped): the same key is the same pixels; None: never again
    rows: list[int] | None = None    # several processes: the rows of the global batch this process
    global_size: int | None = None   # trains on, and that batch's size (None: this is the whole batch)

    def drawn(self, draw) -> torch.Tensor:
        """``draw(n)`` (n rows from the noise stream all processes share) for this batch's rows: drawn
        for the whole global batch and sliced, so N processes draw what one process with the global
        batch draws, and each gets its own rows' noise and timesteps."""
        return draw(len(self.prompts)) if self.rows is None else draw(self.global_size)[self.rows]

    def select(self, rows: list[int]) -> "Batch":
        """This process's share of the global batch: the given rows, in order."""
        pick = torch.tensor(rows)
        return Batch(None if self.pixels is None else self.pixels[pick], [self.prompts[r] for r in rows], [self.original_hw[r] for r in rows],
                     [self.crop_top_left[r] for r in rows], self.is_prior[pick], [self.indices[r] for r in rows],
                     None if self.loss_weights is None else self.loss_weights[pick],
                     None if self.cache_keys is None else [self.cache_keys[r] for r in rows],
                     list(rows), len(self.prompts))


class ExampleStream:
    """An endless, seeded, resumable stream of batches: each epoch is a permutation of the
    instance examples; class examples are drawn from their own permutation, as many per step.
    ``transforms`` change instance examples as they are drawn; with ``caption_dropout`` > 0, that
    share of all examples (instance and class) gets an empty prompt.

    ``shard=(rank, world)``: one of ``world`` processes. Each draws the whole global batch
    (``batch_size`` x ``world`` instance examples, as many class examples) from the same seeded
    generator and keeps its own slice, so N processes x batch b see exactly the examples one process
    x batch N*b sees, and one generator state resumes them all.

    A batch larger than the photos repeats a photo within it (each epoch is one permutation): said
    once, through ``warn``, by the first process."""

    def __init__(self, instance: list[Example], prior: list[Example], batch_size: int, size: int,
                 center_crop: bool, random_flip: bool, seed: int, caption_dropout: float = 0.0,
                 transforms: Sequence[ExampleTransform] = (), shard: tuple[int, int] = (0, 1),
                 warn: Callable[[str], None] | None = None):
        self.instance, self.prior = instance, prior
        if batch_size * shard[1] > len(instance) and shard[0] == 0:
            batch = f"--batch-size {batch_size}" + (f" x {shard[1]} processes" if shard[1] > 1 else "")
            (warn or progress.warn)(f"{batch} is more than the {len(instance)} photo(s): every batch shows a photo "
                                    "more than once (in other crops, with other noise); give more photos or a smaller "
                                    "--batch-size" + (" or fewer processes" if shard[1] > 1 else ""))
        for note in photo_notes(instance, size, center_crop) if shard[0] == 0 else ():
            (warn or progress.warn)(note)
        self.shard = shard
        self.batch_size, self.size = batch_size, size
        self.center_crop, self.random_flip = center_crop, random_flip
        self.gen = torch.Generator().manual_seed(seed)
        self._order = {"instance": [], "prior": []}
        self.caption_dropout = caption_dropout
        self.transforms = list(transforms)
        # (cache key) -> whether that picture's pixels are wanted; the trainer's latent cache answers
        # no for what it keeps, so a step does not cut and convert photos only to throw them away
        self.needs_pixels: Callable[[tuple], bool] = lambda key: True

    def _instance_pick(self, i: int) -> tuple[Example, bool, int | None]:
        example = self.instance[i]
        for transform in self.transforms:
            example = transform(example, self.gen)
        return example, False, (i if example is self.instance[i] else None)

    def _take(self, kind: str, n: int, count: int) -> list[int]:
        out = []
        while len(out) < n:
            if not self._order[kind]:
                self._order[kind] = torch.randperm(count, generator=self.gen).tolist()
            out.append(self._order[kind].pop(0))
        return out

    def next_batch(self) -> Batch:
        rank, world = self.shard
        n = self.batch_size * world          # the global batch, drawn alike by every process
        picks = [self._instance_pick(i) for i in self._take("instance", n, len(self.instance))]
        if self.prior:
            off = len(self.instance)
            picks += [(self.prior[i], True, off + i) for i in self._take("prior", n, len(self.prior))]
        pixels, crops, masks, keys = [], [], [], []
        for example, _, index in picks:
            crop, flipped = draw_crop(example, self.size, self.center_crop, self.random_flip, self.gen)
            key = None if index is None else (index, crop, flipped)
            tensor, mask = cut(example, self.size, crop, flipped, pixels=key is None or self.needs_pixels(key))
            pixels.append(tensor)
            crops.append(crop)
            masks.append(mask)
            keys.append(key)
        weights = None
        if any(m is not None for m in masks):         # the others weigh 1 everywhere
            weights = torch.stack([torch.ones(1, self.size, self.size) if m is None
                                   else torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))[None] for m in masks])
        prompts = [p[0].prompt for p in picks]
        if self.caption_dropout:         # drawn only when on, so streams without it stay as they were
            drop = torch.rand(len(prompts), generator=self.gen) < self.caption_dropout
            prompts = ["" if d else p for p, d in zip(prompts, drop.tolist())]
        made = [t for t in pixels if t is not None]
        stacked = None if not made else torch.stack([torch.zeros_like(made[0]) if t is None else t for t in pixels])
        batch = Batch(stacked, prompts, [p[0].original_hw for p in picks], crops,
                      torch.tensor([p[1] for p in picks]), [p[2] for p in picks], weights, keys)
        if world == 1:
            return batch
        mine = range(rank * self.batch_size, (rank + 1) * self.batch_size)
        return batch.select([*mine, *([n + r for r in mine] if self.prior else [])])

    def every_picture(self) -> list[tuple[tuple, torch.Tensor]] | None:
        """(cache key, pixels) of every picture this stream can draw whose latents may be kept, when
        there are few (one crop per example: square or centre-cropped; both flips if flipping);
        None when crops are random. Made with a generator of its own: the stream is untouched."""
        examples = [(i, e) for i, e in enumerate(self.instance) if not self.transforms]
        examples += [(len(self.instance) + i, e) for i, e in enumerate(self.prior)]
        if not self.center_crop and any(e.image.size != (self.size, self.size) for _, e in examples):
            return None
        out, gen = [], torch.Generator().manual_seed(0)
        for index, example in examples:
            tensor, crop, _, _ = crop_and_flip(example, self.size, True, False, gen)
            out.append(((index, crop, False), tensor))
            if self.random_flip:
                out.append(((index, crop, True), tensor.flip(-1)))
        return out

    def every_prompt(self) -> list[str] | None:
        """Every prompt this stream can give a picture, or None when transforms may change them."""
        if self.transforms:
            return None
        prompts = [e.prompt for e in self.instance + self.prior] + ([""] if self.caption_dropout else [])
        return list(dict.fromkeys(prompts))

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state(), "order": {k: list(v) for k, v in self._order.items()},
                "counts": {"instance": len(self.instance), "prior": len(self.prior)}}

    def load_state_dict(self, state: dict) -> list[str]:
        """The checkpoint's stream; returns the kinds ("instance", "prior") now more or fewer (photos added
        or removed, --num-class-images changed): the rest of their epoch is dropped and a new one drawn from
        the checkpoint's generator, alike on every resume (states without counts: where an index is gone)."""
        self.gen.set_state(state["gen"])
        counts, was = {"instance": len(self.instance), "prior": len(self.prior)}, state.get("counts", {})
        restarted = [k for k, order in state["order"].items()
                     if was.get(k, counts[k]) != counts[k] or any(i >= counts[k] for i in order)]
        self._order = {k: [] if k in restarted else list(v) for k, v in state["order"].items()}
        return restarted
