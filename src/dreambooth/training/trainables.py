"""What trains and how: the weights that get gradients (LoRA adapters, or the UNet and text
encoders, or only the identifier's embedding offset), their parameter groups and learning rates,
the optimizer and the learning-rate schedule."""
from __future__ import annotations

from typing import Callable

import torch

from .. import progress
from ..devices import training_precision
from ..errors import UserError
from ..models.families import text_layers
from ..models.identifier import attach as attach_identifier
from ..models.identifier import identifier_token_ids
from ..models.lora import TEXT_ENCODER_TARGETS, UNET_TARGETS, add_adapters, autocast_adapters
from ..models.loading import quietly
from ..models.tokens import subject_identifier, trained_identifier_words
from .bf16_copies import AdamWWithBf16Copies, keeps_copies
from .config import TrainConfig
from .cuda_graphs import checkpoint_for_graphs
from .fused_backward import PerWeightOptimizer

AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}      # --mixed-precision: what autocast runs in


def move(module: torch.nn.Module, device, dtype: torch.dtype | None = None) -> None:
    """``.to`` in one pass, each weight cast on its way, so the device never holds the whole part at
    the checkpoint's precision: moved first and cast there, an SDXL LoRA's frozen UNet put 9.6 GiB of
    fp32 on the GPU, more than its steps hold (6.7 GiB with checkpointing). Leaves the dtype alone
    when it already matches (diffusers warns on every cast)."""
    if dtype is not None and module.dtype != dtype:
        with quietly():          # diffusers' advice to cast while loading instead: this cast is on purpose
            module.to(device, dtype)
    else:
        module.to(device)


def uncached_autocast():
    """accelerate's autocast for the training passes, without its cache: the cache keeps a low-precision
    copy of every weight it casts until the model's forward pass returns, so with checkpointing the
    trained weights' copies were all held at once (SDXL full: 4.8 GiB). Each weight is cast once a pass
    either way (checkpointing's recompute casts again with or without it): nothing is cast twice."""
    from accelerate.utils import AutocastKwargs
    return AutocastKwargs(cache_enabled=False)


def choose_precision(cfg: TrainConfig, device: torch.device) -> TrainConfig:
    """``--mixed-precision auto`` made definite for the device the run trains on
    (``devices.training_precision``) and said in one line; the run goes on, and records, the precision chosen."""
    if cfg.mixed_precision != "auto":
        return cfg
    chosen = training_precision(device, fp16=not cfg.fused_backward_pass)    # fused: no loss scaling
    progress.message(f"--mixed-precision auto: {chosen} on this {device.type}")
    return cfg.replace(mixed_precision=chosen)


def vae_dtype(force_upcast: bool, weight_dtype: torch.dtype) -> torch.dtype:
    """What the frozen VAE runs in (the trainer, and the preflight's count): the run's low precision,
    except fp32 for a VAE that overflows in fp16 (the SDXL VAE's black images, kohya #952) unless its
    config says it is fp16-safe (``force_upcast: false``). bf16 has fp32's range, so it needs no
    upcast (diffusers' pipelines upcast for fp16 only), and a bf16 VAE encodes a 512 px picture in
    3.8 s against fp32's 6.6 s on an AVX512-BF16 CPU, with half the activations on a GPU."""
    return torch.float32 if weight_dtype == torch.float16 and force_upcast else weight_dtype


def identifier_offsets(family, cfg: TrainConfig, device, warn: Callable[[str], None]) -> list[torch.nn.Parameter]:
    """``--identifier-lr``: the identifier's embedding offset in each text encoder (empty when off)."""
    if not cfg.identifier_lr:
        return []
    if cfg.method == "lora":
        warn("--identifier-lr is for full fine-tuning (a LoRA file has no place for an embedding); ignored")
        return []
    words = trained_identifier_words(cfg.instance_prompt, cfg.class_prompt)
    if not words:
        warn("--identifier-lr: the instance prompt has no identifier beyond the class words; ignored")
        return []
    if len(words) > 1 and subject_identifier(cfg.instance_prompt, cfg.class_prompt) is None:
        # no one identifier: every candidate's embedding moves, in every prompt that says it
        warn(f"--identifier-lr trains the embeddings of {', '.join(repr(w) for w in words)}: no single identifier "
             f"word in --instance-prompt; write one rare word before the class noun, and give --class-prompt "
             f"(e.g. 'a {words[-1]}')")
    offsets = []
    for tok, te in zip(family.tokenizers, family.text_encoders):
        ids = identifier_token_ids(tok, cfg.instance_prompt, cfg.class_prompt)
        if not cfg.train_text_encoder:
            move(te, device, torch.float32)
        wrapper = attach_identifier(te, ids)
        wrapper.base.weight.requires_grad_(False)   # every other word keeps its embedding
        offsets.append(wrapper.delta)
    return offsets


def skipped_layers(te, clip_skip: int) -> list[torch.nn.Module]:
    """The text-encoder layers whose output clip skip N never reads (the last N - 1): they stay as they
    are, so that no process waits for gradients that never come (DDP fails on them)."""
    layers = list(text_layers(te))
    return layers[len(layers) - clip_skip + 1:] if clip_skip > 1 else []


def text_encoder_targets(te, clip_skip: int) -> list[str]:
    """The text encoder's LoRA targets (``TEXT_ENCODER_TARGETS``), by full name, outside the skipped layers."""
    if clip_skip == 1:
        return TEXT_ENCODER_TARGETS
    skipped = {id(m) for layer in skipped_layers(te, clip_skip) for m in layer.modules()}
    return [name for name, module in te.named_modules()
            if name.rsplit(".", 1)[-1] in TEXT_ENCODER_TARGETS and id(module) not in skipped]


def make_trainable(pipe, family, cfg: TrainConfig, device, warn: Callable[[str], None]):
    """Give the right weights gradients; returns ({name: module with trainable weights}, optimizer
    parameter groups: UNet, text encoders at their own rate, identifier offsets at theirs)."""
    unet = pipe.unet
    encoders = dict(zip(family.text_encoder_names, family.text_encoders)) if cfg.train_text_encoder else {}
    if cfg.method == "lora":
        add_adapters(unet, cfg.rank, cfg.alpha, UNET_TARGETS, cfg.lora_dropout)
        for te in encoders.values():
            add_adapters(te, cfg.rank, cfg.alpha, text_encoder_targets(te, cfg.clip_skip), cfg.lora_dropout)
        for model in [unet, *encoders.values()]:
            for p in model.parameters():
                if p.requires_grad:
                    p.data = p.data.float()      # adapters train in fp32 whatever the frozen base is in
            if cfg.mixed_precision in AUTOCAST:     # the step and validation run them under autocast
                autocast_adapters(model)
    else:
        unet.requires_grad_(True)
        for te in encoders.values():
            te.requires_grad_(True)
            for layer in skipped_layers(te, cfg.clip_skip):
                layer.requires_grad_(False)
    if cfg.gradient_checkpointing:
        draws_no_random_numbers = not getattr(unet.config, "dropout", 0) and not cfg.adapters_draw_random_numbers
        unet.enable_gradient_checkpointing(checkpoint_for_graphs if cfg.cuda_graphs and draws_no_random_numbers else None)
        for te in encoders.values():     # (transformers 5 renamed it; the old name warns of its removal)
            (getattr(te, "activation_checkpointing_enable", None) or te.gradient_checkpointing_enable)()
    offsets = identifier_offsets(family, cfg, device, warn)
    if offsets:   # the encoders now carry trainable offsets: checkpointed and prepared like any trainable
        encoders = dict(zip(family.text_encoder_names, family.text_encoders))
    groups = [{"params": [p for p in unet.parameters() if p.requires_grad], "lr": cfg.learning_rate}]
    for te in encoders.values():
        params = [p for p in te.parameters() if p.requires_grad and not any(p is o for o in offsets)]
        if params:
            groups.append({"params": params, "lr": cfg.text_encoder_lr or cfg.learning_rate})
    if offsets:
        groups.append({"params": offsets, "lr": cfg.identifier_lr, "weight_decay": 0.0})
    return {"unet": unet, **encoders}, groups


def make_optimizer(groups: list[dict], cfg: TrainConfig, models=(), device=torch.device("cpu"), processes: int = 1):
    """AdamW (fused) or bitsandbytes' 8-bit AdamW; with ``--fused-backward-pass`` one per weight,
    stepped in the backward pass (``fused_backward``); where it pays, AdamW training the linear and
    convolution weights of the trained ``models`` through bf16 copies (``bf16_copies``)."""
    if cfg.fused_backward_pass:
        return PerWeightOptimizer(groups, lambda group: _adamw(group, cfg))
    if keeps_copies(cfg, device, processes):
        return AdamWWithBf16Copies(groups, models, **_adamw_settings(cfg))
    return _adamw(groups, cfg)


def _adamw_settings(cfg: TrainConfig) -> dict:
    return dict(betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay, eps=cfg.adam_epsilon)


EIGHT_BIT_WITHOUT_CUDA = ("--use-8bit-adam needs a CUDA GPU (bitsandbytes' 8-bit optimizers run on CUDA); on this "
                          "machine drop the flag, or give --no-use-8bit-adam where a preset sets it (sdxl-lora does)")


def _adamw(groups: list[dict], cfg: TrainConfig):
    kwargs = _adamw_settings(cfg)
    if not cfg.use_8bit_adam:
        # The fused kernel is one call for all parameters (the default loops over them): measured a
        # quarter off a toy-model step on CPU. It needs floating-point parameters on CPU or CUDA.
        tensors = [p for g in groups for p in g["params"]]
        fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in tensors)
        return torch.optim.AdamW(groups, fused=fused or None, **kwargs)
    if not torch.cuda.is_available():      # (train() says so before anything is written: guard)
        raise UserError(EIGHT_BIT_WITHOUT_CUDA)
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise UserError("--use-8bit-adam needs bitsandbytes: pip install 'dreambooth[cuda]' (or bitsandbytes)") from None
    return bnb.optim.AdamW8bit(groups, **kwargs)


def make_lr_scheduler(optimizer, cfg: TrainConfig):
    """Stepped once per optimizer step by the trainer (not by accelerate, which steps it once per process)."""
    from diffusers.optimization import get_scheduler
    name = "constant_with_warmup" if cfg.lr_scheduler == "constant" and cfg.lr_warmup_steps else cfg.lr_scheduler
    return get_scheduler(name, optimizer, num_warmup_steps=cfg.lr_warmup_steps, num_training_steps=cfg.max_steps)
