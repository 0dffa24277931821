"""Convolution weights in channels-last while a CPU with AMX samples in bf16.

oneDNN runs bf16 convolutions on AMX much faster on channels-last (NHWC) weights, and the layout then
carries through the network. On a 2-core Xeon (docs/benchmarks.md): SD1.5's UNet at 512 px inside the
sampling loop, 1.86 -> 1.60 s an evaluation (median of 24); its VAE decodes a 512 px image in 2.2-2.3 s
instead of 4.9-5.2 and encodes one in 1.1-1.2 s instead of 2.4-2.5. Elsewhere channels-last was slower
(an AMD EPYC without AMX) or is unmeasured (CUDA), and fp32 gained a tenth: the layout is left as it
is there. Training steps keep their layout too (SD1.5 LoRA gained nothing measurable).

Within a UNet's pass, a convolution whose weight outweighs its input also runs from oneDNN's own
prepacked copy of the weight (``_prepacked``), instead of reordering it at every call: the same bits,
SD1.5's UNet about a tenth faster at 512 px. The copy takes the weight's place for the pass, so no
more memory is held. Not the VAE's: its decoder was no faster from copies (the mid-size model, one
image at 256 or 512 px) and they raised a batch's peak by 0.15 GiB.

Every sampling call (and the training's latent cache) goes through here, so a validation image and
its remake from the PNG run the same kernels and stay bit for bit. A trainer's weights are put back
as they were when the pass ends, so nothing else sees them changed; a pipeline loaded for generation
alone is put in channels-last once (``GenerationPipeline.to``), so no call copies its weights. FSDP's
sharded weights are left alone."""
from __future__ import annotations

import contextlib
import functools

import torch

from ..devices import cpu_has_amx
from ..host_memory import release_freed_host_memory


def applies(device: str, dtype: torch.dtype | None) -> bool:
    """Whether computing in ``dtype`` on a ``device`` of this type runs convolutions channels-last: bf16
    on a CPU with AMX (the memory preflight asks too: a pass holds both layouts)."""
    return device == "cpu" and dtype == torch.bfloat16 and cpu_has_amx()


def wanted(module, dtype: torch.dtype | None = None) -> bool:
    """Whether ``module`` runs its convolutions channels-last (``applies``), computing in ``dtype``
    (autocast's; by default its weights')."""
    weight = next(module.parameters(), None) if module is not None else None
    return weight is not None and applies(weight.device.type, dtype or weight.dtype)


def strided_channels_last(weight: torch.Tensor) -> bool:
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
            if isinstance(conv, torch.nn.Conv2d) and not hasattr(weight, "device_mesh") \
                    and not strided_channels_last(weight):
                weight.data = weight.data.clone(memory_format=torch.channels_last)
                moved.append(weight)
    return moved


@contextlib.contextmanager
def channels_last_convs(module, dtype: torch.dtype | None = None, prepack: bool = True):
    """Within: the 2-d convolution weights of ``module`` in channels-last, where ``wanted``, and, with
    ``prepack`` (a UNet's), run from oneDNN's own copies of them (``_prepacked``), which take the place
    of the weights for the pass; then as they were, bit for bit."""
    moved = to_channels_last(module, dtype)
    convs = [c for c in module.modules() if isinstance(c, torch.nn.Conv2d) and "forward" not in c.__dict__] \
        if prepack and wanted(module, dtype) else []          # (not those an enclosing call set up)
    # a layer that wraps a convolution (peft's LoRA) may read its weight (DoRA): that one keeps it
    wrapped = {id(m.base_layer) for m in module.modules() if isinstance(getattr(m, "base_layer", None), torch.nn.Conv2d)}
    for conv in convs:
        conv.forward = functools.partial(_prepacked, conv, gives_way=id(conv) not in wrapped)
    try:
        yield
    finally:
        back, restored = {id(w) for w in moved}, set()
        # What the process keeps for reuse (host_memory) goes back to the system before the weights come
        # back and after: else they land beside the pass's freed activations and the copies, and the next
        # pass's activations above all of them (SD1.5 at 512 px: 0.2-0.6 GB over diffusers' peak).
        if any(c.__dict__.get("_packed", (None, None, False))[2] for c in convs):
            release_freed_host_memory()
        with torch.inference_mode(False), torch.no_grad():
            for conv in convs:
                del conv.forward
                packed = conv.__dict__.pop("_packed", None)
                if packed is not None and packed[2]:        # the weight gave way to the copy: back, the same bits
                    layout = torch.contiguous_format if id(conv.weight) in back else torch.channels_last
                    conv.weight.data = packed[1].to_dense().clone(memory_format=layout)
                    restored.add(id(conv.weight))
            for weight in moved:                            # (those put back from a copy are so already)
                if id(weight) not in restored:
                    weight.data = weight.data.clone(memory_format=torch.contiguous_format)
        if restored:
            release_freed_host_memory()


def _prepacked(conv: torch.nn.Conv2d, x: torch.Tensor, gives_way: bool = False) -> torch.Tensor:
    """``conv(x)`` from a copy of its weight in oneDNN's own blocked layout, made at the pass's first
    call instead of at every call: the same kernel, so the same bits. SD1.5's UNet at 512 px, batch 2,
    on a 2-core Xeon with AMX: 1.75 -> 1.57 s a call (its 8 x 8 and 16 x 16 convolutions over 1280-2560
    channels spent most of their time reordering 30-60 MB weights). Only where the weight is at least
    as large as the input: over large maps (the VAE's) the prepacked kernel was slower (512 channels at
    128 x 128: 28 -> 72 ms). Only without gradients, in bf16 throughout (no cast for autocast to make),
    where the weight is not FSDP's; else as ever.

    The copy takes the weight's place until the pass ends (``channels_last_convs`` puts the weight back
    from it, bit for bit): both at once held 1.0 GB more than diffusers' pipeline through SD1.5's
    sampling at 512 px. ``gives_way`` False: a weight that a wrapping layer may read stays."""
    cached = conv.__dict__.get("_packed")
    if cached is not None and cached[2]:             # the copy in the weight's place: any input (same bits)
        packed = cached[1]
    else:
        weight = conv.weight
        if (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)) or conv.padding_mode != "zeros" \
                or x.dtype != torch.bfloat16 or weight.dtype != torch.bfloat16 or hasattr(weight, "device_mesh") \
                or (conv.bias is not None and conv.bias.dtype != torch.bfloat16) or x.dim() != 4 \
                or not isinstance(conv.padding, tuple) \
                or weight.numel() < x.numel() or not _packing_works():
            return torch.nn.Conv2d.forward(conv, x)
        key = (tuple(x.shape), weight.data_ptr(), weight._version)
        if cached is None or cached[0] != key:
            with torch.inference_mode(False), torch.no_grad():
                packed = torch.ops.mkldnn._reorder_convolution_weight(
                    weight, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups, list(x.shape))
        else:
            packed = cached[1]
        if gives_way:
            with torch.inference_mode(False), torch.no_grad():
                weight.data = weight.data.new_empty(0)
        conv.__dict__["_packed"] = (key, packed, gives_way)
    return torch.ops.mkldnn._convolution_pointwise(x, packed, conv.bias, list(conv.padding), list(conv.stride),
                                                   list(conv.dilation), conv.groups, "none", [], "")


@functools.cache
def _packing_works() -> bool:
    """torch's oneDNN ops for prepacked weights (inductor's, not public API) exist here and compute
    what ``F.conv2d`` does, bit for bit, on a small case; else convolutions run as ever."""
    gen = torch.Generator().manual_seed(0)          # not the global stream: a run's draws stay as they were
    try:
        x = torch.randn(2, 16, 8, 8, generator=gen).to(torch.bfloat16, memory_format=torch.channels_last)
        w = torch.randn(32, 16, 3, 3, generator=gen).to(torch.bfloat16, memory_format=torch.channels_last)
        b = torch.randn(32, generator=gen).to(torch.bfloat16)
        with torch.no_grad():
            packed = torch.ops.mkldnn._reorder_convolution_weight(w, [1, 1], [1, 1], [1, 1], 1, list(x.shape))
            out = torch.ops.mkldnn._convolution_pointwise(x, packed, b, [1, 1], [1, 1], [1, 1], 1, "none", [], "")
            return torch.equal(out, torch.nn.functional.conv2d(x, w, b, padding=1))
    except (AttributeError, RuntimeError):
        return False
