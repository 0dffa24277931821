"""The VAE side of a training step: each distinct training picture (example, crop, flip) is encoded
once and its posterior kept, because the VAE encoder costs as much as the UNet step at low resolution
and square photos have one crop only.

When the run can draw only a few pictures (one crop per example), all are encoded before the first
step (kohya's latent cache), so every step costs the same and the ETA holds. A picture that may be
kept is always encoded alone, upfront or on a miss, and those made for one step only (key None)
together: a kept picture's numbers never depend on what else missed the cache (batched convolutions
round by batch size), which keeps resume exact.
"""
from __future__ import annotations

import torch

from .. import progress
from ..models.conv_layout import channels_last_convs
from .data import Batch
from ..parking import Parking

# Distinct pictures whose latents are kept (about 1 GiB at SDXL's 1024 px); random crops of
# non-square photos beyond that are encoded every time.
LATENT_CACHE_ENTRIES = 2048


class LatentCache:
    def __init__(self, vae, device: torch.device, enabled: bool = True, limit: int = LATENT_CACHE_ENTRIES,
                 parking: Parking | None = None):
        self.vae, self.device, self.enabled, self.limit = vae, device, enabled, limit
        self.parking = parking or Parking(device, enabled=False)
        self.kept: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.complete = False      # every picture the stream can draw is kept: the VAE is not needed

    def encode(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE posterior's (mean, std) of ``pixels``, fp32."""
        vae = self.parking.ready(self.vae)
        with torch.no_grad(), channels_last_convs(vae, prepack=False):
            dist = vae.encode(pixels.to(self.device, vae.dtype)).latent_dist
        return dist.mean.float(), dist.std.float()

    def fill(self, pictures: list[tuple[tuple, torch.Tensor]] | None) -> None:
        """Encode ``pictures`` ((key, CHW pixels), see ``ExampleStream.every_picture``) now, if they all fit."""
        if not self.enabled or not pictures or len(pictures) > self.limit:
            return
        with progress.task("caching latents", len(pictures)) as bar:
            for key, pixels in pictures:
                if key not in self.kept:
                    self.kept[key] = self.encode(pixels[None])
                bar.advance(1)
        self.complete = True

    def needs_pixels(self, key: tuple) -> bool:
        """Whether a picture must be made to get its latents (not when they are kept)."""
        return not self.enabled or key not in self.kept

    def posterior(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of the batch's pictures, from the cache where kept."""
        if not self.enabled:
            return self.encode(batch.pixels)
        keys = batch.cache_keys or [None] * len(batch.indices)
        fresh = [j for j, key in enumerate(keys) if key is None]
        missing = {key: j for j, key in enumerate(keys)              # a picture twice in a
                   if key is not None and key not in self.kept}      # batch: encoded once
        got = {}                         # by key, or by position for the pictures of this step alone
        for group in ([fresh] if fresh else []) + [[j] for j in missing.values()]:
            mean, std = self.encode(batch.pixels[group])
            for k, j in enumerate(group):
                got[j if keys[j] is None else keys[j]] = (mean[k:k + 1], std[k:k + 1])
        for key in list(missing)[:max(0, self.limit - len(self.kept))]:
            self.kept[key] = got[key]
        pairs = [got.get(j if key is None else key) or self.kept[key] for j, key in enumerate(keys)]
        return torch.cat([m for m, _ in pairs]), torch.cat([s for _, s in pairs])
