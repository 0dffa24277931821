"""txt2img's "Hires. fix", as the WebUI does it: each image is made at its size, upscaled, and denoised
again at the larger size, as img2img from the upscaled one (``sampling.generate`` runs both passes).

* The target: ``hires_scale`` times the size, or ``hires_width`` x ``hires_height`` (one of them 0:
  kept in the image's proportions; both, in other proportions: the image is upscaled to cover the
  target and the overhang cut off evenly, as the WebUI does), in multiples of 8.
* "Latent" upscalers resize the first pass's latents (torch's interpolate: bilinear, bicubic, nearest
  or nearest-exact, antialiased or not), as the WebUI's "Latent (...)" ones; "Lanczos", "Nearest" and
  "None" (a Lanczos resize, as the WebUI's) decode the first pass, resize the picture and encode it
  again. (The WebUI's ESRGAN-style upscaler models are not here.)
* The second pass takes ``hires_steps`` denoising steps (0: as many as the first) at ``strength``,
  with the same seeds (its noise is drawn afresh from them, at the larger size), sampler, prompts
  and CFG.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from PIL import Image

LATENT_MODES = {"Latent": ("bilinear", False), "Latent (antialiased)": ("bilinear", True),
                "Latent (bicubic)": ("bicubic", False), "Latent (bicubic antialiased)": ("bicubic", True),
                "Latent (nearest)": ("nearest", False), "Latent (nearest-exact)": ("nearest-exact", False)}
IMAGE_MODES = {"None": Image.LANCZOS, "Lanczos": Image.LANCZOS, "Nearest": Image.NEAREST}   # (A1111's "None": Lanczos)
HIRES_UPSCALERS = (*LATENT_MODES, *IMAGE_MODES)
MAX_HIRES_SCALE = 8


def upscaler_named(name: str) -> str | None:
    """The upscaler called ``name`` in any case ("lanczos" is "Lanczos"), or None."""
    return {u.lower(): u for u in HIRES_UPSCALERS}.get(str(name).lower())


@dataclass(frozen=True)
class HiresTarget:
    upscaled: tuple[int, int]          # (width, height) the first pass is upscaled to
    size: tuple[int, int]              # (width, height) of the image: the upscaled one, cut to it

    def crop(self, scale: int = 1) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of ``size`` in ``upscaled``, in units of ``scale`` pixels."""
        (uw, uh), (w, h) = self.upscaled, self.size
        cut_x, cut_y = (uw - w) // scale, (uh - h) // scale
        return cut_x // 2, cut_y // 2, uw // scale - (cut_x + 1) // 2, uh // scale - (cut_y + 1) // 2


def hires_target(width: int, height: int, scale: float, to_width: int = 0, to_height: int = 0) -> HiresTarget:
    """Where a ``width`` x ``height`` first pass goes (see the module doc)."""
    def eight(v: float) -> int:
        return max(8, int(v) // 8 * 8)
    if not to_width and not to_height:
        size = (eight(width * scale), eight(height * scale))
        return HiresTarget(size, size)
    if not to_height:
        size = (eight(to_width), eight(to_width * height / width))
        return HiresTarget(size, size)
    if not to_width:
        size = (eight(to_height * width / height), eight(to_height))
        return HiresTarget(size, size)
    if width * to_height < to_width * height:          # the target is wider: cover its width
        upscaled = (eight(to_width), eight(math.ceil(to_width * height / width / 8) * 8))
    else:
        upscaled = (eight(math.ceil(to_height * width / height / 8) * 8), eight(to_height))
    return HiresTarget(upscaled, (eight(to_width), eight(to_height)))


def upscale_latents(latents: torch.Tensor, upscaler: str, target: HiresTarget, factor: int = 8) -> torch.Tensor:
    """The first pass's latents at the target (``factor``: the VAE's pixels per latent)."""
    mode, antialias = LATENT_MODES[upscaler]
    (uw, uh) = target.upscaled
    size = (uh // factor, uw // factor)
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    out = torch.nn.functional.interpolate(latents.float(), size=size, mode=mode, antialias=antialias, **kwargs)
    left, top, right, bottom = target.crop(factor)
    return out[:, :, top:bottom, left:right].to(latents.dtype)


def upscale_image(image: Image.Image, upscaler: str, target: HiresTarget) -> Image.Image:
    """A first-pass picture at the target, for the second pass to encode."""
    return image.resize(target.upscaled, resample=IMAGE_MODES[upscaler]).crop(target.crop())
