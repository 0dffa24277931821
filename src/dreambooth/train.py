"""The one DreamBooth training loop, for every family (SD1, SD2, SDXL) and method (full, LoRA).

    loss = mse(instance) + prior_loss_weight * mse(prior)

with instance and class examples in one batch and one UNet pass (Ruiz et al. 2023; the diffusers
reference loop). What differs between families is in ``families.py``; what differs between full
fine-tuning and LoRA is only which parameters train and how the output is written.
``Trainer.setup`` builds everything, ``Trainer.step`` is the math, ``Trainer.fit`` the loop.
"""
from __future__ import annotations

import logging
import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from . import checkpoint as ckpt
from .config import TrainConfig, save_config
from .data import Batch, ExampleStream, load_examples
from .errors import UserError
from .families import Conditioning, adapter_for, time_ids
from .identifier import attach as attach_identifier
from .identifier import identifier_token_ids
from .identifier import merged as merged_identifier
from .lora import TEXT_ENCODER_TARGETS, UNET_TARGETS, add_adapters, save_diffusers_lora, save_kohya_lora
from .models import load_pipeline
from .progress import console, progress_bar
from .tokens import identifier_warnings, identifier_words

log = logging.getLogger("dreambooth")
KEPT_ON_OVERWRITE = ("class_images",)
SAVE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TrainingStopped(UserError):
    """Training cannot go on (e.g. the loss keeps being non-finite); nothing broken was saved."""


@dataclass
class TrainResult:
    output: Path
    steps: int
    losses: list[float]
    seconds: float
    peak_memory_bytes: int
    files: list[Path]
    skipped_steps: int = 0
    warnings: list[str] = field(default_factory=list)


def prepare_output(output: Path, overwrite: bool, resume: str | None) -> None:
    """Refuse to clobber a non-empty output unless asked; ``--overwrite`` keeps class images."""
    if output.exists() and not output.is_dir():
        raise UserError(f"--output {output}: exists and is not a folder")
    entries = [p for p in output.iterdir() if p.name not in KEPT_ON_OVERWRITE] if output.is_dir() else []
    if not entries or resume:
        output.mkdir(parents=True, exist_ok=True)
        return
    if not overwrite:
        hint = " or --resume latest to continue" if ckpt.list_checkpoints(output) else ""
        raise UserError(f"--output {output}: exists and is not empty; pass --overwrite to replace it "
                        f"(class images are kept){hint}")
    for entry in entries:
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def move(module: torch.nn.Module, device, dtype: torch.dtype | None = None) -> None:
    """``.to`` that leaves the dtype alone when it already matches (diffusers warns on every cast)."""
    module.to(device)
    if dtype is not None and module.dtype != dtype:
        module.to(dtype=dtype)


def peak_memory() -> int:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # Linux reports KiB


def per_example_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) mean squared error of each example; with (B, 1, H, W) pixel ``weights`` (pooled to the
    latents' size), a weighted mean, so an example's loss keeps its scale whatever share is weighted."""
    per_pixel = F.mse_loss(pred, target, reduction="none")
    if weights is None:
        return per_pixel.mean(dim=(1, 2, 3))
    w = F.adaptive_avg_pool2d(weights.to(per_pixel.device), per_pixel.shape[-2:])
    return (per_pixel * w).mean(dim=(1, 2, 3)) / w.mean(dim=(1, 2, 3))


def _optimizer(params, config: TrainConfig):
    kwargs = dict(betas=(config.adam_beta1, config.adam_beta2), weight_decay=config.weight_decay, eps=config.adam_epsilon)
    if not config.use_8bit_adam:
        # The fused kernel is one call for all parameters (the default loops over them): measured a
        # quarter off a toy-model step on CPU. It needs floating-point parameters on CPU or CUDA.
        tensors = [p for g in params for p in g["params"]]
        fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in tensors)
        return torch.optim.AdamW(params, fused=fused or None, **kwargs)
    if not torch.cuda.is_available():
        raise UserError("--use-8bit-adam needs a CUDA GPU (bitsandbytes' 8-bit optimizers run on CUDA); drop the flag on this machine")
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise UserError("--use-8bit-adam needs bitsandbytes: pip install 'dreambooth[cuda]' (or bitsandbytes)") from None
    return bnb.optim.AdamW8bit(params, **kwargs)


class Trainer:
    def __init__(self, config: TrainConfig, callbacks=()):
        config.validate()
        self.config = config
        self.callbacks = list(callbacks)
        self.output = Path(config.output).expanduser()
        self.step = 0
        self.losses: list[float] = []
        self.skipped = 0
        self.warnings: list[str] = []

    # ----- setup ---------------------------------------------------------------------------
    def setup(self) -> "Trainer":
        from accelerate import Accelerator
        from diffusers import DDPMScheduler

        cfg = self.config
        cpu = not torch.cuda.is_available()
        if cfg.mixed_precision == "fp16" and cpu:
            raise UserError("--mixed-precision fp16 needs a GPU; use bf16 (or no) on CPU")
        # accelerate keeps one process-wide state; a second run in the same process (a notebook, the
        # web UI, tests) may ask for another precision, so reset all but the distributed part.
        from accelerate.state import AcceleratorState
        AcceleratorState._reset_state(reset_partial_state=False)
        self.accelerator = Accelerator(mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.gradient_accumulation, cpu=cpu)
        self.device = self.accelerator.device
        prepare_output(self.output, cfg.overwrite, cfg.resume)
        self.resume_from = ckpt.find_checkpoint(cfg.resume, self.output) if cfg.resume else None

        self.pipe = pipe = load_pipeline(cfg.model, vae=cfg.vae, model_config=cfg.model_config)
        self.family = adapter_for(pipe)
        native = pipe.unet.config.sample_size * pipe.vae_scale_factor
        self.config = cfg = cfg.resolve_defaults(native or self.family.default_resolution)
        if cfg.resolution % pipe.vae_scale_factor:
            raise UserError(f"--resolution {cfg.resolution}: must be a multiple of {pipe.vae_scale_factor} for this model")
        torch.manual_seed(cfg.seed)
        self.noise_gen = torch.Generator().manual_seed(cfg.seed + 1 + self.accelerator.process_index)

        # Frozen parts run in the autocast dtype; trainable weights always stay fp32.
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.mixed_precision, torch.float32)
        pipe.vae.requires_grad_(False)
        pipe.unet.requires_grad_(False)
        for te in self.family.text_encoders:
            te.requires_grad_(False)
        # The SDXL VAE overflows in fp16 (black images, kohya #952): keep it fp32 unless it says it is fp16-safe.
        vae_dtype = torch.float32 if getattr(pipe.vae.config, "force_upcast", False) else self.weight_dtype
        move(pipe.vae, self.device, vae_dtype)
        # A LoRA's frozen base UNet may run in low precision; its adapters are added in fp32 below.
        move(pipe.unet, self.device, self.weight_dtype if cfg.method == "lora" else torch.float32)
        for te in self.family.text_encoders:
            move(te, self.device, torch.float32 if cfg.train_text_encoder else self.weight_dtype)

        self._prepare_data(cfg)
        self._prepare_trainables(cfg)
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.prediction_type = self.noise_scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise UserError(f"--model {cfg.model}: prediction type '{self.prediction_type}' is not supported (epsilon or v_prediction)")
        self._text_cache: dict[str, object] = {}
        self._latent_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.warnings += identifier_warnings(self.family.tokenizers[0], cfg.instance_prompt, cfg.class_prompt)
        if self.resume_from:
            state = ckpt.load_checkpoint(self.resume_from, self.trainables, self.optimizer, self.settings())
            self.step, self.losses, self.skipped = state["step"], state["losses"], state["skipped"]
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
            self.stream.load_state_dict(state["stream"])
            self.noise_gen.set_state(state["noise_gen"])
            console().print(f"resumed from {self.resume_from} at step {self.step}")
        return self

    def _prepare_data(self, cfg: TrainConfig) -> None:
        instance = load_examples(cfg.instance_dir, cfg.instance_prompt, cfg.resolution, cfg.captions, warn=self._warn)
        prior = []
        if cfg.prior_preservation:
            class_dir = Path(cfg.class_dir).expanduser() if cfg.class_dir else self.output / "class_images"
            if self.accelerator.is_main_process:
                self._class_images(class_dir)
            self.accelerator.wait_for_everyone()
            prior = load_examples(class_dir, cfg.class_prompt, cfg.resolution, flag="--class-dir", warn=self._warn)
        self.class_images = len(prior)
        self.instance_images = len(instance)
        self.stream = ExampleStream(instance, prior, cfg.batch_size, cfg.resolution, cfg.center_crop,
                                    cfg.random_flip, cfg.seed + 7919 * self.accelerator.process_index,
                                    cfg.backdrop_augment, cfg.backdrop_loss_weight,
                                    cfg.backdrop_caption, cfg.caption_dropout)
        if cfg.backdrop_caption and not cfg.backdrop_augment:      # a warning: the toy preset turns it on
            self._warn("--backdrop-caption names recoloured backdrops, and --backdrop-augment is 0; ignored")
        if cfg.backdrop_augment or cfg.backdrop_loss_weight != 1:
            plain = sum(b is not None for b in self.stream.backdrops)
            name = "--backdrop-augment" if cfg.backdrop_augment else "--backdrop-loss-weight"
            console().print(f"{name}: {plain} of {len(instance)} instance pictures have a plain backdrop")

    def _class_images(self, class_dir: Path) -> None:
        from .prior import ensure_class_images
        cfg = self.config
        ensure_class_images(self.pipe, cfg.class_prompt, class_dir, cfg.num_class_images, cfg.class_batch_size,
                            cfg.resolution, cfg.class_steps, cfg.class_cfg, cfg.seed, cfg.class_negative_prompt,
                            autocast=self.accelerator.autocast)

    def _prepare_trainables(self, cfg: TrainConfig) -> None:
        from diffusers.optimization import get_scheduler
        unet = self.pipe.unet
        encoders = dict(zip(self.family.text_encoder_names, self.family.text_encoders)) if cfg.train_text_encoder else {}
        if cfg.method == "lora":
            add_adapters(unet, cfg.rank, cfg.alpha, UNET_TARGETS, cfg.lora_dropout)
            for te in encoders.values():
                add_adapters(te, cfg.rank, cfg.alpha, TEXT_ENCODER_TARGETS, cfg.lora_dropout)
            for model in [unet, *encoders.values()]:
                for p in model.parameters():
                    if p.requires_grad:
                        p.data = p.data.float()
        else:
            unet.requires_grad_(True)
            for te in encoders.values():
                te.requires_grad_(True)
        if cfg.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
            for te in encoders.values():
                te.gradient_checkpointing_enable()
        offsets = self._identifier_offsets(cfg)
        if offsets:   # the encoders now carry trainable offsets: checkpointed and prepared like any trainable
            encoders = dict(zip(self.family.text_encoder_names, self.family.text_encoders))
        self.trainables = {"unet": unet, **encoders}
        groups = [{"params": [p for p in unet.parameters() if p.requires_grad], "lr": cfg.learning_rate}]
        for te in encoders.values():
            params = [p for p in te.parameters() if p.requires_grad and not any(p is o for o in offsets)]
            if params:
                groups.append({"params": params, "lr": cfg.text_encoder_lr or cfg.learning_rate})
        if offsets:
            groups.append({"params": offsets, "lr": cfg.identifier_lr, "weight_decay": 0.0})
        self.optimizer = _optimizer(groups, cfg)
        # Stepped once per optimizer step by us (not by accelerate, which steps it once per process).
        name = "constant_with_warmup" if cfg.lr_scheduler == "constant" and cfg.lr_warmup_steps else cfg.lr_scheduler
        self.lr_scheduler = get_scheduler(name, self.optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                                          num_training_steps=cfg.max_steps)
        prepared = self.accelerator.prepare(*self.trainables.values(), self.optimizer)
        *models, self.optimizer = prepared
        self.models = models   # possibly DDP-wrapped; self.trainables keeps the plain modules
        self.unet = models[0]

    def _identifier_offsets(self, cfg: TrainConfig) -> list[torch.nn.Parameter]:
        """``--identifier-lr``: the identifier's embedding offset in each text encoder (empty when off)."""
        if not cfg.identifier_lr:
            return []
        if cfg.method == "lora":
            self._warn("--identifier-lr is for full fine-tuning (a LoRA file has no place for an embedding); ignored")
            return []
        if not identifier_words(cfg.instance_prompt, cfg.class_prompt):
            self._warn("--identifier-lr: the instance prompt has no identifier beyond the class words; ignored")
            return []
        offsets = []
        for tok, te in zip(self.family.tokenizers, self.family.text_encoders):
            ids = identifier_token_ids(tok, cfg.instance_prompt, cfg.class_prompt)
            if not cfg.train_text_encoder:
                move(te, self.device, torch.float32)
            wrapper = attach_identifier(te, ids)
            wrapper.base.weight.requires_grad_(False)   # every other word keeps its embedding
            offsets.append(wrapper.delta)
        return offsets

    @property
    def trains_text(self) -> bool:
        """Some text-encoder weight trains (the encoder, or only the identifier's offset)."""
        return len(self.trainables) > 1

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        console().print(f"[yellow]warning:[/] {message}")

    def settings(self) -> dict:
        return {k: getattr(self.config, k) for k in ckpt.SHAPE_SETTINGS}

    # ----- the math --------------------------------------------------------------------------
    def conditioning(self, prompts: list[str]):
        """Text conditioning; cached per prompt while the text encoders are frozen."""
        if self.trains_text:
            return self.family.encode(self.family.tokenize(prompts))
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            with torch.no_grad():
                cond = self.family.encode(self.family.tokenize(missing))
            for i, p in enumerate(missing):
                self._text_cache[p] = (cond.embeds[i:i + 1], None if cond.pooled is None else cond.pooled[i:i + 1])
        embeds = torch.cat([self._text_cache[p][0] for p in prompts])
        pooled = None if self._text_cache[prompts[0]][1] is None else torch.cat([self._text_cache[p][1] for p in prompts])
        return Conditioning(embeds, pooled)

    def latents(self, batch: Batch) -> torch.Tensor:
        """VAE latents of the batch, sampled from the posterior (cached mean/std when crops are fixed)."""
        vae = self.pipe.vae
        if self.config.cache_latents:
            # a picture made for this step alone (index None) is encoded but not kept
            encoded = {}
            missing = [j for j, i in enumerate(batch.indices) if i is None or i not in self._latent_cache]
            if missing:
                with torch.no_grad():
                    dist = vae.encode(batch.pixels[missing].to(self.device, vae.dtype)).latent_dist
                for k, j in enumerate(missing):
                    encoded[j] = (dist.mean[k:k + 1].float(), dist.std[k:k + 1].float())
                    if batch.indices[j] is not None:
                        self._latent_cache[batch.indices[j]] = encoded[j]
            pairs = [encoded[j] if j in encoded else self._latent_cache[i] for j, i in enumerate(batch.indices)]
            mean = torch.cat([m for m, _ in pairs])
            std = torch.cat([s for _, s in pairs])
            sample = mean + std * torch.randn(mean.shape, generator=self.noise_gen).to(self.device)
        else:
            with torch.no_grad():
                dist = vae.encode(batch.pixels.to(self.device, vae.dtype)).latent_dist
            sample = dist.mean.float() + dist.std.float() * torch.randn(dist.mean.shape, generator=self.noise_gen).to(self.device)
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return (sample - shift) * vae.config.scaling_factor

    def loss(self, batch: Batch) -> torch.Tensor:
        cfg = self.config
        latents = self.latents(batch)
        b = latents.shape[0]
        noise = torch.randn(latents.shape, generator=self.noise_gen)
        if cfg.offset_noise:
            noise = noise + cfg.offset_noise * torch.randn((b, latents.shape[1], 1, 1), generator=self.noise_gen)
        noise = noise.to(self.device)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (b,), generator=self.noise_gen).to(self.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        cond = self.conditioning(batch.prompts)
        added = None
        if self.family.needs_time_ids:
            ids = torch.stack([time_ids(o, c, (cfg.resolution, cfg.resolution)) for o, c in zip(batch.original_hw, batch.crop_top_left)])
            added = self.family.added_cond(cond, ids.to(self.device))
        with self.accelerator.autocast():
            pred = self.unet(noisy, timesteps, cond.embeds, added_cond_kwargs=added).sample
        target = noise if self.prediction_type == "epsilon" else self.noise_scheduler.get_velocity(latents, noise, timesteps)
        per_example = per_example_mse(pred.float(), target.float(), batch.loss_weights)
        if cfg.snr_gamma:
            from diffusers.training_utils import compute_snr
            snr = compute_snr(self.noise_scheduler, timesteps)
            clipped = torch.clamp(snr, max=cfg.snr_gamma)
            per_example = per_example * (clipped / (snr + 1) if self.prediction_type == "v_prediction" else clipped / snr)
        prior = batch.is_prior.to(self.device)
        loss = per_example[~prior].mean()
        if prior.any():
            loss = loss + cfg.prior_loss_weight * per_example[prior].mean()
        return loss

    # ----- the loop ----------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        cfg, acc = self.config, self.accelerator
        started, nonfinite_in_a_row = time.time(), 0
        params = [p for m in self.trainables.values() for p in m.parameters() if p.requires_grad]
        for m in self.models:
            m.train()
        self._call("on_train_start")
        with progress_bar(cfg.max_steps, "training", "loss {task.fields[loss]:.4f}", completed=self.step) as bar:
            while self.step < cfg.max_steps:
                batch = self.stream.next_batch()
                with acc.accumulate(*self.models):
                    loss = self.loss(batch)
                    if not torch.isfinite(loss):
                        self.optimizer.zero_grad(set_to_none=True)
                        self.skipped += 1
                        nonfinite_in_a_row += 1
                        if nonfinite_in_a_row >= cfg.max_nonfinite_steps:
                            raise TrainingStopped(
                                f"the loss was not finite {nonfinite_in_a_row} steps in a row (step {self.step}); stopped "
                                "without saving. Lower --learning-rate, use --mixed-precision bf16/no, or a fp16-safe --vae")
                        continue
                    nonfinite_in_a_row = 0
                    acc.backward(loss)
                    if acc.sync_gradients and cfg.max_grad_norm > 0:
                        acc.clip_grad_norm_(params, cfg.max_grad_norm)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                if not acc.sync_gradients:
                    continue
                self.lr_scheduler.step()
                self.step += 1
                self.losses.append(loss.item())
                bar.advance(1, loss=self.losses[-1])
                self._call("on_step_end")
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < cfg.max_steps:
                    self.save_checkpoint()
        files = self.save_output()
        self._call("on_train_end")
        if cfg.keep_best:
            self._keep_best()
        return TrainResult(self.output, self.step, self.losses, time.time() - started, peak_memory(), files,
                           self.skipped, self.warnings)

    def _call(self, hook: str) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if fn is not None:
                fn(self)

    # ----- outputs ------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path | None:
        if not self.accelerator.is_main_process:
            return None
        self._assert_finite()
        state = {"losses": self.losses, "skipped": self.skipped, "lr_scheduler": self.lr_scheduler.state_dict(),
                 "stream": self.stream.state_dict(), "noise_gen": self.noise_gen.get_state()}
        return ckpt.save_checkpoint(self.output, self.step, self.trainables, self.optimizer, state,
                                    self.settings(), self.config.keep_checkpoints)

    def _assert_finite(self) -> None:
        for name, model in self.trainables.items():
            for key, p in model.named_parameters():
                if p.requires_grad and not torch.isfinite(p).all():
                    raise TrainingStopped(f"trainable weight {name}.{key} is not finite at step {self.step}; nothing was saved")

    def pipeline(self):
        """An inference pipeline over the weights being trained (for validation images)."""
        return self.pipe

    def save_model(self, directory: Path) -> list[Path]:
        """Write the current weights in the output format (a LoRA file, or a pipeline folder)."""
        self._assert_finite()
        directory.mkdir(parents=True, exist_ok=True)
        cfg = self.config
        if cfg.method == "lora":
            files = [save_diffusers_lora(type(self.pipe), directory, self.trainables)]
            if cfg.export_kohya:
                files.append(save_kohya_lora(directory / f"{directory.name or 'lora'}.safetensors", self.trainables,
                                             self.family.name, {"ss_output_name": directory.name}, SAVE_DTYPES[cfg.save_precision]))
            return files
        return self._save_full(directory)

    def _save_full(self, directory: Path) -> list[Path]:
        cfg = self.config
        dtype = SAVE_DTYPES[cfg.save_precision]
        # Frozen parts are reloaded from the base so low-precision training copies never leak into the output.
        trained = {name: model for name, model in self.trainables.items()}
        with merged_identifier(self.family.text_encoders):   # a plain embedding matrix in the output
            base = load_pipeline(cfg.model, vae=cfg.vae, model_config=cfg.model_config, components=trained)
            for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
                if getattr(base, name, None) is not None:
                    move(getattr(base, name), "cpu", dtype)
            base.save_pretrained(directory, safe_serialization=True)
            for model in trained.values():
                move(model, self.device, torch.float32)
        files = [directory / "model_index.json"]
        if cfg.export_single_file:
            from .single_file import export_single_file
            files.append(export_single_file(directory, directory / f"{directory.name or 'model'}.safetensors",
                                            self.family.name, dtype=dtype))
        return files

    def _keep_best(self) -> None:
        """Put the weights the validation callback kept (``--keep-best``) in place of the final ones."""
        from .validation import best_checkpoint
        best = best_checkpoint(self.output) if self.accelerator.is_main_process else None
        if best is None:
            return
        for entry in best.iterdir():
            name = f"{self.output.name}.safetensors" if entry.name == f"{best.name}.safetensors" else entry.name
            target = self.output / name
            if target.is_dir():
                shutil.rmtree(target)
            (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, target)
        console().print(f"--keep-best: the output holds the weights kept in {best}")

    def save_output(self) -> list[Path]:
        if not self.accelerator.is_main_process:
            return []
        files = self.save_model(self.output)
        args = self.output / "training_args.json"
        import diffusers
        save_config(self.config, args, {
            "family": self.family.name, "prediction_type": self.prediction_type, "steps_done": self.step,
            "instance_images": self.instance_images, "class_images": self.class_images,
            "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
        })
        return files + [args]


def train(config: TrainConfig, callbacks=None) -> TrainResult:
    """Run DreamBooth with ``config``; the function the CLI, the demo and the web UI all call."""
    if callbacks is None:
        callbacks = _default_callbacks(config)
    return Trainer(config, callbacks).setup().fit()


def _default_callbacks(config: TrainConfig) -> list:
    if not config.validate_every:
        return []
    try:
        from .validation import validation_callbacks
    except ImportError:
        return []
    return validation_callbacks(config)


def summary(result: TrainResult) -> str:
    mem = result.peak_memory_bytes / 2**30
    lines = [f"trained {result.steps} steps in {result.seconds:.1f} s "
             f"({result.steps / max(result.seconds, 1e-9):.2f} steps/s), peak memory {mem:.2f} GiB",
             f"final loss {result.losses[-1]:.4f}" if result.losses else "no step ran"]
    if result.skipped_steps:
        lines.append(f"{result.skipped_steps} step(s) skipped for a non-finite loss")
    lines.append(f"output: {result.output}")
    lines += [f"  {p}" for p in result.files]
    lines += [f"warning: {w}" for w in dict.fromkeys(result.warnings)]
    return "\n".join(lines)

