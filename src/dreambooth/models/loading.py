"""Load pipelines and VAEs from any spec ``specs.resolve_model`` accepts; the family is read from the
components (``families.family_of``), never from the name.
"""
from __future__ import annotations

import contextlib
import json
import shlex
import tempfile
from pathlib import Path

import torch

from .. import progress
from ..errors import UserError
from .families import family_of
from .specs import SINGLE_FILE_SUFFIXES, hub_snapshot, is_hub_id, offline, resolve_model


def quiet_libraries() -> None:
    """For our entry points (the CLI, the server): diffusers/transformers/hub print loading bars and
    advice on every load and call; our own bars say what matters."""
    for name, level in _LIBRARY_SETTINGS.items():
        _library_setting(name, level)


_LIBRARY_SETTINGS = {"diffusers": "error", "transformers": "error", "hub": "off"}


def _library_setting(name: str, value=None):
    """A library's verbosity and progress bars: set to ``value`` ("error", "off" or what an earlier call
    returned); returns what it was."""
    if name == "hub":
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
        was = "off" if are_progress_bars_disabled() else "on"
        if value is not None:
            disable_progress_bars() if value == "off" else enable_progress_bars()
        return was
    logging = __import__(name).utils.logging
    was = (logging.get_verbosity(), logging.is_progress_bar_enabled())
    if value == "error":
        value = (logging.ERROR, False)
    if value is not None:
        logging.set_verbosity(value[0])
        logging.enable_progress_bar() if value[1] else logging.disable_progress_bar()
    return was


@contextlib.contextmanager
def quietly():
    """The libraries quiet while we load, and as they were after (a notebook's own loads keep their
    bars and warnings)."""
    was = {name: _library_setting(name, level) for name, level in _LIBRARY_SETTINGS.items()}
    try:
        yield
    finally:
        for name, value in was.items():
            _library_setting(name, value)


@contextlib.contextmanager
def lower_case_suffix(path: Path):
    """``path``, or where its suffix is not lower case (``Model.SAFETENSORS``, which A1111 loads) a link
    to it named with one: diffusers picks a file's reader by its exact suffix (pickle otherwise)."""
    path = Path(path)
    if path.suffix == path.suffix.lower():
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="dreambooth-") as folder:
        link = Path(folder) / (path.stem + path.suffix.lower())
        link.symlink_to(path.resolve())
        yield link


def damaged_file_line(path: Path) -> str | None:
    """Why a ``.safetensors`` file cannot be read (cut short, or not safetensors at all), or None."""
    if Path(path).suffix.lower() != ".safetensors":
        return None
    from safetensors import safe_open
    try:
        with safe_open(str(path), "pt") as handle:
            for key in handle.keys():
                handle.get_slice(key)
    except Exception as exc:
        return f"the file is damaged or not a safetensors file: {type(exc).__name__}"
    return None


# The parts a pipeline folder must hold (a safety checker, often deleted to save 1.2 GB, is not loaded).
NEEDED_PARTS = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
LORA_KEYS = ("lora_unet_", "lora_te", ".lora_down.", ".lora_up.", ".lora_A.", ".lora_B.", "lora.down", "lora.up")


# diffusers' model types of single files, as a user names them
FILE_KINDS = {"v1": "an SD 1.x checkpoint", "v2": "an SD 2.x checkpoint", "xl_base": "an SDXL checkpoint"}


def _single_file_type(path: Path) -> tuple[str, torch.dtype | None, bool]:
    """(diffusers' model type, the low precision all its weights are stored in: fp16, bf16 or None,
    whether it is marked v-prediction: the empty ``v_pred`` tensor A1111 and ComfyUI read)."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type, load_single_file_checkpoint
    try:
        with lower_case_suffix(path) as readable:
            checkpoint = load_single_file_checkpoint(str(readable))
    except Exception as exc:
        raise UserError(f"--model {path}: cannot read checkpoint ({type(exc).__name__}: {exc})".splitlines()[0]) from exc
    if not any(key.startswith("model.diffusion_model.") for key in checkpoint):
        if any(part in key for key in checkpoint for part in LORA_KEYS):
            raise UserError(f"--model {path}: a LoRA, not a model; give it as --lora {shlex.quote(str(path))} (or <lora:NAME> in the "
                            "prompt) with the --model it was trained on")
        raise UserError(f"--model {path}: holds no Stable Diffusion UNet (model.diffusion_model.*); not an "
                        "SD 1.x, SD 2.x or SDXL checkpoint")
    stored = {t.dtype for t in checkpoint.values() if isinstance(t, torch.Tensor) and t.is_floating_point()}
    low = stored.pop() if len(stored) == 1 and stored <= {torch.float16, torch.bfloat16} else None
    return infer_diffusers_model_type(checkpoint), low, "v_pred" in checkpoint


def _pipeline_class_for_folder(path: Path):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    try:
        index = json.loads((path / "model_index.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"--model {path}: unreadable model_index.json ({exc})") from exc
    name = index.get("_class_name", "")
    if "text_encoder_2" in index and index.get("text_encoder_2", [None])[0]:
        return StableDiffusionXLPipeline
    if name in ("StableDiffusionPipeline", "StableDiffusionXLPipeline") or "unet" in index:
        return StableDiffusionXLPipeline if "XL" in name else StableDiffusionPipeline
    raise UserError(f"--model {path}: a {name or 'unknown'} pipeline is not supported; "
                    "use an SD 1.x, SD 2.x or SDXL model")


def _dtype_kwargs(dtype: torch.dtype | None) -> dict:
    """diffusers' loaders took ``dtype`` for ``torch_dtype`` in 2026 and warn on the old name, on every
    load; releases before that know only the old one."""
    if dtype is None:
        return {}
    from diffusers.utils import deprecation_utils
    return {"dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype": dtype}


def load_vae(spec: str, dtype: torch.dtype | None = None, like=None):
    """A replacement VAE (``--vae``): a diffusers AutoencoderKL folder, a hub id or a single file.
    ``like``: the model's own VAE. A single file (A1111's ``sdxl_vae.safetensors``) holds no config,
    so it takes that VAE's, as the WebUI does (its scaling factor is the family's: SDXL's 0.13025, not
    SD1's 0.18215); a VAE of other latents than the model's is refused."""
    from diffusers import AutoencoderKL
    path = Path(spec).expanduser()
    try:
        if path.is_file():
            if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
                raise UserError(f"--vae {spec}: not a VAE file; expected {' or '.join(SINGLE_FILE_SUFFIXES)}, "
                                "or a diffusers AutoencoderKL folder")
            with lower_case_suffix(path) as readable:
                if like is None:
                    vae = AutoencoderKL.from_single_file(str(readable), **_dtype_kwargs(dtype))
                else:
                    with tempfile.TemporaryDirectory() as config:
                        like.save_config(config)
                        vae = AutoencoderKL.from_single_file(str(readable), config=config, local_files_only=True,
                                                             **_dtype_kwargs(dtype))
        elif path.is_dir():
            sub = "vae" if (path / "vae" / "config.json").exists() else None
            if sub is None and not (path / "config.json").exists():
                raise UserError(f"--vae {spec}: folder has no config.json (nor vae/config.json)")
            vae = AutoencoderKL.from_pretrained(path, subfolder=sub, **_dtype_kwargs(dtype))
        elif is_hub_id(spec):
            vae = AutoencoderKL.from_pretrained(hub_snapshot(spec, "--vae"), **_dtype_kwargs(dtype))
        else:
            raise UserError(f"--vae {spec}: no such folder or file, and not a hub id")
    except UserError:
        raise
    except Exception as exc:
        why = (str(exc).splitlines() or [""])[0][:160]
        raise UserError(f"--vae {spec}: cannot load ({type(exc).__name__}{': ' + why if why else ''}); is it a "
                        "VAE of this model's family?") from exc
    if like is not None:
        def shape(v):
            return v.config.latent_channels, 2 ** (len(v.config.block_out_channels) - 1)
        if shape(vae) != shape(like):
            raise UserError(f"--vae {spec}: makes {shape(vae)[0]}-channel latents at 1/{shape(vae)[1]} of the image "
                            f"size; this model's are {shape(like)[0]}-channel at 1/{shape(like)[1]}: a VAE of another "
                            "family (SD3, Flux, ...)")
        ours, theirs = like.config.get("scaling_factor"), vae.config.get("scaling_factor")
        if ours and theirs and abs(ours - theirs) > 1e-6:     # SDXL's 0.13025 beside SD1's 0.18215: same shape
            raise UserError(f"--vae {spec}: scales its latents by {theirs:g}, this model's VAE by {ours:g}: a VAE of "
                            f"another family{' (SDXL)' if abs(theirs - 0.13025) < 1e-6 else ''}; give one of this "
                            "model's family (a preset's --vae is for its family: --vae '' drops it)")
    return vae


def load_pipeline(spec: str, vae: str | None = None, dtype: torch.dtype | None = None,
                  model_config: str | None = None, flag: str = "--model", components: dict | None = None):
    """Load a StableDiffusion(XL)Pipeline from any spec ``resolve_model`` accepts.

    ``model_config`` is the diffusers folder or hub id whose configs describe a single-file
    checkpoint; without it diffusers looks for the default configs of the detected type in the local
    cache (offline-safe: it never downloads when HF_HUB_OFFLINE=1). ``components`` are modules to
    use instead of loading them (e.g. a trained UNet).

    Without ``dtype``, parts load in fp32, except from a single file whose weights are all fp16 (or
    all bf16): those stay so, for the caller to cast part by part (the trainer's ``move``), with the
    same bits as from fp32. Upcast while loading, an fp16 SDXL file held all 14 GB of its fp32 parts
    in host memory at once (the SD1.5 layout: 4.3 GiB of fresh memory where 2.2 are needed).
    """
    with quietly():
        return _load_pipeline(spec, flag, vae, dtype, model_config, components)


def _load_pipeline(spec, flag, vae, dtype, model_config, components):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    ref = resolve_model(spec, flag)
    config_ref = resolve_model(model_config, "--model-config") if model_config else None   # checked even if unused
    kwargs = {**(components or {}), **_dtype_kwargs(dtype)}
    if ref.kind == "file":
        kind, stored, v_marked = _single_file_type(ref.path)
        if dtype is None:
            kwargs.update(_dtype_kwargs(stored))
        if kind.startswith("xl_base"):
            cls = StableDiffusionXLPipeline
        elif kind in ("v1", "v2"):
            cls = StableDiffusionPipeline
        else:
            raise UserError(f"{flag} {spec}: a '{kind}' checkpoint is not supported; use SD 1.x, SD 2.x or SDXL")
        if config_ref is not None and (config_ref.path / "model_index.json").is_file():
            cls = _pipeline_class_for_folder(config_ref.path)     # its config says which (diffusers guesses by keys)
        if config_ref is not None:
            kwargs["config"] = str(config_ref.path)
        try:
            with lower_case_suffix(ref.path) as readable:
                pipe = cls.from_single_file(str(readable), local_files_only=offline() or bool(model_config), **kwargs)
        except Exception as exc:
            what = FILE_KINDS.get(kind, f"a '{kind}' checkpoint")
            if model_config:      # most often a config of another family (SD 2.x's for an SD 1.x file)
                raise UserError(f"{flag} {spec}: cannot load it with --model-config {model_config} "
                                f"({type(exc).__name__}); the file is {what}: give a diffusers folder or cached hub id "
                                "of that family") from exc
            raise UserError(f"{flag} {spec}: cannot load single file ({type(exc).__name__}); pass --model-config "
                            f"with the diffusers folder or cached hub id of its base model ({what})") from exc
        empty = [name for name, part in pipe.components.items() if isinstance(part, torch.nn.Module)
                 and any(p.is_meta for p in part.parameters())]
        if empty:       # weights the file lacks for the layout the pipeline took (another family's file?)
            raise UserError(f"{flag} {spec}: holds no weights for parts of this {cls.__name__} ({', '.join(empty)}); "
                            "is it of the family --model-config names?")
        if v_marked and pipe.scheduler.config.get("prediction_type") != "v_prediction":
            # the file says v-prediction (as it was trained); a config of the epsilon sibling (SD 2.1-base
            # for SD 2.1) would otherwise sample and train it with the wrong target, silently
            pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type="v_prediction")
            progress.message(f"{flag} {spec}: marked v-prediction (its v_pred key); sampled and trained so"
                             + (f", not as --model-config {model_config} says" if model_config else ""))
    else:
        cls = _pipeline_class_for_folder(ref.path)
        missing = [name for name, value in json.loads((ref.path / "model_index.json").read_text()).items()
                   if name in NEEDED_PARTS and isinstance(value, list) and value[0] is not None
                   and not (ref.path / name).is_dir() and not (name == "vae" and vae)]
        if missing:        # (diffusers: "no file named config.json found in directory <part>")
            raise UserError(f"{flag} {spec}: its model_index.json names {', '.join(missing)}, but the folder has no "
                            f"{', '.join(m + '/' for m in missing)}; copy the model whole"
                            f"{' (or give --vae)' if missing == ['vae'] else ''}")
        extra = {"safety_checker": None, "requires_safety_checker": False} if cls is StableDiffusionPipeline else {}
        try:
            pipe = cls.from_pretrained(ref.path, **extra, **kwargs)
        except Exception as exc:
            raise UserError(f"{flag} {spec}: cannot load pipeline ({type(exc).__name__}: {exc})".splitlines()[0]) from exc
    if vae:
        pipe.vae = load_vae(vae, dtype, like=pipe.vae)
    family_of(pipe)  # raises a UserError for unsupported variants
    pipe.set_progress_bar_config(disable=True)
    return pipe
