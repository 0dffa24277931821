"""What the memory preflight (``training.preflight``) reads from a model: parameter counts, the UNet's
layout as elements per latent pixel entering each kind of block, and what autograd keeps of them."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .trainables import skipped_layers, text_encoder_targets

# Bytes autograd keeps per element of a block's input, (resnet, transformer layer, transformer
# model's own norm/projections), by method and activation width (fp32: 4, bf16/fp16: 2). Measured
# on SD1, SD1.5 and SDXL layouts (they agree within 5%); a LoRA's frozen weights need fewer inputs.
SAVED_BYTES = {("full", 4): (19.2, 117.0, 12.0), ("lora", 4): (17.0, 97.0, 10.0),
               ("full", 2): (10.0, 70.0, 6.0), ("lora", 2): (8.8, 59.0, 5.5)}


@dataclass(frozen=True)
class ModelSizes:
    """What the estimate needs to know about a model: parameter counts and the UNet's layout."""
    family: str
    unet: int                                # parameters
    text_encoders: tuple[int, ...]
    vae: int
    unet_layout: tuple[float, float, float]  # elements per latent pixel: resnet inputs, transformer layers, transformer models
    unet_largest_block: float                # fp32 bytes per latent pixel the largest single block keeps
    unet_base_channels: int
    lora_per_rank: int                       # LoRA parameters per unit of rank, UNet targets
    text_lora_per_rank: tuple[int, ...]      # the same for each text encoder, outside the unread layers
    text_layers: tuple[tuple[int, int], ...] # (layers, hidden size) of each text encoder
    vae_fp32: bool                           # the VAE asks for fp32 under fp16 (force_upcast; trainables.vae_dtype)
    vae_channels: int                        # the VAE's channels at full resolution
    vae_scale: int = 8
    latent_channels: int = 4
    largest_weight: int = 0                  # elements of the largest UNet or text-encoder tensor
    conv_weights: tuple[int, int] = (0, 0)   # elements of the UNet's and the VAE's 2-d convolution weights
    text_unread: int = 0                     # parameters of the text-encoder layers clip skip never reads


def _per_block(value, count: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * count


def unet_layout(config) -> tuple[tuple[float, float, float], float]:
    """Elements per latent pixel (per example) entering the UNet's resnets, transformer layers and
    transformer models, summed over the layout in ``config`` (a UNet2DConditionModel config), and
    the fp32 bytes per latent pixel the largest single block keeps (one checkpointed unit).
    Follows diffusers' construction: down blocks, the mid block at the lowest resolution, up blocks
    taking the skip connections."""
    ch = list(config["block_out_channels"])
    levels = len(ch)
    layers = _per_block(config.get("layers_per_block", 2), levels)
    depth = _per_block(config.get("transformer_layers_per_block", 1) or 1, levels)
    res = tr = models = largest = 0.0
    skips, prev = [ch[0]], ch[0]
    per_element = SAVED_BYTES[("full", 4)]

    def block(i: int, c_in: int, attn: bool, d: int):
        nonlocal res, tr, models, largest
        f = 4.0 ** -i
        res += c_in * f
        largest = max(largest, c_in * f * per_element[0])
        if attn:
            tr += d * ch[i] * f
            models += ch[i] * f
            largest = max(largest, ch[i] * f * (d * per_element[1] + per_element[2]))

    for i, kind in enumerate(config["down_block_types"]):
        for _ in range(layers[i]):
            block(i, prev, "CrossAttn" in kind, depth[i])
            prev = ch[i]
            skips.append(ch[i])
        if i < levels - 1:
            skips.append(ch[i])
    block(levels - 1, ch[-1], True, depth[-1])          # mid block: resnet, transformer, resnet
    res += ch[-1] * 4.0 ** -(levels - 1)
    for k, kind in enumerate(config["up_block_types"]):
        i = levels - 1 - k
        for _ in range(layers[::-1][k] + 1):
            block(i, prev + skips.pop(), "CrossAttn" in kind, depth[::-1][k])
            prev = ch[i]
    return (res, tr, models), largest


def _lora_per_rank(model, targets) -> int:
    total = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and any(name == t or name.endswith("." + t) for t in targets):
            total += module.in_features + module.out_features
    return total


def model_sizes(pipe, family, clip_skip: int = 1) -> ModelSizes:
    """The sizes of a loaded pipeline (``family``: its ``models.families`` adapter), trained at ``clip_skip``
    (as applied: 1 for SD2 and SDXL)."""
    from ..models.lora import UNET_TARGETS

    def count(m) -> int:
        return sum(p.numel() for p in m.parameters())

    layout, largest = unet_layout(pipe.unet.config)
    vae_cfg = pipe.vae.config
    encoders = family.text_encoders
    return ModelSizes(
        family=family.name, unet=count(pipe.unet), text_encoders=tuple(count(te) for te in encoders),
        vae=count(pipe.vae), unet_layout=layout, unet_largest_block=largest,
        unet_base_channels=pipe.unet.config.block_out_channels[0],
        lora_per_rank=_lora_per_rank(pipe.unet, UNET_TARGETS),
        text_lora_per_rank=tuple(_lora_per_rank(te, text_encoder_targets(te, clip_skip)) for te in encoders),
        text_unread=sum(count(layer) for te in encoders for layer in skipped_layers(te, clip_skip)),
        text_layers=tuple((te.config.num_hidden_layers, te.config.hidden_size) for te in encoders),
        vae_fp32=bool(getattr(vae_cfg, "force_upcast", False)), vae_channels=vae_cfg.block_out_channels[0],
        vae_scale=getattr(pipe, "vae_scale_factor", 8), latent_channels=vae_cfg.latent_channels,
        largest_weight=max(p.numel() for m in (pipe.unet, *encoders) for p in m.parameters()),
        conv_weights=tuple(sum(c.weight.numel() for c in m.modules() if isinstance(c, torch.nn.Conv2d))
                           for m in (pipe.unet, pipe.vae)))
