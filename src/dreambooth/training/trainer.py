"""The one DreamBooth training loop, for every family (SD1, SD2, SDXL) and method (full, LoRA):
instance and class examples in one batch and one UNet pass, the objective in ``loss``. What differs
between families is in ``models.families``; what differs between full fine-tuning and LoRA is only
which parameters train (``trainables``) and how the output is written (``saving``).
``Trainer.setup`` builds everything, ``Trainer.loss`` is the math, ``Trainer.fit`` the loop. Progress
goes out as events (``dreambooth.progress``), milestones to the callbacks (``callbacks``: a typed protocol)."""
from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Sequence

import torch

from .. import progress
from ..errors import UserError, file_operation
from ..generation.pipeline import GenerationPipeline, ModelInfo, model_info_for
from ..host_memory import keep_freed_host_memory
from ..models.families import Conditioning, adapter_for, time_ids
from ..models.loading import load_pipeline
from ..models.tokens import identifier_warnings
from ..outputs import recorded_path
from . import checkpoint as ckpt
from .clipping import clip_gradients, fused_adamw
from .cuda_graphs import UNetPass
from .step_kernels import step_kernels
from .callbacks import CheckpointSaved, StepEnd, TrainingCallback, as_callbacks
from .loss import per_example_mse, prior_preserving_loss
from .results import TrainingInterrupted, TrainingStopped, TrainResult, peak_memory
from .resume_settings import recorded_settings
from .config import TrainConfig
from .data import Batch, ExampleTransform, load_examples
from .determinism import caller_random_state_kept, deterministic_kernels
from .preflight import preflight
from .processes import failing_together, prepare_models
from .run_data import prepare_data
from .guard import (OutputStage, check_distributed, check_inputs, check_one_process_options, check_precision_device,
                    hold_output)
from .latents import LatentCache
from ..parking import Parking
from .phases import PhaseClock
from .saving import keep_best, save_model, save_output
from .sharding import first_nonfinite, fsdp_plugin, is_sharded, shard_count, share
from .trainables import (AUTOCAST, choose_precision, make_lr_scheduler, make_optimizer, make_trainable, move,
                         uncached_autocast, vae_dtype)
from .validation import Validator
from .validation_follower import validator_for


class Trainer:
    def __init__(self, config: TrainConfig, callbacks: Sequence[TrainingCallback] = (),
                 transforms: Sequence[ExampleTransform] = ()):
        self.config = TrainConfig.checked(config)
        self.callbacks, self.transforms = as_callbacks(callbacks), list(transforms)
        self.output = Path(config.output).expanduser()
        self.step, self.stop_requested = 0, False     # request_stop: a checkpoint, then stop
        self.losses, self.warnings = [], []      # (floats, one per step; strings)
        self.skipped, self.started_at = 0, time.time()
        self.validator: Validator | None = None
        self.stage: OutputStage | None = None
        self.photos: dict | None = None     # their fingerprints (``run_data``), once the photos are read
        self.cleanup = contextlib.ExitStack()      # what the run holds until it ends (the output's lock)

    # ----- setup ---------------------------------------------------------------------------
    def setup(self) -> "Trainer":
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState
        from diffusers import DDPMScheduler
        cpu = not torch.cuda.is_available()
        cfg = self.config = choose_precision(self.config, torch.device("cpu" if cpu else "cuda"))   # the device accelerate gets
        check_precision_device(cfg, torch.device("cpu" if cpu else "cuda"))
        if cpu:
            keep_freed_host_memory()        # gradients reused, not faulted in each step (host_memory)
        # accelerate keeps one process-wide state; another run in this process may ask another precision
        AcceleratorState._reset_state(reset_partial_state=False)
        fsdp = check_distributed(cfg, self.warn)
        self.accelerator = Accelerator(mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.gradient_accumulation,
                                       cpu=cpu, fsdp_plugin=fsdp_plugin(cfg, fsdp), kwargs_handlers=[uncached_autocast()])
        self.device = self.accelerator.device
        with failing_together(self.accelerator):     # a run writing the output answers first (not "no checkpoint")
            if self.accelerator.is_main_process:
                hold_output(self.output, self.cleanup)
        # What can fail without writing anything, first (all processes at once): inputs, checkpoint, model, photos.
        with failing_together(self.accelerator):
            check_inputs(cfg, self.warn)
            check_one_process_options(cfg, self.device, self.accelerator.num_processes, fsdp, self.warn)
            self.resume_from = ckpt.find_checkpoint(cfg.resume, self.output, cfg.max_steps, self.warn) if cfg.resume else None
            self.pipe = pipe = load_pipeline(cfg.model, vae=cfg.vae, model_config=cfg.model_config)
            self.family = adapter_for(pipe)
            native = pipe.unet.config.sample_size * pipe.vae_scale_factor
            self.config = cfg = cfg.resolve_defaults(native or self.family.default_resolution, self.family.max_resolution)
            if cfg.resolution % pipe.vae_scale_factor:
                raise UserError(f"--resolution {cfg.resolution}: must be a multiple of {pipe.vae_scale_factor} for this model")
            clip_skip, warning = self.family.clip_skip_for(cfg.clip_skip)
            if warning:
                self.warn(warning)
            self.config = cfg = cfg.replace(clip_skip=clip_skip)    # what the run applies (and records)
            if self.resume_from:                                        # before class images are made
                ckpt.check_resumable(self.resume_from, self.settings())
            # Each process's own global RNGs (dropout); data, noise and timesteps: one stream all processes
            # draw for the global batch and slice (``ExampleStream``, ``Batch.drawn``; docs/multi-gpu.md)
            torch.manual_seed(cfg.seed + self.accelerator.process_index)
            self.noise_gen = torch.Generator().manual_seed(cfg.seed + 1)
            # Frozen parts run in the autocast dtype; trainable weights always stay fp32.
            self.weight_dtype = AUTOCAST.get(cfg.mixed_precision, torch.float32)
            for part in (pipe.vae, pipe.unet, *self.family.text_encoders):
                part.requires_grad_(False)
            move(pipe.vae, self.device, vae_dtype(bool(getattr(pipe.vae.config, "force_upcast", False)), self.weight_dtype))
            # A LoRA's frozen base UNet may run in low precision; its adapters are added in fp32 below.
            move(pipe.unet, self.device, self.weight_dtype if cfg.method == "lora" else torch.float32)
            for te in self.family.text_encoders:
                move(te, self.device, torch.float32 if cfg.train_text_encoder else self.weight_dtype)
            self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
            self.prediction_type = self.noise_scheduler.config.prediction_type
            if self.prediction_type not in ("epsilon", "v_prediction"):
                raise UserError(f"--model {cfg.model}: prediction type '{self.prediction_type}' is not supported (epsilon or v_prediction)")
            instance = load_examples(cfg.instance_dir, cfg.instance_prompt, cfg.resolution, cfg.captions,
                                     warn=self.warn, masks=cfg.masked_loss)
            shards = shard_count(self.accelerator, fsdp, self.warn)
            self.memory = preflight(pipe, self.family, cfg, self.device, shards, self.accelerator.num_processes)   # may refuse
            self.stage = OutputStage(self.output, cfg.overwrite, self.resume_from, cfg.resume == "latest")
            if self.accelerator.is_main_process:
                self.stage.prepare()
        for warning in identifier_warnings(self.family.tokenizers[0], cfg.instance_prompt, cfg.class_prompt, [e.prompt for e in instance]):
            self.warn(warning)             # now, before class images and steps are spent on them
        self.memory.report()
        prepare_data(self, cfg, instance)
        self.trainables, groups = make_trainable(pipe, self.family, cfg, self.device, self.warn)
        self.optimizer = make_optimizer(groups, cfg, self.trainables.values(), self.device, self.accelerator.num_processes)
        self.lr_scheduler = make_lr_scheduler(self.optimizer, cfg)
        self.models, self.optimizer = prepare_models(self.accelerator, self.trainables, self.optimizer,
                                                     self.family.unused_in_training())
        self.unet = self.models[0]     # possibly DDP-wrapped; self.trainables keeps the plain modules
        self.unet_pass = UNetPass(self.unet, self.accelerator, cfg.cuda_graphs)
        if is_sharded(self.accelerator):   # FSDP2 shards the modules in place
            progress.message(share(self.trainables, self.accelerator), own=True)
        prepared = dict(zip(self.trainables, self.models))   # trained encoders run wrapped: gradients synced
        self.text_encoders = [prepared.get(n, te) for n, te in zip(self.family.text_encoder_names, self.family.text_encoders)]
        self._text_cache: dict[str, tuple] = {}
        # frozen parts wait on the CPU once all is cached (on a GPU; or as the preflight says, for validation)
        self.parking = Parking(self.device, self.device.type == "cuda" or self.memory.validation_parking)
        # and the UNet while they cache (one process: DDP and FSDP keep theirs in place)
        with self.parking.away(self.trainables["unet"], self.accelerator.num_processes == 1 and not is_sharded(self.accelerator)):
            if (prompts := self.stream.every_prompt()) is not None and not self.trains_text:
                self.conditioning(prompts)
                for te in self.family.text_encoders:
                    self.parking.park(te)
            self.latent_cache = LatentCache(pipe.vae, self.device, cfg.cache_latents, parking=self.parking)
            self.latent_cache.fill(self.stream.every_picture())
        self.stream.needs_pixels = self.latent_cache.needs_pixels
        if self.latent_cache.complete:
            self.parking.park(pipe.vae)
        if self.resume_from:
            ckpt.resume_run(self, self.resume_from)
        if cfg.validate_every:
            self.validator = validator_for(self, self.accelerator.is_main_process, is_sharded(self.accelerator))
        return self

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return AUTOCAST.get(self.config.mixed_precision)

    def generation_pipeline(self, for_output: bool = True) -> GenerationPipeline:
        """The weights in memory, ready for the one sampling path. Its infotext names the base model
        (class images) or, ``for_output``, what the output will be: the output folder for a full run
        (its hash once written), the base model plus the output's LoRA for a LoRA run."""
        cfg, full, written = self.config, self.config.method == "full", self.stage is not None and self.stage.committed
        info = ModelInfo(name=self.output.resolve().name, path=self.output if written else None,
                         spec=recorded_path(self.output)) \
            if for_output and full else model_info_for(cfg.model, cfg.vae)
        pipeline = GenerationPipeline(self.pipe, info)
        if for_output and not full:
            pipeline.add_resident_lora(self.output)
        if for_output and self.memory.validation_parking:     # validation takes turns with the steps' own
            pipeline.parking = self.parking                    # parking (preflight); _validate puts all back
        return pipeline

    @property
    def trains_text(self) -> bool:     # some text-encoder weight trains (the encoder, or the identifier's offset)
        return len(self.trainables) > 1

    def warn(self, message: str) -> None:          # (TrainingRun.warn)
        self.warnings.append(message)
        progress.warn(message)

    def settings(self) -> dict:
        return recorded_settings(self.config, self.photos)

    # ----- the math --------------------------------------------------------------------------
    def conditioning(self, prompts: list[str]):
        """Text conditioning; cached per prompt while the text encoders are frozen, each encoded alone
        (its numbers never depend on which prompts were missing with it: exact resume)."""
        if self.trains_text:
            return self.family.encode(self.family.tokenize(prompts), self.text_encoders, self.config.clip_skip)
        for p in dict.fromkeys(prompts):
            if p not in self._text_cache:
                for te in self.family.text_encoders:
                    self.parking.ready(te)
                with torch.no_grad():
                    cond = self.family.encode(self.family.tokenize([p]), clip_skip=self.config.clip_skip)
                self._text_cache[p] = (cond.embeds, cond.pooled)
        embeds = torch.cat([self._text_cache[p][0] for p in prompts])
        pooled = None if self._text_cache[prompts[0]][1] is None else torch.cat([self._text_cache[p][1] for p in prompts])
        return Conditioning(embeds, pooled)

    def latents(self, batch: Batch) -> torch.Tensor:
        """VAE latents of the batch, sampled from the posterior (kept per picture: ``training.latents``)."""
        vae = self.pipe.vae
        mean, std = self.latent_cache.posterior(batch)
        sample = mean + std * self._to_device(batch.drawn(lambda n: torch.randn((n, *mean.shape[1:]), generator=self.noise_gen)))
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return (sample - shift) * vae.config.scaling_factor

    def loss(self, batch: Batch) -> torch.Tensor:
        cfg = self.config
        latents = self.latents(batch)
        gen, shape, steps = self.noise_gen, latents.shape[1:], self.noise_scheduler.config.num_train_timesteps
        noise = batch.drawn(lambda n: torch.randn((n, *shape), generator=gen))
        if cfg.offset_noise:
            noise = noise + cfg.offset_noise * batch.drawn(lambda n: torch.randn((n, shape[0], 1, 1), generator=gen))
        noise = self._to_device(noise)
        timesteps = self._to_device(batch.drawn(lambda n: torch.randint(0, steps, (n,), generator=gen)))
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        cond = self.conditioning(batch.prompts)
        added = None
        if self.family.needs_time_ids:
            ids = torch.stack([time_ids(o, c, (cfg.resolution, cfg.resolution)) for o, c in zip(batch.original_hw, batch.crop_top_left)])
            added = self.family.added_cond(cond, self._to_device(ids))
        pred = self.unet_pass(noisy, timesteps, cond.embeds, added)
        target = noise if self.prediction_type == "epsilon" else self.noise_scheduler.get_velocity(latents, noise, timesteps)
        per_example = per_example_mse(pred.float(), target.float(), batch.loss_weights)
        if cfg.snr_gamma:
            from diffusers.training_utils import compute_snr
            snr = compute_snr(self.noise_scheduler, timesteps)
            clipped = torch.clamp(snr, max=cfg.snr_gamma)
            per_example = per_example * (clipped / (snr + 1) if self.prediction_type == "v_prediction" else clipped / snr)
        return prior_preserving_loss(per_example, batch.is_prior, cfg.prior_loss_weight, self._to_device)

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """A CPU-made tensor (noise, timesteps, indices) to the device without waiting for the GPU."""
        return tensor.to(self.device, non_blocking=True)      # (a blocking copy would drain its queue every step)

    # ----- the loop ----------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        cfg, acc = self.config, self.accelerator
        started, first_step, self._nonfinite_in_a_row = time.time(), self.step, 0     # (a resumed run: its step)
        params = [p for m in self.trainables.values() for p in m.parameters() if p.requires_grad]
        for m in self.models:
            m.train()
        for cb in self.callbacks:
            cb.on_train_start(self)
        if self.validator:
            self._validate(self.validator.start)
        kernels = step_kernels(self.trainables.values(), cfg.compile, cfg.gradient_checkpointing, self.device, self.autocast_dtype, self.optimizer)
        # With fused AdamW a non-finite step is skipped on the device (its found_inf) and the loss read one step
        # late: no host sync in the step, so the GPU's queue never runs dry. Checkpoint, validation, last: at once.
        lagged = cfg.gradient_accumulation == 1 and (inner := fused_adamw(self.optimizer)) is not None
        pending = None
        with progress.task("training", cfg.max_steps, completed=self.step, loss=float("nan")) as self._bar, \
                ckpt.interruptible(self.output, lambda: self.step, (cfg.checkpoint_every, cfg.max_steps)):
            while self.step + (pending is not None) < cfg.max_steps:
                if self.stop_requested and pending is None and acc.sync_gradients:   # between two steps
                    raise TrainingInterrupted(self.step, self.save_checkpoint())
                batch = self.stream.next_batch()
                with acc.accumulate(*self.models):
                    with kernels():       # forward and backward (checkpointing runs blocks again in it)
                        loss = self.loss(batch)
                        # the global batch's loss (mean over processes): the same decision everywhere
                        seen = acc.reduce(loss.detach(), "mean") if acc.num_processes > 1 else loss.detach()
                        if not lagged and not torch.isfinite(seen):
                            self.optimizer.zero_grad(set_to_none=True)
                            self._skipped()
                            continue
                        acc.backward(loss)
                    if acc.sync_gradients and cfg.max_grad_norm > 0 and not cfg.fused_backward_pass:
                        clip_gradients(acc, self.optimizer, params, cfg.max_grad_norm)
                    if pending is not None:          # before this step: its learning rate follows
                        self._step_done(pending)
                        pending = None
                    if lagged:
                        inner.found_inf = (~torch.isfinite(seen)).float()
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                if not acc.sync_gradients:
                    continue
                if lagged and not self._seen_at_once(self.step + 1):
                    pending = seen
                else:
                    self._step_done(seen)
        if not self.memory.validation_parking:     # saving and validation as before: every part on the device
            self.parking.release()                 # (taking turns: not every weight beside the optimizer's state)
        with file_operation("write the trained model", "--output"):
            files = save_output(self)
        if self.accelerator.is_main_process:
            self.stage.commit()
        if self.validator:
            self._validate(self.validator.end, self.step)
            if cfg.keep_best:
                keep_best(self.output, self.validator.best_weights())
        acc.wait_for_everyone()           # every process returns once the output is complete
        result = TrainResult(self.output, self.step, self.losses, time.time() - started, peak_memory(), files,
                             self.skipped, self.warnings, acc.is_main_process, first_step=first_step)
        for cb in self.callbacks:
            cb.on_train_end(self, result)
        return result

    def _seen_at_once(self, step: int) -> bool:
        cfg = self.config
        return step >= cfg.max_steps or bool(cfg.checkpoint_every and step % cfg.checkpoint_every == 0) \
            or bool(self.validator and step % cfg.validate_every == 0) or self.stop_requested

    def _skipped(self) -> None:
        self.skipped += 1
        self._nonfinite_in_a_row += 1
        if self._nonfinite_in_a_row >= self.config.max_nonfinite_steps:
            raise TrainingStopped(
                f"the loss was not finite {self._nonfinite_in_a_row} steps in a row (step {self.step}); stopped "
                "without saving. Lower --learning-rate, use --mixed-precision bf16/no, or a fp16-safe --vae")

    def _step_done(self, seen: torch.Tensor) -> None:
        """One optimizer step's loss is known: count it (or, not finite, the step was skipped)."""
        cfg, value = self.config, seen.item()
        if not math.isfinite(value):
            return self._skipped()
        self._nonfinite_in_a_row = 0
        lr = self.lr_scheduler.get_last_lr()[0]
        self.lr_scheduler.step()
        self.step += 1
        self.losses.append(value)
        self._bar.advance(1, loss=value, lr=lr)
        info = StepEnd(self.step, cfg.max_steps, value, lr)
        for cb in self.callbacks:
            cb.on_step_end(self, info)
        if self.validator and self.step < cfg.max_steps:
            self._validate(self.validator.after_step, self.step)
        if cfg.checkpoint_every and (self.step % cfg.checkpoint_every == 0 or self.step == cfg.max_steps):
            self.save_checkpoint()      # the last step too: a finished run can be trained on, exactly

    def request_stop(self) -> None:     # a server shutting down: a checkpoint before the next step, then stop
        self.stop_requested = True

    def pause_point(self) -> None:     # between two pieces of work that are not steps: callbacks' on_pause_point
        for cb in self.callbacks:
            cb.on_pause_point(self)

    def _validate(self, when, *args) -> None:
        # validation generates: every part on the device, or the VAE and the rest in turns (preflight)
        with self.parking.kept(self.pipe.vae) if self.memory.validation_parking else self.parking.all_back():
            validation = when(*args)
        if validation is not None:
            for cb in self.callbacks:
                cb.on_validation(self, validation)

    # ----- checkpoints and weights ----------------------------------------------------------------
    def save_checkpoint(self) -> Path | None:
        """Every process calls it; the main process writes (the others get None)."""
        with file_operation("write a checkpoint", "--output"):
            path = ckpt.save_run(self)
        for cb in self.callbacks if path is not None else ():
            cb.on_checkpoint(self, CheckpointSaved(self.step, path))
        return path

    def save_model(self, directory: Path) -> list[Path]:      # the current weights, in the output format
        return save_model(self, directory)

    def assert_finite(self) -> None:     # sharded (FSDP), every process calls it: the check spans every shard
        bad = first_nonfinite(self.trainables, is_sharded(self.accelerator))
        if bad is not None:
            raise TrainingStopped(f"trainable weight {bad} is not finite at step {self.step}; nothing was saved")


def train(config: TrainConfig, callbacks: Sequence[TrainingCallback] = (),
          transforms: Sequence[ExampleTransform] = ()) -> TrainResult:
    """Run DreamBooth with ``config``; the function the CLI, the demo and the server all call. A run
    that fails leaves an output it was to replace as it was (``guard.OutputStage``)."""
    trainer, clock = Trainer(config, callbacks, transforms), PhaseClock()
    with trainer.cleanup:             # the output is the run's (its lock) until it is written or put back
        try:
            with caller_random_state_kept(), deterministic_kernels(config.deterministic), progress.subscribed(clock):
                return clock.stamped(trainer.setup().fit())
        except BaseException as exc:
            if trainer.stage is not None:                 # None: failed before the output was touched
                trainer.stage.abandon(getattr(exc, "checkpoint", None) is not None)   # interrupted, or a peer lost
            raise
