"""Live previews while sampling (of the sampler's estimate of the finished latents: ``sampling.
denoised_estimates``), by the methods the WebUI's "Live preview method" names:

* ``Full``: the VAE decodes the first image of the batch (or each, for a grid): faithful, and as slow
  as a decode (SD1.5 at 512 px on a 2-core CPU: about two seconds, as long as a step).
* ``Approx cheap``: one linear map from the latent channels to RGB, at the latents' size: no network
  runs. The WebUI ships fixed coefficients for SD1 and SDXL; ours are fitted to the model's own VAE
  (its encoder's mean for flat colour patches, least squares), once per VAE, so a custom VAE, SD2, a
  tiny test model or the toy get a map that fits them.
"""
from __future__ import annotations

import math
import weakref

import numpy as np
import torch
from PIL import Image

from ..grid import annotated_grid
from .sampling import decode, unscaled

PREVIEW_METHODS = ("Full", "Approx cheap")

_MAPS: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]]" = weakref.WeakKeyDictionary()


def preview_image(pipe, latents: torch.Tensor, method: str = "Full", grid: bool = False) -> Image.Image:
    """The first image of ``latents`` (the sampler's, scaled as the UNet sees them) by ``method``; with
    ``grid``, every image of the batch in a grid (the WebUI's ``show_progress_grid``)."""
    if method not in PREVIEW_METHODS:
        raise ValueError(f"show_progress_type: expected one of {', '.join(PREVIEW_METHODS)}, not {method!r}")
    latents = latents if grid else latents[:1]
    if method == "Full":
        with torch.no_grad():
            images = decode(pipe, latents)
    else:
        weight, bias = rgb_map(pipe)
        z = unscaled(pipe.vae, latents.detach().float().cpu())                 # (B, C, h, w)
        rgb = torch.einsum("rc,bchw->bhwr", weight, z) + bias
        pixels = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
        images = [Image.fromarray(np.ascontiguousarray(p)) for p in pixels]
    return images[0] if len(images) == 1 else annotated_grid(images, math.ceil(math.sqrt(len(images))))


def rgb_map(pipe) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight 3 x C, bias 3): RGB in [-1, 1] from the VAE's unscaled latents, fitted once per VAE."""
    vae = pipe.vae
    if vae not in _MAPS:
        _MAPS[vae] = _fit(vae, int(getattr(pipe, "vae_scale_factor", 8)))
    return _MAPS[vae]


def _fit(vae, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Least squares from the encoder's latents of flat colour patches (each 4 latents wide) to the
    patches' colours. A fixed generator: the same VAE gets the same map in every process."""
    gen = torch.Generator().manual_seed(0)
    patches, side = 8, 4 * factor                                   # 8 x 8 colours
    colours = torch.rand(3, patches, patches, generator=gen) * 2 - 1
    image = colours.repeat_interleave(side, 1).repeat_interleave(side, 2)[None]
    weight = next(vae.parameters())
    with torch.inference_mode(), torch.autocast(weight.device.type, enabled=False):
        z = vae.encode(image.to(weight.device, weight.dtype)).latent_dist.mean[0].float().cpu()
    # the colour of each latent pixel, from the patch it lies in
    target = colours.repeat_interleave(side // factor, 1).repeat_interleave(side // factor, 2)
    h, w = min(z.shape[1], target.shape[1]), min(z.shape[2], target.shape[2])
    x = torch.cat([z[:, :h, :w].reshape(z.shape[0], -1), torch.ones(1, h * w)]).T        # (N, C + 1)
    y = target[:, :h, :w].reshape(3, -1).T                                              # (N, 3)
    solution = torch.linalg.lstsq(x.double(), y.double()).solution.float()              # (C + 1, 3)
    if not torch.isfinite(solution).all():
        raise ValueError("Approx cheap: the VAE's latents of the colour chart are not finite; use Full")
    return solution[:-1].T.contiguous(), solution[-1].contiguous()
