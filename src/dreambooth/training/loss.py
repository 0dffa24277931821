"""The DreamBooth objective on a batch's per-example errors:

    loss = mean(instance errors) + prior_loss_weight * mean(class errors)

(Ruiz et al. 2023), with optional per-pixel weights (``--masked-loss``)."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def per_example_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) mean squared error of each example; with (B, 1, H, W) pixel ``weights`` (pooled to the
    latents' size), a weighted mean, so an example's loss keeps its scale whatever share is weighted."""
    per_pixel = F.mse_loss(pred, target, reduction="none")
    if weights is None:
        return per_pixel.mean(dim=(1, 2, 3))
    w = F.adaptive_avg_pool2d(weights.to(per_pixel.device), per_pixel.shape[-2:])
    return (per_pixel * w).mean(dim=(1, 2, 3)) / w.mean(dim=(1, 2, 3)).clamp_min(1e-8)


def prior_preserving_loss(per_example: torch.Tensor, is_prior: torch.Tensor, prior_loss_weight: float,
                          to_device: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``is_prior``: a (B,) bool tensor on the CPU. The rows are picked by index (moved with
    ``to_device``), not by a boolean mask on the GPU, which would wait for the GPU every step."""
    def mean_of(rows: torch.Tensor) -> torch.Tensor:
        return per_example.index_select(0, to_device(torch.nonzero(rows).flatten())).mean()

    loss = mean_of(~is_prior)
    if is_prior.any():
        loss = loss + prior_loss_weight * mean_of(is_prior)
    return loss
