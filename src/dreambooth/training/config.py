"""Typed training configuration: literature defaults, YAML presets, CLI overrides.

One dataclass is the single source of truth: the CLI's flags are generated from its fields (name,
type, help, choices), a preset is a YAML mapping of the same names, and the precedence is
defaults < preset (``--config``) < flags. Values left at ``None`` are resolved once the base model is
loaded (``resolve_defaults``), because the right resolution or learning rate depends on the family
and method.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from ..checks import MAX_SEED, check_seed, check_value
from ..errors import UserError
from ..outputs import TRAINING_ARGS_FILE
from ..generation.params import RANGES, GenerationParams
from .config_files import did_you_mean, read_settings, without_removed
from .peer_names import setting_hint

PRESET_DIR = Path(__file__).resolve().parent / "presets"
METHODS = ("full", "lora")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
PRECISIONS = ("no", "fp16", "bf16", "auto")
SAVE_PRECISIONS = ("fp32", "fp16", "bf16")
MAX_RESOLUTION = 4096        # any family; each family's own limit is lower (models.families)


def _opt(default, help: str, choices: tuple[str, ...] | None = None, group: str = "training", **extra):
    """A field with its help, group, choices and, for numbers, its range (``low``, ``high``: inclusive;
    ``above``: exclusive), which ``--help`` shows and ``validate`` enforces."""
    meta = {"help": help, "group": group, **extra}
    if choices:
        meta["choices"] = choices
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    # --- model ---------------------------------------------------------------------------
    model: str | None = _opt(None, "Base model: a diffusers folder, a hub id (local cache), a .safetensors/.ckpt file, or 'toy' (the built-in toy model).", group="model")
    vae: str | None = _opt(None, "Replace the VAE: a diffusers folder, hub id or single file (e.g. an fp16-fix VAE); '' keeps the model's own (over a preset's).", group="model")
    model_config: str | None = _opt(None, "For a single-file --model: the diffusers folder or cached hub id holding its configs.", group="model")
    # --- data ----------------------------------------------------------------------------
    instance_dir: str | None = _opt(None, "Folder of 3-20 photos of the subject (jpg, jpeg, png, webp, bmp, tif, tiff; avif where Pillow reads it).", group="data")
    instance_prompt: str | None = _opt(None, "Prompt naming the subject with a rare identifier, e.g. 'a photo of sks dog'.", group="data")
    captions: bool = _opt(False, "Use name.txt (or kohya's name.caption) beside name.jpg as that image's prompt.", group="data")
    resolution: int | None = _opt(None, "Training size in pixels, a multiple of 8 (default: the model's own sample size, e.g. 512 SD1.5, 768 SD2.1, 1024 SDXL; at most 1024 for SD1 and SD2, 2048 for SDXL).", group="data", low=8, high=MAX_RESOLUTION)
    center_crop: bool = _opt(False, "Centre-crop instead of a random crop.", group="data")
    random_flip: bool = _opt(False, "Flip images horizontally at random.", group="data")
    masked_loss: bool = _opt(False, "Weigh each instance pixel's loss by a mask: the photo's alpha channel, or NAME.mask.png (the suffix in any case) beside NAME.jpg (white 1, black 0, transparent 0); photos without one count fully (kohya's --masked_loss).", group="data")
    caption_dropout: float = _opt(0.0, "Share of training pictures (instance and class) shown with an empty prompt, so the unconditional prediction that CFG steers from is trained too (0 off).", group="data", low=0, high=1)
    # --- prior preservation ----------------------------------------------------------------
    class_prompt: str | None = _opt(None, "Prompt for the subject's class, e.g. 'a photo of dog'; turns on prior preservation.", group="prior")
    prior_preservation: bool | None = _opt(None, "Class-specific prior-preservation loss (default: on when --class-prompt is given).", group="prior")
    class_dir: str | None = _opt(None, "Folder of class images (default: OUTPUT/class_images); missing ones are generated.", group="prior")
    num_class_images: int = _opt(100, "How many class images to use (generated with the frozen model if fewer exist).", group="prior", low=1, high=100_000)
    class_steps: int = _opt(30, "Sampling steps for class images.", group="prior", low=1, high=1000)
    class_cfg: float = _opt(7.5, "CFG scale for class images.", group="prior", low=0, high=100)
    class_negative_prompt: str = _opt("", "Negative prompt for class images.", group="prior")
    class_sampler: str = _opt("DPM++ 2M", "WebUI sampler for class images (see dreambooth generate --list-samplers).", group="prior")
    class_batch_size: int = _opt(4, "Class images made in one batch (a GPU makes a batch of 4 in about the time of one).", group="prior", low=1, high=64)
    prior_loss_weight: float = _opt(1.0, "Weight of the prior-preservation loss.", group="prior", low=0, high=100)
    # --- method ----------------------------------------------------------------------------
    method: str = _opt("lora", "full: fine-tune the UNet (and text encoder); lora: train peft LoRA adapters.", METHODS, group="method")
    train_text_encoder: bool = _opt(False, "Also train the text encoder(s).", group="method")
    rank: int = _opt(4, "LoRA rank.", group="method", low=1, high=1024)
    alpha: float | None = _opt(None, "LoRA alpha (default: the rank, i.e. scale 1).", group="method", above=0, high=100_000)
    lora_dropout: float = _opt(0.0, "LoRA dropout.", group="method", low=0, high=0.99)
    clip_skip: int = _opt(1, "SD1: condition on the text encoder's N-th layer from the end (kohya's --clip_skip; 2 for anime bases); dreambooth generate and the web UI then sample the output at it. SD2 and SDXL: no effect, as in the WebUI.", group="method", low=RANGES["clip_skip"][0], high=RANGES["clip_skip"][1])
    # --- optimisation -----------------------------------------------------------------------
    max_steps: int = _opt(400, "Optimizer steps.", low=1, high=10_000_000)
    batch_size: int = _opt(1, "Instance images per step (class images add as many).", low=1, high=1024)
    gradient_accumulation: int = _opt(1, "Micro-batches per optimizer step.", low=1, high=1024)
    learning_rate: float | None = _opt(None, "Learning rate (default: 5e-6 full, 1e-4 LoRA).", above=0, high=1)
    text_encoder_lr: float | None = _opt(None, "Text-encoder learning rate (default: --learning-rate).", above=0, high=1)
    identifier_lr: float = _opt(0.0, "Full method: learning rate of the identifier's own token embedding (pivotal tuning), with or without --train-text-encoder (0: off).", low=0, high=10)
    lr_scheduler: str = _opt("constant", "Learning-rate schedule (after warm-up).", LR_SCHEDULERS)
    lr_warmup_steps: int = _opt(0, "Linear warm-up steps.", low=0, high=10_000_000)
    max_grad_norm: float = _opt(1.0, "Gradient clipping norm (0 disables).", low=0, high=1e6)
    adam_beta1: float = _opt(0.9, "Adam beta1.", low=0, high=0.9999)
    adam_beta2: float = _opt(0.999, "Adam beta2.", low=0, high=0.99999)
    weight_decay: float = _opt(1e-2, "AdamW weight decay.", low=0, high=10)
    adam_epsilon: float = _opt(1e-8, "Adam epsilon.", above=0, high=1)
    use_8bit_adam: bool = _opt(False, "bitsandbytes 8-bit AdamW (CUDA only).")
    offset_noise: float = _opt(0.0, "Offset noise strength (0.1 helps very dark/bright images).", low=0, high=10)
    snr_gamma: float | None = _opt(None, "Min-SNR loss weighting gamma (5 is the paper's value); off by default.", above=0, high=1000)
    seed: int = _opt(0, "Random seed for noise, timesteps, crops and class images (-1: a random one, recorded in training_args.json).", seed=True)
    max_nonfinite_steps: int = _opt(5, "Stop after this many non-finite losses in a row (each is skipped).", low=1, high=1_000_000)
    # --- memory and speed -------------------------------------------------------------------
    mixed_precision: str = _opt("no", "Autocast precision; trainable weights stay fp32. auto: bf16 where the device has it in hardware (a GPU from Ampere on, a CPU with AMX or AVX512-BF16), fp16 on older GPUs, else no.", PRECISIONS, group="memory")
    gradient_checkpointing: bool = _opt(False, "Recompute activations in the backward pass to save memory.", group="memory")
    fused_backward_pass: bool = _opt(False, "Step each weight as soon as its gradient is complete and free the gradient: a full run holds no whole set of gradients (SDXL full: 10 GB less). One process; no --max-grad-norm clipping, no --gradient-accumulation.", group="memory")
    cache_latents: bool | None = _opt(None, "Encode each distinct training picture (image, crop, flip) once and keep its latents (default: on).", group="memory")
    compile: bool = _opt(False, "torch.compile the blocks the trained models repeat (the UNet's transformer blocks, the text encoders' layers): a minute or two of compiling before the first step; see docs/benchmarks.md.", group="memory")
    cuda_graphs: bool = _opt(False, "Replay the UNet's forward and backward passes as CUDA graphs, captured at the first step: a GPU step launches hundreds of small kernels from Python, a graph launches them at once. One process; not with --compile or --gradient-accumulation; see docs/benchmarks.md.", group="memory")
    deterministic: bool = _opt(False, "Deterministic GPU kernels (cuDNN, cuBLAS, attention), so that a resumed run, or the same run again, ends with the same weights bit for bit on a GPU too (always so on the CPU); slower.", group="memory")
    force: bool = _opt(False, "Start even when the memory preflight estimates the run will not fit in the device's free memory.", group="memory")
    # --- outputs ----------------------------------------------------------------------------
    output: str | None = _opt(None, "Output folder.", group="output")
    overwrite: bool = _opt(False, "Replace an existing non-empty output (class images are kept).", group="output")
    save_precision: str = _opt("fp32", "Precision of saved weights (full model, kohya LoRA file).", SAVE_PRECISIONS, group="output")
    export_kohya: bool = _opt(True, "LoRA: also write a kohya/A1111 .safetensors next to the diffusers file (on unless --no-export-kohya).", group="output")
    export_single_file: bool = _opt(False, "Full: also write one A1111/ComfyUI .safetensors checkpoint.", group="output")
    checkpoint_every: int = _opt(0, "Save a resumable checkpoint every N steps and at the last (0: never).", group="output", low=0, high=10_000_000)
    keep_checkpoints: int = _opt(2, "How many checkpoints to keep (0: all).", group="output", low=0, high=1_000_000)
    resume: str | None = _opt(None, "Resume from a checkpoint folder, 'latest' in OUTPUT/checkpoints, or a checkpoint's name there (checkpoint-80).", group="output")
    # --- validation ---------------------------------------------------------------------------
    validate_every: int = _opt(0, "Generate validation images every N steps (0: never).", group="validation", low=0, high=10_000_000)
    validation_prompts: list[str] | None = _opt(None, "Validation prompts (default: the subject in a few contexts + the class).", group="validation", multiple=True)
    validation_seeds: list[int] = _opt([0, 1, 2, 3], "Seeds for validation images.", group="validation", multiple=True, low=0, high=MAX_SEED)
    validation_steps: int = _opt(25, "Sampling steps for validation images.", group="validation", low=1, high=1000)
    validation_cfg: float = _opt(7.5, "CFG scale for validation images.", group="validation", low=0, high=100)
    validation_sampler: str = _opt("DPM++ 2M", "WebUI sampler for validation images.", group="validation")
    validation_negative_prompt: str = _opt("", "Negative prompt for validation images.", group="validation")
    keep_best: bool = _opt(False, "Keep the validation step with the best fidelity balance as the output.", group="validation")
    dino_model: str | None = _opt(None, "DINO model for validation metrics (folder or cached hub id).", group="validation")
    clip_model: str | None = _opt(None, "CLIP model for validation metrics (folder or cached hub id).", group="validation")

    def __post_init__(self):
        for f in dataclasses.fields(self):        # a pathlib.Path where a path goes is the path's text
            if isinstance(getattr(self, f.name), os.PathLike):
                setattr(self, f.name, os.fspath(getattr(self, f.name)))
        if self.vae == "":            # --vae '': the model's own VAE, over a preset's (sdxl-lora's fp16-fix)
            self.vae = None

    # ------------------------------------------------------------------------------------------
    @classmethod
    def fields(cls) -> list[dataclasses.Field]:
        return list(dataclasses.fields(cls))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    @staticmethod
    def checked(config) -> "TrainConfig":
        """``config`` validated, or a TypeError naming what it is (a dict: ``build_config`` makes one)."""
        if not isinstance(config, TrainConfig):
            raise TypeError(f"train: config must be a TrainConfig (build_config(...)), not {type(config).__name__}")
        return config.validate()

    def validate(self) -> "TrainConfig":
        """Check values that need no model: each field's type, choices and range (NaN and infinity
        are never numbers here), then what must be given. Each failure is one line naming the flag."""
        hints = get_type_hints(TrainConfig)
        for f in self.fields():
            value, name, meta = getattr(self, f.name), self.named(f.name), f.metadata
            if value is None:
                if type(None) not in get_args(hints[f.name]):
                    raise UserError(f"{name}: required")
                continue
            typ, is_list = field_type(f)
            if is_list and not isinstance(value, list):
                raise UserError(f"{name} {value!r}: must be a list")
            for item in (value if is_list else [value]):
                if meta.get("seed"):
                    check_seed(name, item)
                else:
                    check_value(name, item, typ, meta.get("low"), meta.get("high"), meta.get("above"))
                if "choices" in meta and item not in meta["choices"]:
                    raise UserError(f"{name} {item}: unknown value; choose one of {', '.join(meta['choices'])}")
        if self.resolution is not None and self.resolution % 8:
            raise UserError(f"{self.named('resolution')} {self.resolution}: must be a multiple of 8")
        if not self.model:
            raise UserError("--model is required: a diffusers folder, a .safetensors file or a hub id "
                            "(--model toy trains the built-in toy model)")
        for prefix, sampler, steps, cfg in (("class", self.class_sampler, self.class_steps, self.class_cfg),
                                            ("validation", self.validation_sampler, self.validation_steps,
                                             self.validation_cfg)):
            try:
                GenerationParams("", sampler=sampler, steps=steps, cfg_scale=cfg).check()
            except UserError as exc:     # name the training flag, not generate's
                raise UserError(f"--{prefix}-{str(exc).lstrip('-')}") from None
        for name in ("instance_dir", "instance_prompt", "output"):
            if not getattr(self, name) or not str(getattr(self, name)).strip():
                raise UserError({"instance_dir": "--instance-dir is required: a folder of photos of the subject",
                                 "instance_prompt": "--instance-prompt is required, e.g. --instance-prompt 'a photo of sks dog'",
                                 "output": "--output is required: the folder to write the trained model to"}[name])
        if self.fused_backward_pass and self.gradient_accumulation > 1:
            raise UserError("--fused-backward-pass steps each weight during the backward pass, so it cannot "
                            "accumulate gradients: drop --gradient-accumulation or --fused-backward-pass")
        if self.fused_backward_pass and self.mixed_precision == "fp16":
            raise UserError("--fused-backward-pass cannot scale an fp16 loss: use --mixed-precision bf16 (or no)")
        if self.cuda_graphs and self.gradient_checkpointing and self.adapters_draw_random_numbers:
            raise UserError("--cuda-graphs with --gradient-checkpointing needs --lora-dropout 0 (a graph cannot record "
                            "the recomputed dropout drawing the same numbers again); drop one of them")
        if self.cuda_graphs and self.compile:
            raise UserError("--cuda-graphs: not with --compile (the graphs replay the eager kernels); choose one")
        if self.cuda_graphs and self.gradient_accumulation > 1:
            raise UserError("--cuda-graphs: not with --gradient-accumulation (a replay's gradients are the graph's own "
                            "buffers, which the next replay overwrites); use a larger --batch-size instead")
        if self.resume is not None and not str(self.resume).strip():
            raise UserError("--resume: empty; give 'latest' or a checkpoint folder")
        if self.class_prompt is not None and not str(self.class_prompt).strip():
            raise UserError("--class-prompt: empty; give the class, e.g. --class-prompt 'a photo of dog', or leave it "
                            "out (no prior preservation)")
        if self.validation_prompts and not all(str(p).strip() for p in self.validation_prompts):
            raise UserError("--validation-prompts: an empty prompt; give each one text, or leave the flag out for the "
                            "default prompts")
        twice = [s for i, s in enumerate(self.validation_seeds) if s in self.validation_seeds[:i]]
        if twice:            # the same seed would only make the same images again
            raise UserError(f"--validation-seeds {twice[0]}: given twice; give each seed once")
        if self.prior_preservation and not self.class_prompt:
            raise UserError("--prior-preservation needs --class-prompt, e.g. --class-prompt 'a photo of dog'")
        return self

    def named(self, name: str) -> str:
        """How an error names a setting: ``--config FILE: rank`` where the value came from a settings
        file (``build_config`` records which did), else the flag ``--rank``."""
        source = getattr(self, "_from_file", {}).get(name)
        return f"--config {source}: {name}" if source else flag(name)

    @property
    def adapters_draw_random_numbers(self) -> bool:
        """LoRA dropout: every pass draws new random numbers (a recorded recomputation cannot)."""
        return self.method == "lora" and self.lora_dropout > 0

    @property
    def use_prior(self) -> bool:
        return bool(self.class_prompt) if self.prior_preservation is None else self.prior_preservation

    def resolve_defaults(self, family_resolution: int, max_resolution: int = MAX_RESOLUTION) -> "TrainConfig":
        """Fill the defaults that depend on the model family and the method, and a random seed for -1."""
        if self.resolution is not None and self.resolution > max_resolution:
            raise UserError(f"--resolution {self.resolution}: this model's family trains at most {max_resolution} px")
        return self.replace(
            resolution=self.resolution or family_resolution,
            seed=self.seed if self.seed != -1 else random.randrange(MAX_SEED),
            learning_rate=self.learning_rate or (5e-6 if self.method == "full" else 1e-4),
            alpha=self.alpha if self.alpha is not None else float(self.rank),
            cache_latents=True if self.cache_latents is None else self.cache_latents,
            prior_preservation=self.use_prior,
        )


# help(TrainConfig) lists each setting with what --help says of it (the dataclass alone shows none)
TrainConfig.__doc__ = "One training run's settings (``build_config`` makes one from a preset and overrides):\n\n" + \
    "\n".join(f"{f.name} = {f.default if f.default is not dataclasses.MISSING else f.default_factory()!r}: "
              f"{f.metadata['help']}" for f in dataclasses.fields(TrainConfig))


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def field_type(f: dataclasses.Field) -> tuple[type, bool]:
    """(scalar type, is_list) of a config field, with Optional stripped."""
    hint = get_type_hints(TrainConfig)[f.name]
    args = [a for a in get_args(hint) if a is not type(None)]
    if get_origin(hint) is list:
        return get_args(hint)[0], True
    if args and get_origin(args[0]) is list:
        return get_args(args[0])[0], True
    return (args[0] if args else hint), False


def _coerce(f: dataclasses.Field, value: Any, source: str) -> Any:
    """A preset's value as the field's type, strictly: no list where one value is expected, no float
    or bool where a whole number is, no number where text is. A number written as text ("1e-4",
    which YAML reads as a string) is read as that number."""
    if value is None:
        return None
    typ, is_list = field_type(f)
    if isinstance(value, (list, tuple)) and not is_list:
        raise UserError(f"{source}: {f.name} = {value!r} is a list; give one {typ.__name__}")
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    out = []
    for item in items:
        converted = _one(item, typ)
        if converted is _INVALID:
            hint = f"; write a list, e.g. [{', '.join(str(value).split())}]" if is_list and isinstance(value, str) \
                and len(str(value).split()) > 1 else ""
            raise UserError(f"{source}: {f.name} = {value!r} is not a valid {typ.__name__}{hint}")
        out.append(converted)
    return out if is_list else out[0]


_INVALID = object()
_BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def _one(item: Any, typ: type) -> Any:
    if isinstance(item, (list, tuple, dict)):
        return _INVALID
    if typ is bool:
        return item if isinstance(item, bool) else _BOOL_WORDS.get(str(item).lower(), _INVALID) \
            if isinstance(item, str) else _INVALID
    if isinstance(item, bool):
        return _INVALID                        # True is not 1 here
    if typ is int:
        if isinstance(item, int):
            return item
        if isinstance(item, str) and item.strip().lstrip("+-").isdigit():
            return int(item)
        return _INVALID                        # 2.7 is not a step count
    if typ is float:
        if isinstance(item, (int, float)):
            return float(item)
        try:
            return float(item) if isinstance(item, str) else _INVALID
        except ValueError:
            return _INVALID
    return item if isinstance(item, str) else _INVALID


def preset_file(path_or_name: str) -> Path:
    """The YAML file of a preset: a file path, else the shipped preset of that name (``sd15-lora``)."""
    path = Path(path_or_name).expanduser()
    if path.is_file():
        return path
    shipped = PRESET_DIR / f"{path_or_name.removesuffix('.yaml')}.yaml"
    if not shipped.is_file():
        names = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
        near = did_you_mean(path_or_name.removesuffix(".yaml"), names).strip(" ()")      # 'did you mean x?'
        raise UserError(f"--config {path_or_name}: no such file or shipped preset{f'; {near}' if near else ''} "
                        f"(shipped: {', '.join(names)})")
    return shipped


def is_toy_preset(preset: str) -> bool:
    """``preset`` is the shipped toy preset (by name, or a copy of its file, as the repository's
    configs/toy.yaml); a file of the user's own that happens to be called toy.yaml is not it."""
    return preset_file(preset).read_bytes() == (PRESET_DIR / "toy.yaml").read_bytes()


def load_preset(path_or_name: str) -> dict[str, Any]:
    """Read a YAML preset: a file path, or the name of a shipped preset (``sd15-lora``)."""
    path = preset_file(path_or_name)
    data = read_settings(path)
    known = {f.name: f for f in TrainConfig.fields()}
    out, seen = {}, set()
    record = path.name == TRAINING_ARGS_FILE or {"steps_done", "versions"} <= set(data)     # (renamed too)
    for key, value in without_removed(path, data, record).items():
        name = str(key).replace("-", "_")
        if record and name in RUN_RECORD:
            continue        # a finished run's record as a preset: its settings, not what it did or was asked once
        if name not in known:
            raise UserError(f"--config {path}: unknown setting '{key}'{setting_hint(name) or did_you_mean(name, known)}")
        if name in seen:
            raise UserError(f"--config {path}: '{name}' is given twice (as '{key}' too); keep one")
        seen.add(name)
        if value is not None:       # null ('seed: null'): not given, the default (as the A1111 server reads null)
            out[name] = _coerce(known[name], value, f"--config {path}")
    return out


def build_config(preset: str | None = None, overrides: dict[str, Any] | None = None, **kwargs) -> TrainConfig:
    """defaults < preset < overrides (``None`` values in overrides mean 'not given')."""
    if preset is not None and not isinstance(preset, (str, os.PathLike)):
        raise TypeError("build_config: preset is a shipped preset's name or a YAML file's path; give settings as "
                        "build_config(preset, {...}) or as keywords")
    given = {k: v for k, v in {**(overrides or {}), **kwargs}.items() if v is not None}
    toy = preset is not None and is_toy_preset(preset)
    own = load_preset(preset) if preset else {}
    values: dict[str, Any] = {}
    if given.get("model", own.get("model")) == "toy" and not toy and (PRESET_DIR / "toy.yaml").is_file():
        values.update(load_preset("toy"))   # the toy model's own defaults (32 px, its learning rates), below all else
    values.update(own)
    for source in (overrides or {}, kwargs):
        values.update({k: v for k, v in source.items() if v is not None})
    if values.get("method") == "lora" and "identifier_lr" not in {**({} if toy else own), **given}:
        values.pop("identifier_lr", None)   # the toy's, for its full fine-tuning: no warning about a setting not given
    known = {f.name for f in TrainConfig.fields()}
    unknown = set(values) - known
    if unknown:
        raise UserError("unknown setting(s): " + ", ".join(u + did_you_mean(u, known) for u in sorted(unknown)))
    config = TrainConfig(**values)
    # the values the file gave (no flag over them): validate names their key and the file, not a flag never typed
    config._from_file = {k: preset_file(preset) for k in own if k not in given} if preset else {}
    return config


# What a run's training_args.json holds besides its settings (saving.save_output), and the settings
# asked of one command only (continue, replace): left out where the record is read back as --config.
RUN_RECORD = ("family", "prediction_type", "steps_done", "instance_images", "class_images", "num_processes",
              "global_batch_size", "losses", "versions", "resume", "overwrite")


def save_config(config: TrainConfig, path: Path, extra: dict[str, Any] | None = None) -> None:
    assert not extra or set(extra) <= set(RUN_RECORD), set(extra) - set(RUN_RECORD)
    data = config.to_dict()
    if extra:
        data.update(extra)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
