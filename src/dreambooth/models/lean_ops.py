"""Fewer passes over memory in a UNet's bf16 pass on a CPU with AMX, the same bits.

Outside attention and convolutions, a UNet call at low resolution on a 2-core CPU is bound by memory
traffic: each operation reads and writes its whole activation. Within a sampling pass (``lean_ops``):

* a linear layer with a bias runs as oneDNN's linear with the bias fused (``_linear``); torch's
  ``addmm`` first writes the bias into the whole output, a pass of its own;
* an attention layer in diffusers' plain form (no norms, no mask, no residual, output factor 1)
  skips the division by 1.0 that ``AttnProcessor2_0`` always makes (``PlainAttention``), and a
  cross-attention computes the keys and values of the prompt's embeddings once a pass, not at every
  step (``keys_values``): the mid-size SD1's 16 layers spend 10-20 ms a call on them, 2-3% of it;
* a transformer block with a 1x1-convolution projection (SD1's) hands its tokens to that convolution
  as they lie, channels-last, instead of copying them into NCHW first, which the convolution (its
  weight channels-last) then copies back (``_transformer_output``): two passes over the activation.

Each computes what diffusers' own does, bit for bit (checked on a small case before first use,
``_exact``; a test on the tiny pipeline's images), so a PNG remade from its infotext stays the same.
On a 2-core Xeon with AMX, a UNet call (median, A/B interleaved): the mid-size SD1's at batch 8 over
32 x 32 latents 533 -> 518 ms, SD1.5's at batch 2 over 64 x 64 1781 -> 1737 ms (docs/benchmarks.md).
Only without gradients, in bf16 throughout, where the weights are not FSDP's, as the prepacked
convolutions (``conv_layout``)."""
from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F

from .conv_layout import strided_channels_last, wanted


# torch's addmm leaves products of at most 16 x 16 x 16 multiply-adds to its own kernel (not oneDNN's)
ONEDNN_FROM = 16 * 16 * 16


def _plain(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether this product may run as oneDNN's fused linear with ``F.linear``'s bits: inference, bf16
    throughout, not FSDP's, a contiguous input (torch multiplies and then adds the bias to any other,
    rounding twice), large enough that torch would run it on oneDNN too."""
    return bias is not None and x.dtype == weight.dtype == bias.dtype == torch.bfloat16 and x.dim() >= 2 \
        and x.is_contiguous() and x.numel() * weight.shape[0] > ONEDNN_FROM \
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or bias.requires_grad)) \
        and not hasattr(weight, "device_mesh")


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if _plain(x, weight, bias):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


def _linear_forward(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return _linear(x, layer.weight, layer.bias)


def _version(tensor: torch.Tensor) -> int:
    """How often ``tensor`` was changed in place; -1 for an inference tensor, which does not count."""
    return -1 if tensor.is_inference() else tensor._version


def _transformer_output(self, hidden_states, residual, batch_size, height, width, inner_dim):
    """``Transformer2DModel``'s output where ``proj_out`` is a 1x1 convolution with a channels-last
    weight: diffusers makes the tokens contiguous in NCHW before it, and oneDNN copies them back to
    channels-last for it. The same kernel on the same values, so the same bits (``lean_ops``'s test)."""
    tokens = hidden_states.reshape(batch_size, height, width, inner_dim).permute(0, 3, 1, 2)
    return self.proj_out(tokens) + residual


@functools.cache                 # one class: a processor's type says whether it is ours
def _attention_processor():
    from diffusers.models.attention_processor import AttnProcessor2_0

    class PlainAttention(AttnProcessor2_0):
        """``AttnProcessor2_0`` without its division by ``rescale_output_factor`` where that is 1 and
        nothing else applies; anything else goes to diffusers' own."""

        def __init__(self):
            super().__init__()
            self.kept = {}                 # attention layer -> (its context, stamp, keys, values)

        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                     *args, **kwargs):
            if args or kwargs or attention_mask is not None or hidden_states.ndim != 3 \
                    or attn.spatial_norm is not None or attn.group_norm is not None or attn.residual_connection \
                    or attn.rescale_output_factor != 1.0 or attn.norm_q is not None or attn.norm_k is not None \
                    or (encoder_hidden_states is not None and attn.norm_cross):
                return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb,
                                        *args, **kwargs)
            batch = hidden_states.shape[0]
            query = attn.to_q(hidden_states)
            if encoder_hidden_states is None:
                key, value = attn.to_k(hidden_states), attn.to_v(hidden_states)
            else:
                key, value = self.keys_values(attn, encoder_hidden_states)
            head_dim = key.shape[-1] // attn.heads
            query, key, value = (t.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
            out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
            out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
            return attn.to_out[1](attn.to_out[0](out))

        def keys_values(self, attn, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """A cross-attention's keys and values of ``context``, kept for the pass: a sampler gives
            every step the same prompt embeddings (the same tensor), so each step after the first
            skips two products. Made again where the tensor, its contents or the layers' weights
            changed (prompt editing gives a new tensor), or where gradients are wanted. (Inference
            tensors count no versions: one changed in place within inference mode would go unseen;
            nothing in a sampling pass does that.)"""
            if torch.is_grad_enabled():
                return attn.to_k(context), attn.to_v(context)
            stamp = tuple(map(_version, (context, *attn.to_k.parameters(), *attn.to_v.parameters())))
            kept = self.kept.get(attn)
            if kept is None or kept[0] is not context or kept[1] != stamp:
                kept = self.kept[attn] = (context, stamp, attn.to_k(context), attn.to_v(context))
            return kept[2], kept[3]

    return PlainAttention, AttnProcessor2_0


@contextlib.contextmanager
def lean_ops(module, dtype: torch.dtype | None = None):
    """Within: ``module``'s linear layers and plain attention layers as the module doc says,
    where ``conv_layout.wanted`` (bf16 on a CPU with AMX); then as they were."""
    if module is None or not wanted(module, dtype) or not _exact():
        yield
        return
    from diffusers.models.attention_processor import Attention
    from diffusers.models.transformers.transformer_2d import Transformer2DModel
    plain, original = _attention_processor()
    shared = plain()                               # one a pass: the keys it keeps go with it
    patched, swapped, outputs = [], [], []
    for layer in module.modules():
        if "forward" in layer.__dict__:            # set up by an enclosing call, or by someone else
            continue
        if type(layer) is torch.nn.Linear:
            layer.forward = _linear_forward.__get__(layer)
            patched.append(layer)
        elif isinstance(layer, Transformer2DModel) and layer.is_input_continuous and not layer.use_linear_projection \
                and type(layer.proj_out) is torch.nn.Conv2d and layer.proj_out.weight.dim() == 4 \
                and not hasattr(layer.proj_out.weight, "device_mesh") and strided_channels_last(layer.proj_out.weight) \
                and "_get_output_for_continuous_inputs" not in layer.__dict__:
            layer._get_output_for_continuous_inputs = _transformer_output.__get__(layer)
            outputs.append(layer)
        elif isinstance(layer, Attention) and type(layer.processor) is original:
            swapped.append((layer, layer.processor))
            layer.processor = shared
    try:
        yield
    finally:
        for layer in patched:
            del layer.forward
        for layer in outputs:
            del layer._get_output_for_continuous_inputs
        for layer, processor in swapped:
            layer.processor = processor


@functools.cache
def _exact() -> bool:
    """torch's oneDNN linear (inductor's op, not public API) exists here and gives ``F.linear``'s bits
    on a small case; else everything runs as ever."""
    gen = torch.Generator().manual_seed(0)          # not the global stream: a run's draws stay as they were
    try:
        x = torch.randn(2, 40, 64, generator=gen).bfloat16()
        weight = torch.randn(96, 64, generator=gen).bfloat16()
        bias = torch.randn(96, generator=gen).bfloat16()
        with torch.no_grad():
            whole = F.linear(x, weight, bias)
            fused = torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
            return torch.equal(fused, whole)
    except (AttributeError, RuntimeError):
        return False
