"""Inpainting as the WebUI prepares it.

* The mask's edge is feathered by a Gaussian ("Mask blur", 4 px by default) at the mask's own size.
* "Whole picture": the init image and the feathered mask are resized to the sampling size; the
  latents are repainted where the mask is at least half (diffusers' inpainting binarises it, as the
  WebUI rounds it); the sample is laid over the init image through the feathered mask doubled, so the
  inner half of the feather is wholly new.
* "Only masked": the box around the feathered mask, widened by the padding and grown to the sampling
  size's proportions within the image, is cut out and sampled at the sampling size; the sample is
  scaled back into the box and laid over the whole init image through the feathered mask. The image
  keeps the init image's size, and a small masked area gets all the sampling size's pixels.
* Masked content "fill": the sampler starts from the masked area painted over by the colours around
  it, not from what was there ("original"); "latent noise" and "latent nothing" fill it so too, and
  then replace its latents by the seed's noise or by zeros (``latent_fill``).
* Mask mode "Inpaint not masked": the mask inverted first.
* "Whole picture" takes img2img's resize mode (``resizing``) for the init image and the mask alike;
  "Only masked" fits its box into the sampling size as "Resize and fill" and the sample back into the
  box as "Crop and resize", as the WebUI does, so a box the image could not grow to the size's
  proportions is not stretched.

Beyond the feather every pixel is the init image's, exactly."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps
from scipy import ndimage

from ..images import open_image
from .resizing import resized

MAX_MASK_BLUR = 64              # the WebUI's sliders
MAX_MASKED_PADDING = 256
MASKED_CONTENT = ("original", "fill", "latent noise", "latent nothing")     # the WebUI's four
LATENT_FILLS = ("latent noise", "latent nothing")          # where the latents under the mask are replaced


def as_mask(value, flag: str = "--mask") -> Image.Image | None:
    """A mask given as an image or a path, read as the WebUI reads one: where it has transparency (a
    stroke painted on a clear layer), its alpha, opaque above half = repaint; else its grey levels,
    white = repaint."""
    if value is None:
        return None
    image = value if isinstance(value, Image.Image) else open_image(value, flag, keep_alpha=True)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        alpha = image.convert("RGBA").getchannel("A")
        if alpha.getextrema() != (255, 255):
            return alpha.point(lambda v: 255 if v > 128 else 0)
    return image.convert("L")


def feather(mask: Image.Image, blur: int) -> Image.Image:
    """``mask`` blurred along x, then y, by a Gaussian of standard deviation ``blur`` pixels, cut at
    2.5 of them and mirrored at the borders, each pass rounded to 8 bits: the WebUI's OpenCV blur, to
    within a level. ``blur`` 0: the mask as it is."""
    if blur <= 0:
        return mask
    values = np.asarray(mask.convert("L"), dtype=np.float64)
    for axis in (1, 0):
        values = np.round(ndimage.gaussian_filter1d(values, blur, axis=axis, mode="mirror", truncate=2.5))
    return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8))


def overlay(mask: Image.Image) -> Image.Image:
    """Where a whole-picture sample replaces the init image: the feathered mask, doubled."""
    return mask.point(lambda v: min(255, 2 * v))


def masked_region(mask: Image.Image, padding: int, width: int, height: int) -> tuple[int, int, int, int] | None:
    """The box (left, top, right, bottom) around ``mask``'s non-zero pixels, widened by ``padding``
    and grown to ``width:height`` within the image; None for a blank mask."""
    box = mask.getbbox()
    if box is None:
        return None
    x1, y1 = max(box[0] - padding, 0), max(box[1] - padding, 0)
    x2, y2 = min(box[2] + padding, mask.width), min(box[3] + padding, mask.height)
    ratio = width / height
    if (x2 - x1) / (y2 - y1) > ratio:
        y1, y2 = _grown(y1, y2, int((x2 - x1) / ratio - (y2 - y1)), mask.height)
    else:
        x1, x2 = _grown(x1, x2, int((y2 - y1) * ratio - (x2 - x1)), mask.width)
    return x1, y1, x2, y2


def _grown(low: int, high: int, more: int, size: int) -> tuple[int, int]:
    """[low, high) with ``more`` added, half before and the rest after, moved back inside [0, size)."""
    low, high = low - more // 2, high + more - more // 2
    if high > size:
        low, high = low - (high - size), size
    if low < 0:
        low, high = 0, high - low
    return low, min(high, size)


# The WebUI's "fill": layers of the unmasked pixels blurred ever less (radius, times laid on).
FILL_LAYERS = ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1))


def fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """``image`` with its masked area painted over by the colours around it (the WebUI's masked content
    "fill"), for the sampler to start from there instead of the original's content."""
    kept = image.convert("RGBA")
    kept.putalpha(mask.convert("L").point(lambda v: 255 - v))
    kept = kept.convert("RGBa")              # premultiplied: a blur weighs each colour by how unmasked it is
    out = Image.new("RGBA", image.size)
    for radius, times in FILL_LAYERS:
        layer = kept.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(times):
            out.alpha_composite(layer)
    return out.convert("RGB")


@dataclass
class Inpainting:
    """An inpainting's init image and mask at the sampling size, and how a sample goes back."""
    init: Image.Image                       # what the sampler starts from
    mask: Image.Image                       # what it repaints (feathered)
    base: Image.Image                       # what the sample is laid over: the init image (at the sampling size)
    cover: Image.Image                      # where the sample replaces it
    region: tuple[int, int, int, int] | None = None     # "Only masked": the box sampled

    def finish(self, sample: Image.Image) -> Image.Image:
        if self.region is None:
            return Image.composite(sample, self.base, self.cover)
        x1, y1, x2, y2 = self.region
        placed = self.base.copy()
        placed.paste(resized(sample, x2 - x1, y2 - y1, "Crop and resize", Image.LANCZOS), (x1, y1))
        return Image.composite(placed, self.base, self.cover)


def prepare(init: Image.Image, mask: Image.Image, width: int, height: int, blur: int,
            only_masked: bool = False, padding: int = 0, filled: bool = False, invert: bool = False,
            resize_mode: str = "Just resize") -> Inpainting:
    """The :class:`Inpainting` of ``init`` under ``mask`` (stretched to the init image's size; with
    ``invert``, what is not masked) sampled at ``width`` x ``height``; ``filled``: starting from
    :func:`fill`. A blank mask has no "Only masked" box: the whole picture is kept."""
    if mask.size != init.size:
        mask = mask.resize(init.size, resample=Image.BICUBIC)
    if invert:
        mask = ImageOps.invert(mask.convert("L"))
    feathered = feather(mask, blur)
    region = masked_region(feathered, padding, width, height) if only_masked else None
    if region is None:
        base = resized(init, width, height, resize_mode)
        small = resized(feathered, width, height, resize_mode)
        start = fill(base, small) if filled else base
        return Inpainting(start, small, base, overlay(small))
    small = resized(feathered.crop(region), width, height, "Resize and fill", Image.LANCZOS)
    start = resized(init.crop(region), width, height, "Resize and fill", Image.LANCZOS)
    return Inpainting(fill(start, small) if filled else start, small, init, feathered, region)


@contextlib.contextmanager
def latent_fill(runner, params, mask: Image.Image | None, seeds: list[int]):
    """Within: Masked content "latent noise" / "latent nothing", as the WebUI's: the init image's latents
    under the mask (binarised at half and taken to the latents' size as diffusers takes it) replaced by
    each image's seed's own noise (the noise its txt2img image starts from) or by zeros, before the
    sampler noises them. Only the pipeline's first encoding is the init image's (diffusers encodes it
    before the masked image); an inpainting model (9 input channels) at full strength starts from
    noise and encodes no init image."""
    model_starts_from_noise = runner.unet.config.in_channels != 4 and params.denoising >= 1    # (as run)
    if mask is None or params.masked_content not in LATENT_FILLS or model_starts_from_noise:
        yield
        return
    encode = runner._encode_vae_image

    def encode_and_fill(image, generator):
        del runner._encode_vae_image                # the next encoding (the masked image's) is the pipeline's own
        latents = encode(image=image, generator=generator)
        kept = torch.from_numpy(np.asarray(mask.convert("L")) < 128).float()[None, None]
        kept = torch.nn.functional.interpolate(kept, size=latents.shape[-2:]).to(latents)       # nearest
        if params.masked_content == "latent nothing":
            return latents * kept
        noise = torch.stack([torch.randn(latents.shape[1:], generator=torch.Generator("cpu").manual_seed(s))
                             for s in seeds]).to(latents)
        return latents * kept + noise * (1 - kept)

    runner._encode_vae_image = encode_and_fill
    try:
        yield
    finally:
        runner.__dict__.pop("_encode_vae_image", None)
