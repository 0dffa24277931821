"""Load base models from any place users keep them, and tell which family they are.

A model spec is one of: ``toy`` (the small model shipped in this package), a diffusers pipeline
folder (``model_index.json``), a single-file checkpoint (``.safetensors``/``.ckpt``, as A1111 and
ComfyUI keep them), or a hub id resolved from the local Hugging Face cache (never the network when
``HF_HUB_OFFLINE=1``). The family is read from the components, never from the name.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import UserError

TOY_MODEL_DIR = Path(__file__).parent / "toy" / "model"
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass(frozen=True)
class ModelRef:
    spec: str              # what the user wrote
    kind: str              # "folder" | "file" | "hub"
    path: Path             # the folder or file on disk (for hub ids: the cached snapshot)


def quiet_libraries() -> None:
    """diffusers/transformers/hub print loading bars and advice on every load; our own bars say
    what matters."""
    import diffusers
    import transformers
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        from huggingface_hub.utils import disable_progress_bars
        disable_progress_bars()
    except ImportError:
        pass


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def resolve_model(spec: str, flag: str = "--model") -> ModelRef:
    """Turn what the user wrote into a folder or file on disk, or a one-line error."""
    spec = str(spec)
    if spec == "toy":
        if not (TOY_MODEL_DIR / "model_index.json").exists():
            raise UserError(f"{flag} toy: the toy model's weights are not in this install "
                            f"({TOY_MODEL_DIR}); run scripts/pretrain_toy.py to make them")
        return ModelRef(spec, "folder", TOY_MODEL_DIR)
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "model_index.json").exists():
            return ModelRef(spec, "folder", path)
        raise UserError(f"{flag} {spec}: folder has no model_index.json; give a diffusers pipeline folder, "
                        "a .safetensors/.ckpt file or a hub id")
    if path.is_file():
        if path.suffix.lower() in SINGLE_FILE_SUFFIXES:
            return ModelRef(spec, "file", path)
        raise UserError(f"{flag} {spec}: not a model file; expected .safetensors or .ckpt")
    if _HUB_ID.match(spec) and not spec.startswith((".", "/")):
        return ModelRef(spec, "hub", _hub_snapshot(spec, flag))
    raise UserError(f"{flag} {spec}: no such folder or file, and not a hub id (org/name)")


def _hub_snapshot(repo_id: str, flag: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError
    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        pass
    if _offline():
        raise UserError(f"{flag} {repo_id}: not in the local Hugging Face cache and HF_HUB_OFFLINE=1; "
                        "download it on a connected machine or give a local folder")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.txt", "*.safetensors", "*.model"]))
    except Exception as exc:  # network, auth, missing repo: all one line for the user
        raise UserError(f"{flag} {repo_id}: could not fetch from the hub ({type(exc).__name__}); "
                        "give a local folder or file") from exc


# ----- families -------------------------------------------------------------------------------

def detect_family(unet_config, text_encoder_config=None, has_second_text_encoder: bool = False) -> str:
    """'sd1', 'sd2' or 'sdxl' from the components' configs.

    SDXL's UNet takes pooled text and size conditioning (``addition_embed_type == 'text_time'``).
    SD2 differs from SD1 by its OpenCLIP encoder (gelu, 1024 wide) and linear projections in the
    UNet's transformer blocks; SD1 uses CLIP ViT-L (quick_gelu, 768) and conv projections.
    """
    get = unet_config.get if isinstance(unet_config, dict) else lambda k, d=None: getattr(unet_config, k, d)
    if get("addition_embed_type") == "text_time" or has_second_text_encoder:
        return "sdxl"
    if get("addition_embed_type") or get("class_embed_type") or get("in_channels", 4) != 4:
        raise UserError(f"--model: UNet with in_channels={get('in_channels')}, "
                        f"addition_embed_type={get('addition_embed_type')} is not an SD1/SD2/SDXL text-to-image model "
                        "(inpainting, upscaler and other variants are not supported for training)")
    act = getattr(text_encoder_config, "hidden_act", None)
    if get("use_linear_projection") or get("cross_attention_dim") == 1024 or act == "gelu":
        return "sd2"
    return "sd1"


def family_of(pipe) -> str:
    te = getattr(pipe, "text_encoder", None)
    return detect_family(pipe.unet.config, te.config if te is not None else None,
                         getattr(pipe, "text_encoder_2", None) is not None)


def _single_file_type(path: Path) -> str:
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type, load_single_file_checkpoint
    try:
        checkpoint = load_single_file_checkpoint(str(path))
    except Exception as exc:
        raise UserError(f"--model {path}: cannot read checkpoint ({type(exc).__name__}: {exc})".splitlines()[0]) from exc
    return infer_diffusers_model_type(checkpoint)


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


def load_vae(spec: str, dtype: torch.dtype | None = None):
    """A replacement VAE (``--vae``): a diffusers AutoencoderKL folder, a hub id or a single file."""
    from diffusers import AutoencoderKL
    path = Path(spec).expanduser()
    try:
        if path.is_file():
            return AutoencoderKL.from_single_file(str(path), torch_dtype=dtype)
        if path.is_dir():
            sub = "vae" if (path / "vae" / "config.json").exists() else None
            if sub is None and not (path / "config.json").exists():
                raise UserError(f"--vae {spec}: folder has no config.json (nor vae/config.json)")
            return AutoencoderKL.from_pretrained(path, subfolder=sub, torch_dtype=dtype)
        if _HUB_ID.match(spec):
            return AutoencoderKL.from_pretrained(_hub_snapshot(spec, "--vae"), torch_dtype=dtype)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"--vae {spec}: cannot load ({type(exc).__name__})") from exc
    raise UserError(f"--vae {spec}: no such folder or file, and not a hub id")


def load_pipeline(spec: str, vae: str | None = None, dtype: torch.dtype | None = None,
                  model_config: str | None = None, flag: str = "--model", components: dict | None = None):
    """Load a StableDiffusion(XL)Pipeline from any spec ``resolve_model`` accepts.

    ``model_config`` is the diffusers folder or hub id whose configs describe a single-file
    checkpoint; without it diffusers looks for the default configs of the detected type in the local
    cache (offline-safe: it never downloads when HF_HUB_OFFLINE=1). ``components`` are modules to
    use instead of loading them (e.g. a trained UNet).
    """
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    quiet_libraries()
    ref = resolve_model(spec, flag)
    kwargs = dict(components or {})
    if dtype is not None:
        kwargs["torch_dtype"] = dtype
    if ref.kind == "file":
        kind = _single_file_type(ref.path)
        if kind.startswith("xl_base"):
            cls = StableDiffusionXLPipeline
        elif kind in ("v1", "v2"):
            cls = StableDiffusionPipeline
        else:
            raise UserError(f"{flag} {spec}: a '{kind}' checkpoint is not supported; use SD 1.x, SD 2.x or SDXL")
        if model_config:
            kwargs["config"] = str(resolve_model(model_config, "--model-config").path)
        try:
            pipe = cls.from_single_file(str(ref.path), local_files_only=_offline() or bool(model_config), **kwargs)
        except Exception as exc:
            raise UserError(f"{flag} {spec}: cannot load single file ({type(exc).__name__}); pass --model-config "
                            "with the diffusers folder or cached hub id of its base model") from exc
    else:
        cls = _pipeline_class_for_folder(ref.path)
        extra = {"safety_checker": None, "requires_safety_checker": False} if cls is StableDiffusionPipeline else {}
        try:
            pipe = cls.from_pretrained(ref.path, **extra, **kwargs)
        except Exception as exc:
            raise UserError(f"{flag} {spec}: cannot load pipeline ({type(exc).__name__}: {exc})".splitlines()[0]) from exc
    if vae:
        pipe.vae = load_vae(vae, dtype)
    family_of(pipe)  # raises a UserError for unsupported variants
    pipe.set_progress_bar_config(disable=True)
    return pipe
