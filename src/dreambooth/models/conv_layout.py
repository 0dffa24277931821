"""Convolution weights in channels-last while a CPU with AMX samples in bf16.

oneDNN runs bf16 convolutions on AMX much faster on channels-last (NHWC) weights, and the layout then
carries through the network. On a 2-core Xeon (docs/benchmarks.md): SD1.5's UNet at 512 px inside the
sampling loop, 1.86 -> 1.60 s an evaluation (median of 24); its VAE decodes a 512 px image in 2.2-2.3 s
instead of 4.9-5.2 and encodes one in 1.1-1.2 s instead of 2.4-2.5. Elsewhere channels-last was slower
(an AMD EPYC without AMX) or is unmeasured (CUDA), and fp32 gained a tenth: the layout is left as it
is there. Training steps keep their layout too (SD1.5 LoRA gained nothing measurable).

Every sampling call (and the training's latent cache) goes through here, so a validation image and
its remake from the PNG run the same kernels and stay bit for bit. A trainer's weights are put back
as they were when the pass ends, so nothing else sees them changed; a pipeline loaded for generation
alone is put in channels-last once (``GenerationPipeline.to``), so no call copies its weights. FSDP's
sharded weights are left alone."""
from __future__ import annotations

import contextlib

import torch

from ..devices import cpu_has_amx


def applies(device: str, dtype: torch.dtype | None) -> bool:
    """Whether computing in ``dtype`` on a ``device`` of this type runs convolutions channels-last: bf16
    on a CPU with AMX (the memory preflight asks too: a pass holds both layouts)."""
    return device == "cpu" and dtype == torch.bfloat16 and cpu_has_amx()


def wanted(module, dtype: torch.dtype | None = None) -> bool:
    """Whether ``module`` runs its convolutions channels-last (``applies``), computing in ``dtype``
    (autocast's; by default its weights')."""
    weight = next(module.parameters(), None) if module is not None else None
    return weight is not None and applies(weight.device.type, dtype or weight.dtype)


def _channels_last(weight: torch.Tensor) -> bool:
    """Strided as channels-last. ``is_contiguous(memory_format=...)`` would not do: it ignores dims of
    size 1, so a 1x1 convolution's weight passes either way, and oneDNN then runs it, and converts its
    input, in the layout of its actual strides."""
    _, inp, height, width = weight.shape
    return weight.stride() == (inp * height * width, 1, width * inp, inp)


def to_channels_last(module, dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """The 2-d convolution weights of ``module`` in channels-last, where ``wanted``; returns those moved."""
    if not wanted(module, dtype):
        return []
    moved = []
    # outside inference mode: weights made in it could not be used by autograd afterwards
    with torch.inference_mode(False), torch.no_grad():
        for conv in module.modules():
            weight = getattr(conv, "weight", None)
            if isinstance(conv, torch.nn.Conv2d) and not hasattr(weight, "device_mesh") and not _channels_last(weight):
                weight.data = weight.data.clone(memory_format=torch.channels_last)
                moved.append(weight)
    return moved


@contextlib.contextmanager
def channels_last_convs(module, dtype: torch.dtype | None = None):
    """Within: the 2-d convolution weights of ``module`` in channels-last, where ``wanted``; then as
    they were. A module already in channels-last (a generation pipeline's) costs nothing here."""
    moved = to_channels_last(module, dtype)
    try:
        yield
    finally:
        with torch.inference_mode(False), torch.no_grad():
            for weight in moved:
                weight.data = weight.data.clone(memory_format=torch.contiguous_format)
