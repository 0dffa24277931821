"""The toy world: coloured shapes on plain backgrounds, rendered exactly and reproducibly.

Everything here is fixed by the toy-world issue, because checks outside the repo render it too:

- images are 32x32 RGB: a plain background of one palette colour and one shape of another palette
  colour, centred anywhere it fits, half-width 25% to 38% of the image side;
- the palette and the four shapes below;
- captions ``a {colour} {shape} on a {colour} background``, dropped to ``""`` 10% of the time
  (so the model also learns the unconditional prediction classifier-free guidance needs).

One addition of ours (``PARTIAL_FORMS`` below, used by pretraining from a given step): a share of the
captions leaves out the colour, the background or both (``a square on a red background``,
``a green square``, ``a square``). With the full form only, a prompt that names no colour is out of
distribution for the base ("a square" drew red blobs, "a circle" a blank picture), so a DreamBooth
class prompt ``a <shape>`` meant nothing and an identifier had no colour slot to take over. Real
captions vary in detail the same way. The full form stays the majority, so every prompt of the
issue's form means what it did.

Pixels are either exactly the background colour or exactly a shape colour (no anti-aliasing): a
pixel belongs to the shape when its centre does. Patterns (stripes, checker, dots) never occur in
pretraining captions or images; they exist for DreamBooth *subjects*, which the base model cannot
draw from a class prompt alone.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

IMAGE_SIZE = 32
MIN_HALF_WIDTH = 0.25   # of the image side
MAX_HALF_WIDTH = 0.38
CAPTION_DROPOUT = 0.1

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "purple": (140, 40, 180),
    "orange": (250, 140, 20),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
PATTERNS: tuple[str, ...] = ("stripes", "checker", "dots")
CAPTION_TEMPLATE = "a {colour} {shape} on a {background} background"
# The cross (plus sign): arms as long as the half-width, a third of it thick on each side.
CROSS_ARM = 1 / 3


@dataclass(frozen=True)
class Scene:
    """One picture of the world. ``cx, cy, half`` are in pixels (continuous); with a ``pattern`` the
    shape is drawn in ``colour`` and the pattern in ``pattern_colour`` (subjects only)."""
    shape: str
    colour: str
    background: str
    cx: float
    cy: float
    half: float
    pattern: str | None = None
    pattern_colour: str | None = None
    pattern_period: int = 8
    pattern_phase: int = 0

    def caption(self) -> str:
        return caption(self.colour, self.shape, self.background)


@dataclass(frozen=True)
class Subject:
    """A DreamBooth subject: a shape of one colour carrying a pattern of a second colour."""
    shape: str
    colour: str
    pattern: str
    pattern_colour: str
    period: int = 8

    def scene(self, background: str, rng: np.random.Generator, size: int = IMAGE_SIZE) -> Scene:
        base = sample_scene(rng, size=size, shape=self.shape, colour=self.colour, background=background,
                            avoid=(self.colour, self.pattern_colour))
        return replace(base, pattern=self.pattern, pattern_colour=self.pattern_colour,
                       pattern_period=self.period, pattern_phase=0)


def caption(colour: str | None, shape: str, background: str | None) -> str:
    """The world's caption; a colour given as ``None`` is left out (a partial caption)."""
    if colour and background:
        return CAPTION_TEMPLATE.format(colour=colour, shape=shape, background=background)
    text = f"a {colour} {shape}" if colour else f"a {shape}"
    return text + (f" on a {background} background" if background else "")


# The partial forms, as (keep the object colour, keep the background), drawn with equal chances.
PARTIAL_FORMS: tuple[tuple[bool, bool], ...] = ((True, False), (False, True), (False, False))


def partial_caption(colour: str, shape: str, background: str, form: int) -> str:
    """The caption of (colour, shape, background) in ``PARTIAL_FORMS[form]``."""
    keep_colour, keep_background = PARTIAL_FORMS[form]
    return caption(colour if keep_colour else None, shape, background if keep_background else None)


def rng_for(seed: int | np.random.Generator | None) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def sample_scene(rng: np.random.Generator | int | None, size: int = IMAGE_SIZE, shape: str | None = None,
                 colour: str | None = None, background: str | None = None,
                 avoid: tuple[str, ...] = ()) -> Scene:
    """A random scene; any of shape/colour/background may be fixed. The background is never the
    shape's colour (nor any colour in ``avoid``). Always draws the same random numbers in the same
    order, so a seed gives the same geometry whatever is fixed."""
    rng = rng_for(rng)
    u_shape, u_colour, u_bg, u_half, u_x, u_y = rng.random(6)
    shape = shape or SHAPES[int(u_shape * len(SHAPES))]
    colour = colour or COLOURS[int(u_colour * len(COLOURS))]
    if background is None:
        choices = [c for c in COLOURS if c != colour and c not in avoid]
        background = choices[int(u_bg * len(choices))]
    if background == colour:
        raise ValueError(f"background and shape are both {colour}")
    half = size * (MIN_HALF_WIDTH + u_half * (MAX_HALF_WIDTH - MIN_HALF_WIDTH))
    cx = half + u_x * (size - 2 * half)
    cy = half + u_y * (size - 2 * half)
    return Scene(shape, colour, background, float(cx), float(cy), float(half))


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5   # pixel centres
    return xs, ys


def shape_mask(shape: str, cx: float, cy: float, half: float, size: int = IMAGE_SIZE) -> np.ndarray:
    """Boolean (size, size) mask of the pixels whose centres lie inside the shape."""
    xs, ys = _grid(size)
    dx, dy = xs - cx, ys - cy
    if shape == "circle":
        return dx * dx + dy * dy <= half * half
    if shape == "square":
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if shape == "triangle":   # apex up at (cx, cy - half), base from (cx -+ half, cy + half)
        inside_y = (dy >= -half) & (dy <= half)
        return inside_y & (np.abs(dx) <= (dy + half) / 2)
    if shape == "cross":
        arm = half * CROSS_ARM
        return ((np.abs(dx) <= half) & (np.abs(dy) <= arm)) | ((np.abs(dy) <= half) & (np.abs(dx) <= arm))
    raise ValueError(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")


def pattern_mask(pattern: str, period: int = 8, phase: int = 0, size: int = IMAGE_SIZE) -> np.ndarray:
    """Where the pattern's second colour goes, over the whole image (then cut to the shape).
    Stripes and checker cover half the area; dots about 35%."""
    ys, xs = np.mgrid[0:size, 0:size]
    xs, ys = xs + phase, ys + phase
    if pattern == "stripes":       # diagonal, falling to the right
        return ((xs + ys) % period) < period // 2
    if pattern == "checker":
        cell = max(period // 2, 1)
        return ((xs // cell) + (ys // cell)) % 2 == 0
    if pattern == "dots":
        c = (period - 1) / 2
        dx, dy = (xs % period) - c, (ys % period) - c
        return dx * dx + dy * dy <= (period * 0.36) ** 2
    raise ValueError(f"unknown pattern {pattern!r}; choose from {', '.join(PATTERNS)}")


def render(scene: Scene, size: int = IMAGE_SIZE) -> np.ndarray:
    """The scene as a (size, size, 3) uint8 array of exact palette colours."""
    img = np.empty((size, size, 3), dtype=np.uint8)
    img[:] = PALETTE[scene.background]
    mask = shape_mask(scene.shape, scene.cx, scene.cy, scene.half, size)
    img[mask] = PALETTE[scene.colour]
    if scene.pattern:
        second = mask & pattern_mask(scene.pattern, scene.pattern_period, scene.pattern_phase, size)
        img[second] = PALETTE[scene.pattern_colour]
    return img


def render_pil(scene: Scene, size: int = IMAGE_SIZE):
    from PIL import Image
    return Image.fromarray(render(scene, size))


def sample_caption(rng: np.random.Generator | int | None, scene: Scene, dropout: float = CAPTION_DROPOUT) -> str:
    """The scene's caption, or ``""`` with probability ``dropout`` (the issue's sampler; pretraining's
    partial captions are drawn on its cached caption indices, ``pretrain.swap_partial``)."""
    rng = rng_for(rng)
    return "" if rng.random() < dropout else scene.caption()


def sample_batch(seed: int, n: int, size: int = IMAGE_SIZE, dropout: float = CAPTION_DROPOUT):
    """``n`` (image, caption, scene) triples of pretraining data, the same for the same seed."""
    rng = np.random.default_rng(seed)
    images, captions, scenes = [], [], []
    for _ in range(n):
        scene = sample_scene(rng, size)
        images.append(render(scene, size))
        captions.append(sample_caption(rng, scene, dropout))
        scenes.append(scene)
    return np.stack(images), captions, scenes


def all_prompts() -> list[tuple[str, str, str]]:
    """Every (colour, shape, background) the world has: 8 x 4 x 7 = 224."""
    return [(c, s, b) for c in COLOURS for s in SHAPES for b in COLOURS if b != c]


# A built-in subject for the demo: something the base model has never seen.
DEMO_SUBJECT = Subject(shape="square", colour="green", pattern="stripes", pattern_colour="white")
