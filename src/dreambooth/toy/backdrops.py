"""The toy preset's data transform: instance pictures on recoloured backdrops, named in the prompt.

Toy-world pictures are a shape on a plain background, and DreamBooth's identifier learns whatever
the instance pictures share: pictures on one or two backgrounds teach "a sks triangle" to mean the
subject *on red*, and "on a yellow background" then fights it (the paper's context-appearance
entanglement). :class:`ToyBackdrops` (passed to the trainer whenever ``--model toy`` trains, see
``configs/toy.yaml``) therefore

* shows a share (``share``, 0.75) of the instance pictures drawn at each step on a new backdrop
  (``training.masks.find_backdrop`` finds it), kept away from the subject's own main colours;
* with ``named``, makes that backdrop one of the toy world's 8 palette colours and adds "on a
  <colour> background" to the prompt, so the picture teaches what such a prompt should draw;
* weighs a backdrop the prompt does not name ``backdrop_weight`` (0.1) in the loss (a loss mask, as
  ``--masked-loss`` uses), so the subject is learned and its backdrop hardly.

The measurements behind these values are in docs/toy-benchmark.md.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
from PIL import Image

from ..training.config import is_toy_preset
from ..training.data import Example
from ..training.masks import find_backdrop
from .world import PALETTE

SUBJECT_SHARE = 0.05    # a colour holding this share of the subject's pixels is one of its main colours
MIN_DISTANCE = 80       # summed |RGB| distance of a new backdrop from each main colour of the subject
CANDIDATES = 64         # colours drawn per recolouring (a fixed number, so the stream stays reproducible)
NAMED_COLOURS = PALETTE  # the 8 basic colour words the toy model knows
CAPTION = "{prompt} on a {colour} background"    # "a orange", as the toy world's captions write it


def main_colours(image: Image.Image, backdrop: np.ndarray) -> np.ndarray:
    """(K, 3) mean colours of the coarse colour bins that hold at least ``SUBJECT_SHARE`` of the subject."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.int64)[~backdrop]
    bins = pixels // 32
    keys = bins[:, 0] * 64 + bins[:, 1] * 8 + bins[:, 2]
    found, counts = np.unique(keys, return_counts=True)
    return np.array([pixels[keys == k].mean(0) for k in found[counts >= SUBJECT_SHARE * len(pixels)]]).reshape(-1, 3)


def random_colour(avoid: np.ndarray, gen: torch.Generator) -> np.ndarray:
    """A random RGB colour at least ``MIN_DISTANCE`` from each colour of ``avoid`` (or the farthest drawn)."""
    candidates = (torch.rand(CANDIDATES, 3, generator=gen) * 256).long().clamp(max=255).numpy()
    if len(avoid) == 0:
        return candidates[0]
    nearest = np.abs(candidates[:, None, :] - avoid[None]).sum(-1).min(1)
    ok = np.nonzero(nearest >= MIN_DISTANCE)[0]
    return candidates[ok[0] if len(ok) else int(nearest.argmax())]


def named_colour(avoid: np.ndarray, gen: torch.Generator) -> str | None:
    """A random name of ``NAMED_COLOURS`` at least ``MIN_DISTANCE`` from each colour of ``avoid``, or None."""
    names = list(NAMED_COLOURS)
    for k in torch.randperm(len(names), generator=gen).tolist():    # always one draw: a reproducible stream
        if len(avoid) == 0 or np.abs(np.array(NAMED_COLOURS[names[k]]) - avoid).sum(-1).min() >= MIN_DISTANCE:
            return names[k]
    return None


def recolour(image: Image.Image, backdrop: np.ndarray, colour: np.ndarray) -> Image.Image:
    rgb = np.asarray(image.convert("RGB")).copy()
    rgb[backdrop] = colour.astype(np.uint8)
    return Image.fromarray(rgb)


@dataclass
class Backdrop:
    """A picture's plain backdrop, and the colours a new one must keep away from."""
    mask: np.ndarray
    avoid: np.ndarray

    @classmethod
    def of(cls, image: Image.Image) -> "Backdrop | None":
        mask = find_backdrop(image)
        return None if mask is None else cls(mask, main_colours(image, mask))

    def recoloured(self, image: Image.Image, gen: torch.Generator) -> Image.Image:
        return recolour(image, self.mask, random_colour(self.avoid, gen))

    def recaptioned(self, image: Image.Image, prompt: str, gen: torch.Generator) -> tuple[Image.Image, str]:
        """The picture on a backdrop of a named colour and the prompt naming it (or, should every named
        colour be too close to the subject's, on a random colour with the prompt unchanged)."""
        name = named_colour(self.avoid, gen)
        if name is None:
            return self.recoloured(image, gen), prompt
        return recolour(image, self.mask, np.array(NAMED_COLOURS[name])), CAPTION.format(prompt=prompt, colour=name)


class ToyBackdrops:
    """The data transform (``training.data.ExampleTransform``) described in the module doc."""

    def __init__(self, share: float = 0.75, named: bool = True, backdrop_weight: float = 0.1):
        self.share, self.named, self.backdrop_weight = share, named, backdrop_weight
        self._backdrops: dict[int, Backdrop] = {}

    def prepare(self, examples: list[Example], say: Callable[[str], None]) -> None:
        for example in examples:
            backdrop = Backdrop.of(example.image)     # found once; a recoloured one covers the same pixels
            if backdrop is None:
                continue
            self._backdrops[id(example)] = backdrop
            if self.backdrop_weight != 1:
                example.mask = np.where(backdrop.mask, np.float32(self.backdrop_weight), np.float32(1)).astype(np.float32)
        say(f"toy backdrops: {len(self._backdrops)} of {len(examples)} instance pictures have a plain backdrop")

    def __call__(self, example: Example, gen: torch.Generator) -> Example:
        if not self.share:
            return example
        drawn = torch.rand(1, generator=gen).item()       # drawn for every pick: a reproducible stream
        backdrop = self._backdrops.get(id(example))
        if drawn >= self.share or backdrop is None:
            return example
        if self.named:
            image, prompt = backdrop.recaptioned(example.image, example.prompt, gen)
            named = prompt != example.prompt     # a backdrop the prompt names is taught, so it weighs fully
            return replace(example, image=image, prompt=prompt, mask=None if named else example.mask)
        return replace(example, image=backdrop.recoloured(example.image, gen))


def uses_toy_preset(preset: str | None, model: str | None) -> bool:
    """The toy preset is in use: asked for (``--config toy``, or a copy of its file), or under the
    settings of a run on the toy model (``--model toy``, ``model: toy`` in a preset, a toy run's
    training_args.json as ``--config``: ``build_config`` lays the toy preset beneath them)."""
    return model == "toy" or (preset is not None and is_toy_preset(preset))


def toy_transforms() -> list[ToyBackdrops]:
    """The data transforms the toy preset passes to the trainer."""
    return [ToyBackdrops()]
