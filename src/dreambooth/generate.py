"""Generation the way the AUTOMATIC1111 WebUI does it, on diffusers pipelines.

``load_generation_pipeline`` loads any model ``dreambooth.models`` can load, a training output
(full pipeline folder, or a LoRA folder whose ``training_args.json`` names its base model) and any
number of LoRAs with weights. ``generate_images`` runs txt2img, img2img (``init_image``) or
inpainting (``init_image`` + ``mask``) for ``batch_count`` batches of ``batch_size`` images:

* image ``i`` of a run uses seed ``seed + i`` and its own CPU ``torch.Generator`` for its initial
  latents and for any noise the sampler draws, and goes through the UNet and VAE as a batch of one
  would, so any image can be made again alone from its seed, bit for bit;
* the prompt and negative prompt are parsed with the WebUI grammar (``dreambooth.prompts``):
  emphasis weights, 75-token chunks, and prompt editing / alternation, which swaps the conditioning
  between steps through diffusers' ``callback_on_step_end``;
* every image carries the WebUI infotext in its PNG; files are ``00001-<seed>.png``, numbered on
  from the highest number already in the folder.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .errors import UserError
from .infotext import format_infotext, write_png
from .prompts import PromptEncoder, schedule_conditioning
from .samplers import make_scheduler, resolve

LORA_WEIGHTS_FILE = "pytorch_lora_weights.safetensors"
TRAINING_ARGS_FILE = "training_args.json"
MAX_SEED = 2**32 - 1
_NUMBERED = re.compile(r"^(\d+)-")


# ----------------------------------------------------------------------------------------------
# Parameters and results
# ----------------------------------------------------------------------------------------------

@dataclass
class GenerationParams:
    """One WebUI generation: everything but the model."""
    prompt: str
    negative_prompt: str = ""
    sampler: str = "Euler a"
    schedule: str = "Automatic"
    steps: int = 20
    cfg_scale: float = 7.0
    seed: int = -1                       # -1: a random seed
    width: int | None = None             # None: the model's default size (img2img: the init image's)
    height: int | None = None
    batch_size: int = 1
    batch_count: int = 1
    init_image: object = None            # path or PIL image: img2img
    strength: float = 0.75               # img2img / inpainting denoising strength
    mask: object = None                  # path or PIL image, white = repaint: inpainting

    @classmethod
    def from_infotext(cls, info: dict, **overrides) -> "GenerationParams":
        """Parameters from a parsed infotext (``parse_generation_parameters``)."""
        def num(key, kind, default):
            try:
                return kind(info[key]) if key in info and info[key] != "" else default
            except (TypeError, ValueError):
                raise UserError(f"infotext: {key}: {info[key]!r} is not a number") from None
        params = cls(
            prompt=info.get("Prompt", ""),
            negative_prompt=info.get("Negative prompt", ""),
            sampler=info.get("Sampler", "Euler a"),
            schedule=info.get("Schedule type", "Automatic") or "Automatic",
            steps=num("Steps", int, 20),
            cfg_scale=num("CFG scale", float, 7.0),
            seed=num("Seed", int, -1),
            width=num("Size-1", int, None),
            height=num("Size-2", int, None),
            strength=num("Denoising strength", float, 0.75),
        )
        return replace(params, **overrides)


@dataclass
class GeneratedImage:
    image: object                 # PIL.Image
    seed: int
    infotext: str
    path: Path | None = None
    prompt: str = ""
    negative_prompt: str = ""


@dataclass
class LoraInfo:
    name: str
    weight: float
    path: Path             # the weights file
    hash: str
    spec: str = ""         # what the user gave (--lora)


@dataclass
class ModelInfo:
    """What the infotext says about the model; kept on the pipeline by ``load_generation_pipeline``."""
    name: str
    path: Path | None = None
    loras: list[LoraInfo] = field(default_factory=list)
    vae: Path | None = None
    spec: str | None = None        # what the user gave (--model), for --from-image
    _hash: str | None = None

    @property
    def hash(self) -> str | None:
        if self._hash is None and self.path is not None:
            self._hash = model_hash(self.path)
        return self._hash


# ----------------------------------------------------------------------------------------------
# Hashes (as the WebUI shows them) with a small cache: big checkpoints take seconds to read
# ----------------------------------------------------------------------------------------------

def _cache_file() -> Path:
    root = os.environ.get("DREAMBOOTH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "dreambooth")
    return Path(root) / "hashes.json"


def _file_sha256(path: Path, skip_safetensors_header: bool = False) -> str:
    path = Path(path)
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{int(skip_safetensors_header)}"
    cache_path = _cache_file()
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if skip_safetensors_header:
            header_len = int.from_bytes(f.read(8), "little")
            f.seek(8 + header_len)
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    value = digest.hexdigest()
    cache[key] = value
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, cache_path)
    except OSError:
        pass
    return value


_VARIANT = re.compile(r"\.(fp16|fp32|bf16|ema|non_ema)\.")


def _pipeline_weight_files(folder: Path) -> list[Path]:
    """The weight files ``from_pretrained`` loads from a diffusers folder: those of the components
    named in model_index.json, without variants (``.fp16.``) or checkpoints kept beside them."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        index = {}
    components = [k for k, v in index.items() if isinstance(v, list) and v and v[0]]
    files = []
    for name in sorted(components):
        sub = folder / name
        if not sub.is_dir():
            continue
        found = sorted(p for p in sub.iterdir() if p.is_file() and not _VARIANT.search(p.name)
                       and p.suffix in (".safetensors", ".bin"))
        safetensors = [p for p in found if p.suffix == ".safetensors"]
        files += safetensors or found
    return files


def model_hash(path: Path) -> str:
    """``Model hash`` of the infotext: the WebUI's sha256[:10] of a checkpoint file; for a diffusers
    folder, sha256[:10] over the names and sha256s of the weight files its pipeline loads (each
    file's hash is cached, so a big model is read once)."""
    path = Path(path)
    if path.is_file():
        return _file_sha256(path)[:10]
    digest = hashlib.sha256()
    for p in _pipeline_weight_files(path):
        digest.update(f"{p.relative_to(path).as_posix()}:{_file_sha256(p)}\n".encode())
    return digest.hexdigest()[:10]


def lora_hash(path: Path) -> str:
    """``Lora hashes`` entry: sha256[:12] of the tensor data of a .safetensors file (the WebUI's
    and Civitai's hash for LoRAs), of the whole file otherwise."""
    path = Path(path)
    return _file_sha256(path, skip_safetensors_header=path.suffix == ".safetensors")[:12]


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------

def is_lora_output(path: Path) -> bool:
    """A ``dreambooth train`` LoRA output folder: LoRA weights and training args, no pipeline."""
    path = Path(path)
    return (path.is_dir() and not (path / "model_index.json").exists()
            and (path / LORA_WEIGHTS_FILE).exists() and (path / TRAINING_ARGS_FILE).exists())


def resolve_lora_output(model: str, loras=(), vae: str | None = None):
    """A LoRA training output folder stands for its base model plus that LoRA (at weight 1, first),
    with the VAE it was trained with unless ``vae`` is given: returns (model, loras, vae)."""
    folder = Path(model).expanduser()
    loras = [(str(p), float(w)) for p, w in loras]
    if not is_lora_output(folder):
        return str(model), loras, vae
    try:
        args = json.loads((folder / TRAINING_ARGS_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"--model {folder}: unreadable {TRAINING_ARGS_FILE} ({exc})") from exc
    base = args.get("model") if isinstance(args, dict) else None
    if not base:
        raise UserError(f"--model {folder}: {TRAINING_ARGS_FILE} names no base \"model\"; "
                        f"pass --model BASE --lora {folder}")
    base = str(base)
    if not Path(base).expanduser().exists() and (folder / base).exists():
        base = str(folder / base)        # a path written relative to the output folder
    return base, [(str(folder), 1.0), *loras], vae or args.get("vae")


def parse_lora_spec(spec: str) -> tuple[str, float]:
    """``DIR_OR_FILE[:weight]`` -> (path, weight). A colon that is part of the path (``C:\\...``)
    is kept."""
    spec = str(spec)
    head, sep, tail = spec.rpartition(":")
    if sep and head and re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)", tail.strip()):
        return head, float(tail)
    return spec, 1.0


def _lora_file(spec: str) -> Path:
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / LORA_WEIGHTS_FILE).exists():
            return path / LORA_WEIGHTS_FILE
        found = sorted(path.glob("*.safetensors"))
        if len(found) == 1:
            return found[0]
        raise UserError(f"--lora {spec}: folder has no {LORA_WEIGHTS_FILE}"
                        + (" and several .safetensors; name one" if found else ""))
    if path.is_file():
        if path.suffix.lower() not in (".safetensors", ".bin", ".pt"):
            raise UserError(f"--lora {spec}: not a LoRA file; expected .safetensors")
        return path
    raise UserError(f"--lora {spec}: no such file or folder")


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _model_name(spec: str, path: Path | None) -> str:
    if spec == "toy" or path is None:
        return spec
    p = Path(spec).expanduser()
    if p.exists():
        return p.stem if p.is_file() else p.resolve().name
    return spec                                   # a hub id


def _as_recorded(spec: str) -> str:
    """A model or LoRA as the infotext records it: local paths made absolute, hub ids as given."""
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def load_generation_pipeline(model: str, loras=(), vae: str | None = None,
                             device: str | torch.device | None = None, dtype: torch.dtype | None = None):
    """Load ``model`` for generation and apply ``loras`` (``[(path, weight), ...]``).

    ``model`` is anything ``dreambooth.models.load_pipeline`` accepts, or a LoRA training output
    folder (``pytorch_lora_weights.safetensors`` + ``training_args.json``): its base model (and
    the VAE it was trained with) is loaded and the LoRA applied at weight 1, before the other ``loras``. LoRA files may be in
    diffusers or kohya key format. Half precision on CUDA unless ``dtype`` says otherwise.
    """
    from .models import load_pipeline, resolve_model

    model, loras, vae = resolve_lora_output(model, loras, vae)
    device = torch.device(device) if device is not None else default_device()
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else None
    ref = resolve_model(model)
    pipe = load_pipeline(model, vae=vae, dtype=dtype)

    info = ModelInfo(name=_model_name(model, ref.path), path=ref.path, spec=_as_recorded(model),
                     vae=Path(vae).expanduser() if vae and Path(vae).expanduser().exists() else None)
    names, weights = [], []
    for k, (spec, weight) in enumerate(loras):
        file = _lora_file(spec)
        adapter = f"lora{k}"
        try:
            pipe.load_lora_weights(str(file.parent), weight_name=file.name, adapter_name=adapter)
        except UserError:
            raise
        except Exception as exc:
            msg = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            raise UserError(f"--lora {spec}: cannot apply to this model ({msg})") from exc
        names.append(adapter)
        weights.append(weight)
        label = Path(spec).expanduser()
        info.loras.append(LoraInfo(name=label.stem if label.is_file() else label.resolve().name,
                                   weight=weight, path=file, hash=lora_hash(file), spec=_as_recorded(spec)))
    if names:
        pipe.set_adapters(names, adapter_weights=weights)
    pipe.to(device)
    object.__setattr__(pipe, "_dreambooth_model", info)
    return pipe


def model_info(pipe) -> ModelInfo:
    info = getattr(pipe, "_dreambooth_model", None)
    if info is None:
        path = getattr(getattr(pipe, "config", None), "_name_or_path", None) or None
        path = Path(path) if path and Path(path).exists() else None
        info = ModelInfo(name=path.name if path else type(pipe).__name__, path=path)
        object.__setattr__(pipe, "_dreambooth_model", info)
    return info


# ----------------------------------------------------------------------------------------------
# Files and progress
# ----------------------------------------------------------------------------------------------

def next_number(output_dir: Path) -> int:
    """1 + the highest ``NNNNN-`` number of the files in ``output_dir`` (1 when there are none)."""
    highest = 0
    if Path(output_dir).is_dir():
        for p in Path(output_dir).iterdir():
            m = _NUMBERED.match(p.name)
            if m:
                highest = max(highest, int(m.group(1)))
    return highest + 1


def save_numbered(image, output_dir: Path, seed: int, infotext: str, prefix: str = "") -> Path:
    """Save as ``<prefix>NNNNN-<seed>.png`` with the next free number; never overwrites."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    number = next_number(output_dir) if not prefix else _next_prefixed(output_dir, prefix)
    while True:
        path = output_dir / f"{prefix}{number:05d}-{seed}.png"
        try:
            with open(path, "xb"):
                pass                     # claim the name atomically, then write the image
            break
        except FileExistsError:
            number += 1
    return write_png(image, path, infotext)


def _next_prefixed(output_dir: Path, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)-")
    numbers = [int(m.group(1)) for p in output_dir.iterdir() if (m := pattern.match(p.name))]
    return max(numbers, default=0) + 1


def progress_enabled(progress) -> bool:
    return bool(progress) and os.environ.get("DREAMBOOTH_NO_PROGRESS", "0") not in ("1", "true", "yes")


class Progress:
    """One progress bar over all images of a run (fractions of an image as its steps complete)."""

    def __init__(self, total_images: float, enabled: bool = True, desc: str = "generating"):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total_images, desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n:.1f}/{total:.0f} images [{elapsed}<{remaining}]")

    def advance(self, images: float) -> None:
        if self.bar is not None:
            self.bar.update(images)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# ----------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------

def _open_image(value, flag: str, mode: str):
    from PIL import Image, ImageOps
    if value is None:
        return None
    if isinstance(value, Image.Image):
        return value.convert(mode)
    path = Path(value).expanduser()
    if not path.is_file():
        raise UserError(f"{flag} {value}: no such file")
    try:
        with Image.open(path) as im:
            return ImageOps.exif_transpose(im).convert(mode)
    except Exception as exc:
        raise UserError(f"{flag} {value}: not an image ({type(exc).__name__})") from exc


def default_size(pipe) -> tuple[int, int]:
    """(width, height) the model was made for: UNet sample size x VAE scale factor."""
    size = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    return size, size


def prepare_params(params: GenerationParams, pipe):
    """Validate ``params`` and fill in the defaults: returns (params with the seed and size
    resolved, init image, mask), or raises a one-line UserError."""
    if params.steps < 1:
        raise UserError(f"--steps {params.steps}: must be at least 1")
    if params.batch_size < 1 or params.batch_count < 1:
        raise UserError("--batch-size and --batch-count must be at least 1")
    if not 0.0 < params.strength <= 1.0 and params.init_image is not None:
        raise UserError(f"--strength {params.strength}: must be in (0, 1]")
    resolve(params.sampler, params.schedule)
    init = _open_image(params.init_image, "--init-image", "RGB")
    mask = _open_image(params.mask, "--mask", "L")
    if mask is not None and init is None:
        raise UserError("--mask needs --init-image (the image to inpaint)")
    width, height = params.width, params.height
    if init is not None and (width is None or height is None):
        width = width or max(8, init.width // 8 * 8)
        height = height or max(8, init.height // 8 * 8)
    dw, dh = default_size(pipe)
    width, height = width or dw, height or dh
    for flag, value in (("--width", width), ("--height", height)):
        if value < 8 or value % 8:
            raise UserError(f"{flag} {value}: must be a positive multiple of 8")
    seed = params.seed
    if seed is None or seed < 0:
        seed = random.randrange(MAX_SEED)
    return replace(params, seed=int(seed), width=int(width), height=int(height)), init, mask


def _task_pipeline(pipe, task: str):
    if task == "txt2img":
        return pipe
    cache = getattr(pipe, "_dreambooth_tasks", None)
    if cache is None:
        cache = {}
        object.__setattr__(pipe, "_dreambooth_tasks", cache)
    if task not in cache:
        from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting
        auto = AutoPipelineForImage2Image if task == "img2img" else AutoPipelineForInpainting
        try:
            cache[task] = auto.from_pipe(pipe)
        except Exception as exc:
            raise UserError(f"{'--init-image' if task == 'img2img' else '--mask'}: this model has no {task} "
                            f"pipeline ({type(exc).__name__})") from exc
        cache[task].set_progress_bar_config(disable=True)
    return cache[task]


def infotext_params(params: GenerationParams, seed: int, info: ModelInfo | None, model_name: str | None,
                    img2img: bool) -> dict:
    """The settings line of the infotext, in the WebUI's key order, plus our LoRA keys."""
    out = {
        "Steps": params.steps,
        "Sampler": params.sampler,
        "Schedule type": params.schedule,
        "CFG scale": params.cfg_scale,
        "Seed": seed,
        "Size": f"{params.width}x{params.height}",
        "Model hash": info.hash if info else None,
        "Model": model_name or (info.name if info else None),
        "VAE": info.vae.name if info and info.vae else None,
        "Denoising strength": params.strength if img2img else None,
    }
    if info and info.loras:
        out["Lora hashes"] = ", ".join(f"{lo.name}: {lo.hash}" for lo in info.loras)
        out["Lora weights"] = ", ".join(f"{lo.name}: {lo.weight:g}" for lo in info.loras)
    # Our own keys, for --from-image: where the model and LoRAs were, as the user named them.
    if info and info.spec:
        out["Model path"] = info.spec
    if info and info.loras:
        out["Lora paths"] = json.dumps([[lo.spec, lo.weight] for lo in info.loras], ensure_ascii=False)
    return out


def sources_from_infotext(info: dict) -> tuple[str | None, list[tuple[str, float]] | None]:
    """(model, loras) recorded by our ``Model path`` / ``Lora paths`` keys, where they still exist
    here; None for what is missing or gone."""
    from .models import resolve_model
    model = None
    for candidate in (info.get("Model path"), info.get("Model")):
        if candidate:
            try:
                resolve_model(candidate)
            except UserError:
                continue
            model = candidate
            break
    loras = None
    try:
        listed = json.loads(info["Lora paths"]) if info.get("Lora paths") else None
    except ValueError:
        listed = None
    if listed and all(Path(str(spec)).expanduser().exists() for spec, _ in listed):
        loras = [(str(spec), float(weight)) for spec, weight in listed]
    return model, loras


def generate_images(pipe, params: GenerationParams, output_dir: Path | None = None, model_name: str | None = None,
                    progress=True, fast_batches: bool = False) -> list[GeneratedImage]:
    """Run ``params`` on ``pipe``: ``batch_count`` batches of ``batch_size`` images, image ``i``
    with seed ``seed + i``. Saves ``NNNNN-<seed>.png`` files with infotext when ``output_dir`` is
    given. ``progress`` is a bool or a ``Progress`` shared by several calls.

    By default the images of a batch go through the UNet and VAE one at a time (see
    ``per_image_evaluation``), so any image is bit-identical when made again alone from its seed.
    ``fast_batches=True`` evaluates the whole batch at once: faster on GPUs, but an image may then
    differ by a rounding step from the same seed generated alone."""
    params, init, mask = prepare_params(params, pipe)
    task = "inpaint" if mask is not None else "img2img" if init is not None else "txt2img"
    runner = _task_pipeline(pipe, task)
    base_config = getattr(pipe, "_dreambooth_scheduler_config", None)
    if base_config is None:
        base_config = dict(pipe.scheduler.config)
        object.__setattr__(pipe, "_dreambooth_scheduler_config", base_config)
    info = model_info(pipe)
    encoder = PromptEncoder(pipe)
    conditioning = schedule_conditioning(encoder, params.prompt, params.negative_prompt, params.steps)
    is_xl = encoder.family == "sdxl"

    if init is not None:
        init = init.resize((params.width, params.height), resample=3)       # bicubic, "Just resize"
    if mask is not None:
        mask = mask.resize((params.width, params.height), resample=3)

    own_bar = not isinstance(progress, Progress)
    bar = Progress(params.batch_size * params.batch_count, progress_enabled(progress)) if own_bar else progress
    results: list[GeneratedImage] = []
    try:
        for batch in range(params.batch_count):
            seeds = [params.seed + batch * params.batch_size + k for k in range(params.batch_size)]
            images = _run_batch(runner, params, seeds, conditioning, base_config, is_xl, init, mask, bar,
                                exact=not fast_batches)
            for seed, image in zip(seeds, images):
                if mask is not None:
                    from PIL import Image
                    image = Image.composite(image, init, mask)       # keep the unmasked pixels exactly
                text = format_infotext(params.prompt, params.negative_prompt,
                                       infotext_params(params, seed, info, model_name, init is not None))
                path = save_numbered(image, output_dir, seed, text) if output_dir is not None else None
                results.append(GeneratedImage(image, seed, text, path, params.prompt, params.negative_prompt))
    finally:
        if own_bar:
            bar.close()
    return results


def _split_batch(value, index, batch: int):
    """``value`` restricted to the batch rows ``index`` (tensors with ``batch`` rows, also inside
    dicts); anything else unchanged."""
    if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == batch:
        return value[index]
    if isinstance(value, dict):
        return {k: _split_batch(v, index, batch) for k, v in value.items()}
    return value


@contextlib.contextmanager
def per_image_evaluation(runner, images: int):
    """Run the UNet and the VAE decoder one image at a time, so that every image of a batch is
    computed with exactly the shapes (hence the same kernels and rounding) it gets when generated
    alone: an image is then bit-identical whether made in a batch or from its seed alone.

    With classifier-free guidance the UNet batch is ``[uncond_1..uncond_n, cond_1..cond_n]``; image
    ``i`` is evaluated as ``[uncond_i, cond_i]``, the layout of a batch of one.
    """
    if images <= 1:
        yield
        return
    unet, vae = runner.unet, runner.vae
    forward = unet.forward

    def forward_per_image(sample, *args, **kwargs):
        rows = sample.shape[0]
        if rows % images:
            return forward(sample, *args, **kwargs)
        groups = rows // images                                   # 2 with CFG, 1 without
        outputs = []
        for i in range(images):
            index = torch.tensor([i + g * images for g in range(groups)], device=sample.device)
            part = forward(sample[index], *[_split_batch(a, index, rows) for a in args],
                           **{k: _split_batch(v, index, rows) for k, v in kwargs.items()})
            outputs.append(part[0] if isinstance(part, tuple) else part.sample)
        order = torch.tensor([i * groups + g for g in range(groups) for i in range(images)], device=sample.device)
        out = torch.cat(outputs)[order]
        if kwargs.get("return_dict", True) is False:
            return (out,)
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
        return UNet2DConditionOutput(sample=out)

    slicing = getattr(vae, "use_slicing", False)
    unet.forward = forward_per_image
    vae.use_slicing = True
    try:
        yield
    finally:
        del unet.forward
        vae.use_slicing = slicing


def _embed_kwargs(pos, neg, batch: int, is_xl: bool, dtype, device) -> dict:
    def rep(t):
        return t.to(device=device, dtype=dtype).repeat(batch, *([1] * (t.dim() - 1)))
    kwargs = {"prompt_embeds": rep(pos.embeds), "negative_prompt_embeds": rep(neg.embeds)}
    if is_xl:
        kwargs["pooled_prompt_embeds"] = rep(pos.pooled)
        kwargs["negative_pooled_prompt_embeds"] = rep(neg.pooled)
    return kwargs


def _run_batch(runner, params: GenerationParams, seeds: list[int], conditioning, base_config, is_xl: bool,
               init, mask, bar: Progress, exact: bool = True):
    """One pipeline call for the images of ``seeds``, with a fresh scheduler for the sampler."""
    scheduler = make_scheduler(base_config, params.sampler, params.schedule)
    if type(scheduler).__name__ == "DPMSolverSDEScheduler":
        scheduler.noise_sampler_seed = list(seeds)          # one Brownian tree per image
    previous, runner.scheduler = runner.scheduler, scheduler
    try:
        return _sample(runner, scheduler, params, seeds, conditioning, is_xl, init, mask, bar, exact)
    finally:
        runner.scheduler = previous                      # leave the pipeline as we found it


def _sample(runner, scheduler, params, seeds, conditioning, is_xl, init, mask, bar, exact):
    order = max(1, int(getattr(scheduler, "order", 1)))
    device = runner._execution_device
    dtype = runner.unet.dtype
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    n = len(seeds)
    pos, neg = conditioning.at(0)
    kwargs = _embed_kwargs(pos, neg, n, is_xl, dtype, device)
    state = {"step": 0}

    def on_step_end(pipe, i, t, tensors):
        # Called after denoising iteration i; the conditioning returned is used from iteration i+1.
        # Steps count as in the WebUI (0-based); second-order schedulers (Heun, DPM2) take two
        # iterations per step.
        bar.advance(n / max(1, pipe.num_timesteps))
        step = (i + 1) // order
        if not conditioning.changes or step == state["step"]:
            return {}
        state["step"] = step
        p, q = conditioning.at(step)
        current = tensors["prompt_embeds"]
        new = _embed_kwargs(p, q, n, is_xl, current.dtype, current.device)
        cfg = pipe.do_classifier_free_guidance
        out = {"prompt_embeds": torch.cat([new["negative_prompt_embeds"], new["prompt_embeds"]]) if cfg
               else new["prompt_embeds"]}
        if is_xl:
            pooled = torch.cat([new["negative_pooled_prompt_embeds"], new["pooled_prompt_embeds"]]) if cfg \
                else new["pooled_prompt_embeds"]
            out["add_text_embeds"] = pooled.to(tensors["add_text_embeds"].dtype)
        return out

    call = dict(kwargs, num_inference_steps=params.steps, guidance_scale=params.cfg_scale, generator=generators,
                output_type="pil", callback_on_step_end=on_step_end,
                callback_on_step_end_tensor_inputs=["prompt_embeds"] + (["add_text_embeds"] if is_xl else []))
    if init is None:
        call.update(width=params.width, height=params.height)
    else:
        call.update(image=[init] * n, strength=params.strength)
        if mask is not None:
            call.update(mask_image=[mask] * n, width=params.width, height=params.height)
    with torch.inference_mode(), (per_image_evaluation(runner, n) if exact else contextlib.nullcontext()):
        images = runner(**call).images
    return images
