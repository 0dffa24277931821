"""Memory preflight: estimate a training run's peak memory before it spends anything, and refuse a
run that cannot fit with one line naming the cheapest settings that would (``--force`` goes on anyway).

The estimate (:func:`estimate`) is a pure function of the model's sizes (:class:`ModelSizes`, read
from the loaded pipeline by :func:`model_sizes`), the configuration and the device type (on a CPU,
and whether it has AMX):

* weights, each part in the dtype ``Trainer.setup`` keeps it in: trainable weights fp32, a LoRA's
  frozen base UNet and frozen text encoders in the autocast dtype, the VAE fp32 unless fp16-safe.
  On a GPU frozen text encoders wait on the CPU during the steps, so the peak is the larger of the
  steps' and setup's (every part on the device, nothing else yet);
* gradients (fp32; bf16 where the run trains through bf16 copies), and AdamW's two fp32 states per
  trainable weight (8-bit Adam: about 2 bytes);
* activations of the UNet's forward and backward: the bytes each kind of block keeps for the
  backward pass per element of its input (measured with autograd's saved-tensor hooks; the same
  for SD1, SD2 and SDXL layouts) x the elements per latent pixel of this UNet's layout
  (:func:`unet_layout`) x latent pixels x batch (doubled by prior preservation), x a factor for what
  the backward pass itself holds, calibrated against the measured peaks of real runs
  (``benchmarks/preflight_check.py``; ``docs/benchmarks.md``). With gradient checkpointing only each
  block's input is kept, plus one block's activations at a time. Under mixed precision, a full run
  also keeps a low-precision copy of each trainable weight (bf16 copies, or autocast's casts saved
  for the backward pass; with checkpointing those are cast again as each block is recomputed);
* class-image and validation generation (inference with CFG, the VAE decoding at full size; on a CPU
  with AMX in bf16, the channels-last copies of the convolution weights it samples with) and the VAE
  encoding a batch: transients that count when they are larger than what training holds at the time.
  On a GPU where such a phase would not fit with every part on it, the parts take turns
  (``Preflight.class_parking``, ``Preflight.validation_parking``: the text encoders wait in CPU memory
  while the UNet samples, the UNet while they encode and while the VAE decodes);
* sharded (FSDP over N processes, ``shards``): 1/N of the trained weights, their gradients and AdamW's
  state per process, and the whole weights while loading and making class images, before sharding;
* on the CPU, the process itself (Python, torch and the libraries, about half a GiB), because the
  free memory it is compared with is the system's available memory plus what this process holds.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from itertools import combinations

import torch

from .. import progress
from ..devices import available_memory, first_process, training_precision
from ..errors import UserError
from ..models import conv_layout
from . import bf16_copies
from .config import TrainConfig
from .model_sizes import SAVED_BYTES, ModelSizes, model_sizes, unet_layout  # noqa: F401 (re-exported)
from .prior import class_folder, existing_class_images
from .trainables import AUTOCAST, vae_dtype

GiB = 2 ** 30
# What a step holds over what autograd keeps (the gradients of activations, temporaries, the
# allocator's slack), as (factor, constant GiB), by (method, gradient checkpointing): fitted to the
# measured peak RSS of real runs on the CPU (benchmarks/preflight_check.py; docs/benchmarks.md). The
# LoRA factor lies between the mid-size SD1's (2.85 alone, 128-512 px) and full-size SD1.5's at
# 512 px (1.9 alone); the others are the mid-size model's, scaled alike. A full run's gradients
# reuse memory the activations free as the backward pass goes, hence its lower factor.
ACTIVATION_FIT = {("lora", False): (2.3, 0.11), ("full", False): (0.75, 0.34),
                  ("lora", True): (4.0, 0.11), ("full", True): (1.3, 0.34)}
TEXT_SAVED_PER_TOKEN = 17      # elements a CLIP layer keeps per token and hidden unit
TEXT_TOKENS = 77
CPU_RUNTIME = int(0.45 * GiB)  # Python, torch, diffusers, transformers, tokenizers: RSS before any weight
CUDA_RUNTIME = int(0.25 * GiB) # cuBLAS/cuDNN workspaces and the caching allocator's rounding (not calibrated)
# A CUDA step holds less than a CPU one over what autograd keeps (flash attention; the caching
# allocator frees as the backward goes), by gradient checkpointing: fitted to the steps' peak
# max_memory_allocated on an H200 (without: SD1.5 LoRA and full + text encoder at 512 px; with:
# SD1.5 LoRA, SD1.5 full + text encoder with 8-bit Adam, SDXL LoRA and full at 1024 px;
# docs/benchmarks.md). The first fit (0.45 for all) took whole-run peaks that parts moved to the
# GPU in fp32 before their cast had set.
CUDA_ACTIVATION_SHARE = {False: 0.45, True: 0.16}
MIN_RESOLUTION = 256           # lower resolutions are not suggested


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of each part of a run's peak; ``total`` is what the run needs."""
    weights: int
    gradients: int
    optimizer: int
    activations: int
    runtime: int
    device: str
    parked: int = 0         # of the weights, what waits on the CPU during the steps

    @property
    def total(self) -> int:
        """The larger of the steps' peak and setup's, when every part is on the device and nothing else."""
        steps = self.weights - self.parked + self.gradients + self.optimizer + self.activations
        return max(steps, self.weights) + self.runtime

    def describe(self, what: str = "") -> str:
        """``about 5.1 GiB peak (weights 3.4, gradients 0.0, ...)``: what ``what`` names, in GiB."""
        weights = f"weights {gib(self.weights)}" + (f" ({gib(self.parked)} of them on the CPU during the steps)"
                                                     if self.parked else "")
        rest = [("gradients", self.gradients), ("optimizer", self.optimizer), ("activations", self.activations)]
        if self.runtime:
            rest.append(("runtime", self.runtime))
        listed = ", ".join([weights] + [f"{name} {gib(v)}" for name, v in rest])
        return f"about {gib(self.total)} GiB{' ' + what if what else ''} ({listed})"


def gib(n: float) -> str:
    return f"{n / GiB:.1f}" if n >= GiB else f"{n / GiB:.2f}"


# ----- the estimate ---------------------------------------------------------------------------------
def estimate(sizes: ModelSizes, cfg: TrainConfig, device: str = "cpu", making_class_images: bool = True,
             shards: int = 1, processes: int | None = None, class_parking: bool = False,
             validation_parking: bool = False) -> MemoryEstimate:
    """Peak memory of training ``cfg`` (resolution resolved) on a ``device`` of this type ("cpu",
    "cuda", "mps"), class images made first or not (``class_parking``: with the parts taking turns on
    the device; ``validation_parking``: validation images likewise), in one process of ``shards`` that
    split the trained weights, their gradients and AdamW's state (FSDP; 1: each holds all), of
    ``processes`` in all (default: ``shards``; DDP runs several that hold all); see the module's notes."""
    low = 2 if cfg.mixed_precision in ("bf16", "fp16") else 4          # autocast width
    full, lora = cfg.method == "full", cfg.method == "lora"
    shards = shards if full else 1      # FSDP takes full fine-tuning only (guard.NOT_SHARDED)
    train_te = cfg.train_text_encoder
    te_fp32 = train_te or (full and bool(cfg.identifier_lr))
    text_grad = train_te or (full and bool(cfg.identifier_lr))         # the text encoder runs with grad
    te_params = sum(sizes.text_encoders)

    unet_weights, te_weights = sizes.unet * (4 if full else low), te_params * (4 if te_fp32 else low)
    weights = unet_weights + te_weights
    vae_width = vae_dtype(sizes.vae_fp32, AUTOCAST.get(cfg.mixed_precision, torch.float32)).itemsize
    weights += sizes.vae * vae_width
    if full:
        trainable = sizes.unet + (te_params - sizes.text_unread if train_te else 0)
    else:
        trainable = cfg.rank * (sizes.lora_per_rank + (sum(sizes.text_lora_per_rank) if train_te else 0))
    if lora:
        weights += trainable * 4        # the adapters, fp32 whatever the base is in
    # FSDP: each process keeps its share of the trained fp32 weights, once they are sharded; until
    # then (loading, class images) it holds them whole, with no gradients or AdamW state yet.
    others = sizes.unet * 4 * (shards - 1) // shards
    weights -= others
    # --fused-backward-pass: one weight's gradient at a time (the largest, at worst)
    # bf16 copies (bf16_copies): the gradients are the copies' (the estimate assumes inductor compiles)
    copies = bf16_copies.applies(cfg, device, processes or shards)
    grad_width = 2 if copies else 4
    gradients = (min(trainable, sizes.largest_weight) if cfg.fused_backward_pass else trainable) * grad_width // shards
    optimizer = trainable * (2 if cfg.use_8bit_adam else 8) // shards

    batch = cfg.batch_size * (2 if cfg.use_prior else 1)
    side = cfg.resolution // sizes.vae_scale
    latent_px = side * side
    saved = SAVED_BYTES[(cfg.method, low)]
    res, tr, models = sizes.unet_layout
    if cfg.gradient_checkpointing:      # each block's input, the transformer models' own, one block's recompute
        kept = low * (res + tr) + saved[2] * models + sizes.unet_largest_block * low / 4
    else:
        kept = saved[0] * res + saved[1] * tr + saved[2] * models
    kept *= latent_px * batch
    if text_grad:
        text = sum(layers * hidden for layers, hidden in sizes.text_layers) * TEXT_TOKENS * TEXT_SAVED_PER_TOKEN * low
        kept += text * batch * (0.25 if cfg.gradient_checkpointing else 1.0)
    # a low-precision copy of each trained weight: bf16 copies keep theirs; autocast's (its cache off:
    # trainer) are kept by the backward pass, unless checkpointing drops them and casts again
    if full and low == 2 and (copies or not cfg.gradient_checkpointing):
        kept += 2 * trainable // shards
    factor, constant = ACTIVATION_FIT[(cfg.method, cfg.gradient_checkpointing)]
    act = factor * kept * (CUDA_ACTIVATION_SHARE[cfg.gradient_checkpointing] if device == "cuda" else 1.0) + constant * GiB
    # On a GPU frozen text encoders wait on the CPU once every prompt is encoded (trainer's Parking);
    # sharded, the whole weights' transient below holds them anyway
    parked = te_params * low if device == "cuda" and not text_grad and shards == 1 else 0
    # Transients of other phases, over the steps' weights, when larger than what training holds then:
    # class images (every part on the device; CFG doubles the UNet's batch; the VAE decodes one image
    # at a time at full size) and the VAE encoding a batch at the start of a step (no gradients then).
    pixels = cfg.resolution * cfg.resolution

    def making_images(batch: int, turns: bool) -> int:
        """What sampling ``batch`` images at a time (CFG doubles the UNet's) and decoding each at full
        size hold over the steps' weights: the frozen encoders are back on the device, unless the parts
        take turns (they wait while the UNet samples, and the UNet while the VAE decodes)."""
        decoding = 8 * sizes.vae_channels * pixels * vae_width
        sampling = 16 * sizes.unet_base_channels * latent_px * 2 * low * batch
        present = parked
        if turns:
            present -= te_weights
            decoding -= unet_weights
        made = max(decoding, sampling) + present
        if conv_layout.applies(device, AUTOCAST.get(cfg.mixed_precision)):     # sampling on channels-last copies,
            made += sizes.conv_weights[0] * (4 if full else low) + sizes.conv_weights[1] * vae_width
            made += 0 if full else sizes.conv_weights[0] * low                  # and a frozen UNet's prepacked
        return made
    # class images come before the optimizer and its state; validation after, while no gradient is held
    generation = making_images(cfg.class_batch_size, class_parking) if cfg.use_prior and making_class_images else 0
    validation = making_images(1, validation_parking) if cfg.validate_every else 0
    encoding = 3 * sizes.vae_channels * pixels * vae_width * batch
    activations = int(max(act, generation + others - gradients - optimizer, validation - gradients, encoding - gradients))
    runtime = CPU_RUNTIME if device == "cpu" else CUDA_RUNTIME if device == "cuda" else 0
    return MemoryEstimate(int(weights), int(gradients), int(optimizer), activations, runtime, device, int(parked))


# ----- the check against the device's free memory (devices.available_memory) ---------------------------
def _lower_resolutions(cfg: TrainConfig, step: int) -> list[int]:
    return [r for r in range(cfg.resolution - step, MIN_RESOLUTION - 1, -step)]


def fixes(sizes: ModelSizes, cfg: TrainConfig, device: str, available: int, limit: int = 3,
          making_class_images: bool = True, shards: int = 1, processes: int | None = None,
          class_parking: bool = False, validation_parking: bool = False) -> list[tuple[str, MemoryEstimate]]:
    """The cheapest settings that fit in ``available`` bytes, each with its estimate: single changes
    in order of what they cost (speed first, then fidelity), else the cheapest of them that fit together,
    at the highest resolution any combination reaches.
    Sharded (FSDP, ``shards`` > 1), only those FSDP takes (``guard.NOT_SHARDED``); with several
    ``processes`` (default: ``shards``), none that needs one process."""
    processes = processes or shards

    def fits(c: TrainConfig) -> MemoryEstimate:
        return estimate(sizes, c, device, making_class_images, shards, processes, class_parking, validation_parking)
    changes: list[tuple[str, dict]] = []
    if not cfg.gradient_checkpointing:         # graphs record checkpointing only without dropout (config)
        graphs_off = cfg.cuda_graphs and cfg.adapters_draw_random_numbers
        changes.append(("--gradient-checkpointing --no-cuda-graphs", {"gradient_checkpointing": True, "cuda_graphs": False})
                       if graphs_off else ("--gradient-checkpointing", {"gradient_checkpointing": True}))
    if device == "cuda" and not cfg.use_8bit_adam and shards == 1:
        changes.append(("--use-8bit-adam", {"use_8bit_adam": True}))
    if cfg.method == "full" and not cfg.fused_backward_pass and cfg.gradient_accumulation == 1 \
            and cfg.mixed_precision != "fp16" and processes == 1:
        changes.append(("--fused-backward-pass", {"fused_backward_pass": True}))
    if cfg.mixed_precision == "no":      # fp16 on a GPU without bf16 in hardware (emulated bf16 is slow)
        low = "fp16" if training_precision(torch.device(device)) == "fp16" else "bf16"
        changes.append((f"--mixed-precision {low}", {"mixed_precision": low}))
    if cfg.validate_every and not cfg.keep_best:      # where validation images set the peak
        changes.append(("--validate-every 0", {"validate_every": 0}))
    if cfg.method == "full" and shards == 1:
        changes.append(("--method lora", {"method": "lora"}))
    found = []
    for flags, change in changes:
        est = fits(cfg.replace(**change))
        if est.total <= available:
            found.append((flags, est))
    # the largest batch, then the largest resolution, that fits
    for size in range(cfg.batch_size - 1, 0, -1):
        est = fits(cfg.replace(batch_size=size))
        if est.total <= available:
            found.append((f"--batch-size {size}", est))
            break
    step = sizes.vae_scale * 8
    for res in _lower_resolutions(cfg, step):
        est = fits(cfg.replace(resolution=res))
        if est.total <= available:
            found.append((f"--resolution {res}", est))
            break
    if found:
        return found[:limit]
    if cfg.batch_size > 1:
        changes.append(("--batch-size 1", {"batch_size": 1}))

    def merged(chosen) -> dict:
        return {k: v for _, change in chosen for k, v in change.items()}

    def best(chosen) -> int | None:
        """The highest resolution (the run's, else lower) at which ``chosen`` changes together fit."""
        c = cfg.replace(**merged(chosen))
        return next((r for r in [c.resolution, *_lower_resolutions(c, step)]
                     if fits(c.replace(resolution=r)).total <= available), None)
    # Every combination (at most 2^6, microseconds each): the highest resolution, reached with the
    # cheapest changes (the costliest one used as early in ``changes`` as can be), then the fewest.
    options = []
    for n in range(1, len(changes) + 1):
        for picked in combinations(range(len(changes)), n):
            chosen = [changes[i] for i in picked]
            if (m := merged(chosen)).get("mixed_precision") == "fp16" and m.get("fused_backward_pass"):
                continue                 # a fused backward pass cannot scale an fp16 loss
            if (res := best(chosen)) is not None:
                options.append((-res, sorted(picked, reverse=True), n, chosen, res))
    if not options:
        return []
    *_, chosen, res = min(options, key=lambda o: o[:3])
    flags = [flag for flag, _ in chosen] + ([f"--resolution {res}"] if res != cfg.resolution else [])
    final = cfg.replace(**merged(chosen), resolution=res)
    return [(" ".join(flags), fits(final))]


@dataclass(frozen=True)
class Preflight:
    """A run's estimate against the device's free memory (None: unknown)."""
    estimate: MemoryEstimate
    available: int | None
    class_parking: bool = False         # class images made with the parts taking turns on the GPU
    validation_parking: bool = False    # validation images likewise

    def report(self) -> None:
        """The estimate as one progress message (a warning when it does not fit: ``--force``); said by
        the first of several processes (``accelerate launch``) only."""
        if not first_process():
            return
        est, available = self.estimate, self.available
        made = " and ".join(what for what, turns in (("class images", self.class_parking),
                                                     ("validation images", self.validation_parking)) if turns)
        if made:
            progress.message(f"memory preflight: {made} are made with the parts taking turns on the GPU (the text "
                             "encoders wait in CPU memory while the UNet samples, the UNet while they encode and "
                             "while the VAE runs)")
        if available is None:
            progress.message(f"memory preflight: {est.describe('peak')}")
        elif est.total <= available:
            progress.message(f"memory preflight: {est.describe('peak')}; {gib(available)} GiB free on {est.device}")
        else:
            progress.warn(f"memory preflight: {est.describe('peak')}, more than the {gib(available)} GiB free on "
                          f"{est.device}; going on (--force)")


def _held_by(pipe, kind: str) -> int | None:
    """Bytes of the run's own model already on a device of this type (None: unknown)."""
    if pipe is None:
        return None
    modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    return sum(t.numel() * t.element_size() for m in modules for t in (*m.parameters(), *m.buffers()) if t.device.type == kind)


def preflight(pipe, family, cfg: TrainConfig, device, shards: int = 1, processes: int | None = None) -> Preflight:
    """Estimate this run's peak memory (in each of ``shards`` FSDP processes, of ``processes``); raise a one-line
    UserError when it exceeds the device's free memory, naming the cheapest settings that would fit,
    unless ``cfg.force``. Prints nothing: ``report()`` does, once the run is past the checks that need no memory."""
    kind = torch.device(device).type
    sizes = model_sizes(pipe, family, cfg.clip_skip)
    making = cfg.use_prior and len(existing_class_images(class_folder(cfg))) < cfg.num_class_images
    options = [(estimate(sizes, cfg, kind, making, shards, processes), (False, False))]
    local = int(os.environ.get("LOCAL_WORLD_SIZE") or processes or shards)     # processes on this machine
    available = available_memory(device, _held_by(pipe, kind), sharers=local if kind == "cpu" else 1)
    # Images that would not fit with every part on the GPU are made with the parts taking turns (moves
    # each batch, hence only where needed): class images, and validation where nothing pins the
    # weights' addresses (--cuda-graphs replays them) or shares the UNet with other processes.
    if kind == "cuda" and available is not None and options[0][0].total > available:
        validating = bool(cfg.validate_every) and not cfg.cuda_graphs and (processes or shards) == 1
        options += [(estimate(sizes, cfg, kind, making, shards, processes, *t), t)
                    for t in ((True, False), (False, True), (True, True)) if (making or not t[0]) and (validating or not t[1])]
    fitting = [o for o in options if available is not None and o[0].total <= available]
    est, (class_turns, validation_turns) = fitting[0] if fitting else min(options, key=lambda o: (o[0].total, sum(o[1])))
    if available is None or est.total <= available or cfg.force:
        return Preflight(est, available, class_turns, validation_turns)
    found = fixes(sizes, cfg, kind, available, making_class_images=making, shards=shards, processes=processes,
                  class_parking=class_turns, validation_parking=validation_turns)
    if found:
        advice = "settings that fit: " + ", ".join(f"{flags} (about {gib(e.total)} GiB)" for flags, e in found)
    else:
        advice = "no setting here fits; free memory or use a smaller model"
    raise UserError(f"memory preflight: this run needs {est.describe()} but {gib(available)} GiB is free on "
                    f"{kind}; {advice}; or --force to start anyway")
