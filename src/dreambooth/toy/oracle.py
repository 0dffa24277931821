"""Read a toy-world picture back: which background, which object colours, patterned or solid, which shape.

Works on rendered pictures (exact) and on generated ones (blurred edges, off-palette pixels):

1. every pixel is labelled with its nearest palette colour;
2. the background is the commonest label on a 2-pixel frame around the image (a shape may touch the
   border but never covers most of the frame);
3. object pixels are the others; the object's main colour is their commonest label;
4. the pattern is read inside the object eroded by one pixel (so the blended outline of a solid
   shape does not count), from *clean* pixels only (within ``CLEAN_DISTANCE`` of a palette colour:
   a blend of two colours, which a decoder draws when it is unsure, is neither): the second colour
   is the runner-up label there, and the pattern score is ``min(main, second) / (main + second)``
   -- 0 for a solid shape, 0.5 for a balanced two-colour pattern (stripes, checker), about 0.3 for
   dots. It counts only when the two colours are what the object is made of (at least
   ``MIN_CLEAN_SHARE`` of its interior) and one of them is repeated (at least two separate
   patches in the whole object), so a smudge, a single off-colour blob or a noisy texture scores 0;
5. the shape is the template (circle, square, triangle, cross) that best overlaps the object mask when
   placed on the mask's bounding box.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .world import COLOURS, PALETTE, SHAPES, shape_mask

_PALETTE = np.array([PALETTE[c] for c in COLOURS], dtype=np.float32)
# A second colour is reported only if it covers at least this share of the object's interior.
MIN_SECOND_SHARE = 0.08
# A pixel is clean when its colour is this close to a palette colour (RGB distance; the closest two
# palette colours, yellow and orange, are 81 apart).
CLEAN_DISTANCE = 60.0
# A pattern's two colours cover at least this share of the object's interior.
MIN_CLEAN_SHARE = 0.3
# A patch of the second colour counts from this many pixels.
MIN_PATCH = 2


@dataclass(frozen=True)
class Reading:
    background: str
    colour: str | None            # the object's main colour (None: no object found)
    second: str | None            # the pattern's colour, if any
    pattern: float                # 0 solid ... 0.5 balanced two-colour pattern
    shape: str | None
    shape_iou: float
    object_fraction: float        # share of the image that is not background

    @property
    def patterned(self) -> bool:
        return self.pattern >= PATTERN_THRESHOLD

    def shows(self, subject) -> bool:
        """A two-colour pattern in exactly the subject's two colours (a ``world.Subject``)."""
        return self.patterned and {self.colour, self.second} == {subject.colour, subject.pattern_colour}

    def as_dict(self) -> dict:
        return asdict(self)


PATTERN_THRESHOLD = 0.1   # a reading with pattern >= this shows a two-colour pattern


def to_array(image) -> np.ndarray:
    """(H, W, 3) uint8 from a PIL image, a uint8 array, or a float array in [0, 1]."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr.astype(np.float32) * 255), 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    return arr[..., :3]


def labels(image) -> np.ndarray:
    """Index into ``COLOURS`` of each pixel's nearest palette colour."""
    return _labels_and_clean(image)[0]


def _labels_and_clean(image) -> tuple[np.ndarray, np.ndarray]:
    arr = to_array(image).astype(np.float32)
    dist = ((arr[:, :, None, :] - _PALETTE[None, None]) ** 2).sum(-1)
    return dist.argmin(-1), dist.min(-1) <= CLEAN_DISTANCE ** 2


def _patches(mask: np.ndarray) -> int:
    """Separate (4-connected) patches of at least ``MIN_PATCH`` pixels."""
    from scipy.ndimage import label
    ids, n = label(mask)
    return int((np.bincount(ids.ravel(), minlength=n + 1)[1:] >= MIN_PATCH).sum())


def _erode(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] &= mask[:-1]
    out[:-1] &= mask[1:]
    out[:, 1:] &= mask[:, :-1]
    out[:, :-1] &= mask[:, 1:]
    return out


def _bbox(mask: np.ndarray) -> tuple[float, float, float] | None:
    """Centre and half-width of the object's bounding box, ignoring rows/columns with a single stray
    pixel."""
    rows = np.nonzero(mask.sum(1) >= 2)[0]
    cols = np.nonzero(mask.sum(0) >= 2)[0]
    if len(rows) == 0 or len(cols) == 0:
        return None
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) / 2


def classify_shape(mask: np.ndarray) -> tuple[str | None, float]:
    box = _bbox(mask)
    if box is None:
        return None, 0.0
    cx, cy, half = box
    best, best_iou = None, -1.0
    for shape in SHAPES:
        # a pixel-centred template is a little smaller than its bounding box: try both fits
        for h in (half, half - 0.5):
            t = shape_mask(shape, cx, cy, h, mask.shape[0])
            iou = (t & mask).sum() / max((t | mask).sum(), 1)
            if iou > best_iou:
                best, best_iou = shape, float(iou)
    return best, best_iou


def read(image) -> Reading:
    lab, clean = _labels_and_clean(image)
    h, w = lab.shape
    frame = np.ones_like(lab, dtype=bool)
    frame[2:h - 2, 2:w - 2] = False
    bg = int(np.bincount(lab[frame], minlength=len(COLOURS)).argmax())
    obj = lab != bg
    fraction = float(obj.mean())
    if obj.sum() < 4:
        return Reading(COLOURS[bg], None, None, 0.0, None, 0.0, fraction)
    counts = np.bincount(lab[obj], minlength=len(COLOURS))
    main = int(counts.argmax())
    inner = _erode(obj)
    if inner.sum() < 4:
        inner = obj
    inner_counts = np.bincount(lab[inner & clean], minlength=len(COLOURS)).astype(np.float64)
    inner_counts[bg] = 0
    order = np.argsort(-inner_counts, kind="stable")
    first, runner = (order[0], order[1]) if order[0] == main else (main, order[0])
    a, b = inner_counts[first], inner_counts[runner]
    share = float(min(a, b) / (a + b)) if a + b > 0 else 0.0
    structured = ((a + b) >= MIN_CLEAN_SHARE * inner.sum()
                  and max(_patches(obj & clean & (lab == c)) for c in (first, runner)) >= 2)
    second = COLOURS[runner] if share >= MIN_SECOND_SHARE and b > 0 else None
    shape, iou = classify_shape(obj)
    return Reading(COLOURS[bg], COLOURS[main], second, share if structured else 0.0, shape, iou, fraction)
