"""The kernels the training step's forward and backward passes run: ``--compile``'s compiled blocks,
and short attention in fp32 on a CPU under bf16 (``cpu_attention``).

``--compile`` compiles the blocks the trained models repeat, not each model whole.

A model compiled whole is one graph of all its layers, and compiling it takes minutes: on a 2-core
CPU the mid-size SD1 with a LoRA (``benchmarks/train_step.py``) compiled for about 230 s and then
stepped slower than eager; on an H200 the full-size SD1.5 UNet with its adapters had not finished
compiling after 150 s. The blocks a model repeats (diffusers names them in ``_repeated_blocks``: the
UNet's transformer blocks; CLIP's encoder layers) share their code, so each distinct input shape is
compiled once and serves every block of that shape: the same run compiled for 75 s instead of 230, and
stepped no slower (regional compilation, as diffusers' ``compile_repeated_blocks``).

Both are switched on only around the step's forward and backward passes: gradient checkpointing runs
a block's forward again in the backward pass, and it must take the same path as the first time (the
compiled blocks do; the fp32 attention is left out under checkpointing, see ``step_kernels``).
Validation and class images run eager (each inference shape would compile again) and keep their
own attention (a PNG must replay bit for bit); what is saved is the plain modules either way."""
from __future__ import annotations

import contextlib

import torch

from ..errors import UserError, exception_line
from .clipping import fused_adamw
from .cpu_attention import attention_precision

TEXT_BLOCKS = ("CLIPEncoderLayer",)     # transformers' CLIP names no repeated blocks


def repeated_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The blocks ``model`` repeats, found by class name anywhere in their class's ancestry (FSDP2
    subclasses a module it shards)."""
    names = set(getattr(model, "_repeated_blocks", None) or TEXT_BLOCKS)
    return [m for m in model.modules() if any(c.__name__ in names for c in type(m).__mro__)]


class CompiledRegions:
    """Each repeated block of ``models`` with its compiled forward (compiled on first use, for the
    fixed shapes every step has: with dynamic shapes inductor failed on a trained text encoder)."""

    def __init__(self, models):
        self.blocks = [block for model in models for block in repeated_blocks(model)]
        self._own = [vars(block).get("forward") for block in self.blocks]     # a forward set on the block itself
        self._compiled = [torch.compile(block.forward, dynamic=False) for block in self.blocks]

    @contextlib.contextmanager
    def active(self):
        """The compiled forwards for the block; a machine that cannot compile stops the run in one line."""
        for block, forward in zip(self.blocks, self._compiled):
            block.forward = forward          # an instance attribute: the module calls it instead of its class's
        try:
            yield
        except torch._dynamo.exc.BackendCompilerFailed as exc:       # e.g. no C++ compiler, no triton
            reason = exception_line(getattr(exc, "inner_exception", None) or exc)
            raise UserError(f"--compile: torch.compile cannot compile on this machine ({reason}); "
                            "run without --compile") from None
        finally:
            for block, own in zip(self.blocks, self._own):
                if own is None:
                    del block.forward
                else:
                    block.forward = own


def step_kernels(models, compile: bool, checkpointing: bool, device: torch.device, autocast: torch.dtype | None,
                 optimizer=None):
    """A context-manager factory for the training step's forward and backward passes. Compiled blocks
    trace their own attention. With gradient checkpointing attention keeps its precision: torch's
    checkpoint runs a block again outside any torch function mode, and a block whose attention ran in
    fp32 and then in bf16 stops the run (``CheckpointError``: the recomputed tensors' dtypes differ).
    Where ``optimizer`` keeps bf16 copies of the weights (``bf16_copies``), the modules hold them for the step."""
    if compile:
        kernels = CompiledRegions(models).active
    else:
        kernels = contextlib.nullcontext if checkpointing else attention_precision(device, autocast)
    weights = getattr(fused_adamw(optimizer), "swapped", None) if optimizer is not None else None
    if weights is None:
        return kernels

    @contextlib.contextmanager
    def both():
        with kernels(), weights():
            yield
    return both
