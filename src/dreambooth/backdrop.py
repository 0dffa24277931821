"""Plain backdrops: recolouring (``--backdrop-augment P``) and down-weighting in the loss
(``--backdrop-loss-weight W``).

A subject photographed on a plain backdrop (a product on white, a studio portrait, a toy-world shape)
can be shown on a backdrop of a random colour, or its backdrop's pixels can count less in the loss.

DreamBooth's identifier learns whatever the instance pictures share, and pictures taken on one or two
backdrops share the backdrop: "a sks triangle" then means the subject *on red*, and "on a yellow
background" fights it (the paper's "context-appearance entanglement"). With a share ``P`` of the
instance examples recoloured at each step, the backdrop is the one thing the pictures no longer share.

A backdrop is found only where it is plain: at least 60% of the border pixels lie within
``TOLERANCE`` of the border's median colour (not 90%: a close-up reaching an edge or a corner covers
up to about 40% of the border, and 2 of 5 toy instance pictures were missed); it is then every pixel
of that colour connected to the border. Pictures without one (a dog on grass) are left as they are.
New colours are drawn uniformly from the RGB cube, away from the subject's own main colours, so the
subject never dissolves into its backdrop. Down-weighting (kohya's "masked loss", with the mask found
rather than drawn) goes further: the backdrop's pixels barely train at all, so the model learns the
subject and leaves the background to the prompt.

Captioning (``--backdrop-caption``) names the new backdrop instead: it is one of ``NAMED_COLOURS``
and the prompt gains "on a <colour> background", so the picture now teaches what such a prompt
should draw: the subject, at its size, with that backdrop around it. A named backdrop is explained
by the prompt and so weighs fully in the loss; only backdrops the prompt does not name are
down-weighted (down-weighted too, toy subjects grew until they filled the picture). Off in the toy
preset: the toy benchmark with it is in docs/toy-benchmark.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from .toy.world import PALETTE

TOLERANCE = 40          # summed |RGB| difference still counted as the backdrop's colour
BORDER_SHARE = 0.6      # share of the border that must be the backdrop's colour (subjects may reach it)
SUBJECT_SHARE = 0.05    # a colour holding this share of the subject's pixels is one of its main colours
MIN_DISTANCE = 80       # summed |RGB| distance of a new backdrop from each main colour of the subject
CANDIDATES = 64         # colours drawn per recolouring (a fixed number, so the stream stays reproducible)
# --backdrop-caption: the new backdrop is one of these basic colours, named in the caption. The toy
# world's palette: 8 basic colour words, the only ones the toy model knows, and plain to any text encoder.
NAMED_COLOURS = PALETTE
CAPTION = "{prompt} on a {colour} background"    # "a orange", as the toy world's captions write it


def find_backdrop(image: Image.Image) -> np.ndarray | None:
    """(H, W) bool mask of a plain backdrop, or None if the picture has none."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
    h, w, _ = rgb.shape
    border = np.concatenate([rgb[0], rgb[-1], rgb[1:-1, 0], rgb[1:-1, -1]])
    colour = np.median(border, axis=0)
    close = np.abs(rgb - colour).sum(-1) <= TOLERANCE
    on_border = np.concatenate([close[0], close[-1], close[1:-1, 0], close[1:-1, -1]])
    if on_border.mean() < BORDER_SHARE:
        return None
    labels, _ = ndimage.label(close)    # 4-connected regions of the backdrop's colour
    touching = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    mask = np.isin(labels, touching[touching > 0])
    return mask if 0 < mask.sum() < h * w else None


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

