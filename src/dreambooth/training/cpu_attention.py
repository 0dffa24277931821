"""Attention in fp32 while a CPU trains under bf16 autocast.

torch's CPU attention kernel runs two to three times slower in bf16 than in fp32, forward and
backward, at the shapes of SD's UNet and CLIP (torch 2.13, AVX512-BF16: CLIP-L's 2x12x77x64 takes
3.7 ms in bf16 against 1.5 ms in fp32; a mid-size UNet's 2x8x256x16 4.5 against 2.4 ms). Matrix
products and convolutions still gain from bf16, so only attention goes back to fp32: 4.6% off a
full + text encoder step of the mid-size SD1 on a 2-core AVX512-BF16 CPU (steps interleaved with the
bf16 path, 20 each).

Scoped to the training step's forward pass with a torch function mode, which is thread-local, so
generation is untouched: a PNG made in bf16 must replay bit for bit, whatever trains alongside."""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


def _fp32(value):
    return value.float() if isinstance(value, torch.Tensor) and value.is_floating_point() else value


class _FP32Attention(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and args and args[0].dtype == torch.bfloat16 and args[0].device.type == "cpu":
            with torch.autocast("cpu", enabled=False):
                out = func(*map(_fp32, args), **{k: _fp32(v) for k, v in kwargs.items()})
            return out.to(torch.bfloat16)
        return func(*args, **kwargs)


def attention_precision(device: torch.device, autocast: torch.dtype | None, compiled: bool):
    """A context-manager factory for the forward pass: fp32 attention on a CPU training under bf16
    autocast; else nothing (a compiled model traces its own kernels)."""
    if device.type == "cpu" and autocast == torch.bfloat16 and not compiled:
        return _FP32Attention
    return contextlib.nullcontext
