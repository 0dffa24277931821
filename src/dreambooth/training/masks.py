"""Loss masks (``--masked-loss``, as kohya's): where in an instance photo the loss counts.

A mask is an (H, W) float array of weights in [0, 1], cut and flipped with its photo, pooled to the
latents' size, and used as a per-pixel weight of the loss (``loss.per_example_mse``: a weighted
mean, so an example's loss keeps its scale whatever share is weighted). It comes from

* the photo's alpha channel (a cut-out subject: transparent pixels weigh 0), or
* ``NAME.mask.png`` beside ``NAME.jpg`` (the suffix in any case): its grey level, white 1 and black 0,
  times its alpha where it has one (transparent weighs 0, as in a cut-out photo).

``find_backdrop`` is one way to make masks: it finds a plain backdrop (a product on white, a studio
shot), every pixel of the border's colour connected to the border, where at least 60% of the
border lies within ``TOLERANCE`` of the border's median colour (not 90%: a close-up reaching an
edge or a corner covers up to about 40% of the border).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageChops
from scipy import ndimage

from ..images import MASK_SUFFIX, is_mask_file, middle, open_image

TOLERANCE = 40          # summed |RGB| difference still counted as the backdrop's colour
BORDER_SHARE = 0.6      # share of the border that must be the backdrop's colour (subjects may reach it)


def mask_file_for(photo: Path) -> Path | None:
    """``NAME.mask.png`` beside ``NAME.jpg``, or None. The suffix is matched in any case, as
    ``images.is_mask_file`` (which keeps such a file out of the photos) takes it: ``NAME.MASK.PNG``
    too; the exact ``NAME.mask.png`` first where there are both."""
    exact = photo.with_name(photo.stem + MASK_SUFFIX)
    if exact.is_file():
        return exact
    name = photo.stem + MASK_SUFFIX
    found = [p for p in photo.parent.iterdir() if len(p.name) == len(name) and p.name.startswith(photo.stem)
             and is_mask_file(p) and p.is_file()]
    return min(found, default=None)


def load_mask(photo: Path, size: tuple[int, int], photo_size: tuple[int, int] | None = None,
              warn=None) -> np.ndarray | None:
    """The weights of ``photo`` at ``size`` (width, height, after EXIF rotation): from
    ``NAME.mask.png`` when there is one, else from the photo's alpha channel, else None. A mask
    file of another size than the photo's (``photo_size``) is stretched to it, with a ``warn``."""
    side = mask_file_for(photo)
    if side is not None:
        mask = open_image(side, "--masked-loss", mode="L", keep_alpha=True)
        if mask.mode == "RGBA":       # a white mask on a transparent ground: transparent weighs 0
            mask = ImageChops.multiply(mask.convert("L"), mask.getchannel("A"))
        if photo_size is not None and mask.size != tuple(photo_size):
            if warn is not None:
                warn(f"--masked-loss: {side} is {mask.width}x{mask.height}, its photo {photo_size[0]}x{photo_size[1]}; "
                     "the mask is stretched to the photo")
            mask = mask.resize(tuple(photo_size), Image.BILINEAR)
        mask = middle(mask)                     # as its photo is cut
    else:
        rgba = open_image(photo, keep_alpha=True)
        if rgba.mode != "RGBA":
            return None
        mask = middle(rgba.getchannel("A"))
    if mask.size != size:
        mask = mask.resize(size, Image.BILINEAR)
    return np.asarray(mask, dtype=np.float32) / 255.0


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


def backdrop_weights(image: Image.Image, weight: float) -> np.ndarray | None:
    """Loss weights that count a plain backdrop ``weight`` and the rest 1 (None: no plain backdrop)."""
    backdrop = find_backdrop(image)
    if backdrop is None:
        return None
    weights = np.ones(backdrop.shape, dtype=np.float32)
    weights[backdrop] = weight
    return weights
