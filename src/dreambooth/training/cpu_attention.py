"""Short attention in fp32 while a CPU trains under bf16 autocast.

torch's CPU attention kernel runs short attention two to three times slower in bf16 than in fp32,
forward and backward (torch 2.13, AVX512-BF16: CLIP-L's 2x12x77x64 takes 3.7 ms in bf16 against 1.5
ms in fp32; a mid-size UNet's 2x8x256x16 4.5 against 2.4 ms). Long attention turns it round: at 1024
x 1024 positions bf16 is 1.2x faster, at SD1.5's 4096 x 4096 (512 px) 1.2x too. Up to ``FP32_UP_TO``
query x key positions per head (512 x 77 was 2x faster in fp32, 1024 x 77 even, 512 x 512 and beyond
slower) attention runs in fp32: 4.6% off a full + text encoder step of the mid-size SD1 at 128 px
on a 2-core CPU (steps interleaved with the bf16 path, 20 each). Matrix products and convolutions
keep bf16.

Scoped to the training step (``step_kernels``; not with gradient checkpointing, whose recomputation
runs outside torch function modes) with a torch function mode, which is thread-local, so
generation is untouched: a PNG made in bf16 must replay bit for bit, whatever trains alongside."""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

FP32_UP_TO = 1 << 17     # query positions x key positions, per head


def _fp32(value):
    return value.float() if isinstance(value, torch.Tensor) and value.is_floating_point() else value


def _short_bf16_cpu(query: torch.Tensor, key: torch.Tensor) -> bool:
    """Short bf16 attention under CPU autocast: the trained models and the UNet, not a frozen bf16 text
    encoder caching its embeddings outside autocast (those stay as they are made at setup)."""
    return query.dtype == torch.bfloat16 and query.device.type == "cpu" and torch.is_autocast_enabled("cpu") \
        and query.shape[-2] * key.shape[-2] <= FP32_UP_TO


class _FP32Attention(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and len(args) >= 3 and _short_bf16_cpu(args[0], args[1]):
            with torch.autocast("cpu", enabled=False):
                out = func(*map(_fp32, args), **{k: _fp32(v) for k, v in kwargs.items()})
            return out.to(torch.bfloat16)
        return func(*args, **kwargs)


def attention_precision(device: torch.device, autocast: torch.dtype | None):
    """A context-manager factory for the training step: short attention in fp32 on a CPU training under
    bf16 autocast; else nothing."""
    if device.type == "cpu" and autocast == torch.bfloat16:
        return _FP32Attention
    return contextlib.nullcontext
