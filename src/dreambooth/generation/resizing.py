"""img2img's "Resize mode", as the WebUI names and does it, for an init image (and its mask) whose
proportions differ from the sampling size's:

* "Just resize": stretched to the size;
* "Crop and resize": scaled to cover the size, keeping its proportions, and the overhang cut off
  evenly on both sides;
* "Resize and fill": scaled to fit inside the size, centred, and the bars on either side filled with
  its edge rows (or columns) stretched outwards.

(The WebUI's fourth, "Just resize (latent upscale)", resizes the latents instead; it is not here.)"""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from .. import progress
from ..errors import UserError

RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill")


def resized(image: Image.Image, width: int, height: int, mode: str = "Just resize",
            resample: int = Image.BICUBIC) -> Image.Image:
    """``image`` at ``width`` x ``height`` by ``mode`` (one of :data:`RESIZE_MODES`)."""
    if mode == "Just resize":
        return image.resize((width, height), resample=resample)
    wider = width * image.height > image.width * height          # the size is wider than the image
    cover = mode == "Crop and resize"
    if wider == cover:       # cover a wider size / fit a narrower one: the width decides
        w, h = width, max(1, image.height * width // image.width)
    else:
        w, h = max(1, image.width * height // image.height), height
    scaled = image.resize((w, h), resample=resample)
    left, top = width // 2 - w // 2, height // 2 - h // 2
    if cover:
        return scaled.crop((-left, -top, -left + width, -top + height))
    out = Image.new(image.mode, (width, height))
    out.paste(scaled, (left, top))
    # the bars: the scaled image's edge row (or column), stretched across
    below, right = height - top - h, width - left - w
    for box, size, at in (((0, 0, w, 1), (w, top), (left, 0)), ((0, h - 1, w, h), (w, below), (left, top + h)),
                          ((0, 0, 1, h), (left, h), (0, top)), ((w - 1, 0, w, h), (right, h), (left + w, top))):
        if min(size) > 0:
            out.paste(scaled.crop(box).resize(size), at)
    return out


def init_size(init: Image.Image, params, max_side: int) -> tuple[int, int]:
    """img2img's size where --width/--height leave it open: the init image's, each side rounded to the
    nearest multiple of 8 (rounding down would stretch a small image's proportions: 50x30 to 48x24), said
    when it differs; a one-line error naming the image where that is past the model's largest side."""
    near = lambda side: max(8, (side + 4) // 8 * 8)       # noqa: E731
    width, height = params.width or near(init.width), params.height or near(init.height)
    where = f"--init-image {params.init_image if isinstance(params.init_image, (str, Path)) else ''}".rstrip()
    if max(width, height) > max_side:
        raise UserError(f"{where}: {init.width}x{init.height}, past this model's {max_side} px a side; give "
                        f"--width/--height (multiples of 8, at most {max_side}) to sample it smaller")
    if (width, height) != init.size:
        progress.warn(f"{where}: {init.width}x{init.height}, sampled at {width}x{height} (multiples of 8; "
                      "--width/--height to choose)")
    return width, height
