"""The configs a single-file checkpoint loads with, and loading a listed model in the server's terms.

A single file (A1111's ``model.safetensors``) holds weights, not the configs of its parts; offline,
diffusers finds none for an SD 2.x or SDXL file. The server takes them from ``serve --model-config``
(one per family), else from a diffusers model folder of the same family that it lists."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from ..errors import UserError
from ..models.families import detect_family
from ..models.loading import load_pipeline
from ..models.specs import resolve_model

FAMILY_NAMES = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}
# The text encoders' keys in an A1111-style file tell the family from the header alone.
_FILE_KEYS = (("conditioner.embedders.", "sdxl"), ("cond_stage_model.model.", "sd2"),
              ("cond_stage_model.transformer.", "sd1"))


def folder_family(path: Path) -> str | None:
    """'sd1', 'sd2' or 'sdxl' of a diffusers pipeline folder, from its configs (no weights read)."""
    try:
        unet = json.loads((path / "unet" / "config.json").read_text())
        te_file = path / "text_encoder" / "config.json"
        te = SimpleNamespace(**json.loads(te_file.read_text())) if te_file.is_file() else None
        return detect_family(unet, te, (path / "text_encoder_2").is_dir())
    except (OSError, ValueError, TypeError, UserError):
        return None


def file_family(path: Path) -> str | None:
    """The family of a ``.safetensors`` checkpoint from its header (its tensors are not read); None for
    another format or a file that says nothing."""
    if path.suffix.lower() != ".safetensors":
        return None
    from safetensors import safe_open
    try:
        with safe_open(str(path), "pt") as handle:
            keys = list(handle.keys())
    except Exception:            # damaged, or not safetensors: loading says why
        return None
    for prefix, family in _FILE_KEYS:
        if any(key.startswith(prefix) for key in keys):
            return family
    return None


def given_configs(specs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``serve --model-config`` values by family: each a diffusers folder or cached hub id, one per family."""
    configs: dict[str, str] = {}
    for spec in specs:
        ref = resolve_model(spec, "--model-config")
        family = folder_family(ref.path) if ref.kind != "file" else None
        if family is None:
            raise UserError(f"--model-config {spec}: not a diffusers SD 1.x, SD 2.x or SDXL model folder (its unet/ "
                            "and text_encoder/ configs); give one such folder or cached hub id per family")
        if family in configs:
            raise UserError(f"--model-config {spec}: a second {FAMILY_NAMES[family]} config (after {configs[family]}); "
                            "give one per family")
        configs[family] = spec
    return configs


def _unet_width(path: Path) -> int | None:
    """The UNet's first width in a single file's header (its first convolution's output channels)."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), "pt") as handle:
            return int(handle.get_slice("model.diffusion_model.input_blocks.0.0.weight").get_shape()[0])
    except Exception:
        return None


def _folder_width(folder: Path) -> int | None:
    try:
        return int(json.loads((folder / "unet" / "config.json").read_text())["block_out_channels"][0])
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def config_for_file(path: Path, given: dict[str, str], folders: list[str]) -> str | None:
    """The config a single file loads with: the given one of its family, else a listed folder of it
    whose UNet has the file's width (a fine-tune of another size in the family's folders is passed over)."""
    family = file_family(path)
    if family is None:
        return None
    if family in given:
        return given[family]
    width = _unet_width(path)
    return next((folder for folder in folders if folder_family(Path(folder)) == family
                 and width in (None, _folder_width(Path(folder)))), None)


def vae_scale(spec: str | Path) -> float | None:
    """The latents' scaling factor a VAE's config names (a VAE folder, or a model folder's vae/), read
    without loading it; None where no config is at hand (a single file, a hub id)."""
    folder = Path(spec).expanduser()
    for config in (folder / "config.json", folder / "vae" / "config.json"):
        try:
            return float(json.loads(config.read_text())["scaling_factor"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def load_entry(entry, vae: str | None, dtype, field: str = "sd_model_checkpoint"):
    """The pipeline of a catalog entry; its errors name the entry as ``field`` knows it (a client's
    title, never the server's path) and what the operator can do with ``serve``."""
    shown = entry.spec if field.startswith("--") else entry.title
    if entry.local and not Path(entry.spec).expanduser().exists():    # a job deleted, a file moved away
        raise UserError(f"{field} {shown}: no longer on this server (deleted); see GET /sdapi/v1/sd-models")
    try:
        return load_pipeline(entry.spec, vae=vae, dtype=dtype, model_config=entry.config)
    except UserError as exc:
        message = str(exc)
        if entry.kind == "file" and entry.config is None and "--model-config" in message:
            family = FAMILY_NAMES.get(file_family(Path(entry.spec)), "")
            raise UserError(f"{field} {shown}: a single file{' of ' + family if family else ''} that this server has "
                            "no configs for; start `dreambooth serve` with --model-config FOLDER (a diffusers "
                            f"{family or 'model'} folder or cached hub id), or with such a folder in --models-dir"
                            ) from None
        if entry.config is not None:        # the configs by name: a client reads no server path
            config = Path(entry.config).name if Path(entry.config).expanduser().exists() else entry.config
            message = message.replace(f"--model-config {entry.config}", f"the configs of {config}") \
                .replace("the family --model-config names", f"the family of its configs ({config})")
        if vae:                     # the VAE by its listed name, and the API's way to drop it
            message = message.replace(f"--vae {vae}", f"sd_vae {Path(vae).name}").replace(
                "(a preset's --vae is for its family: --vae '' drops it)", "(sd_vae \"Automatic\": the model's own)")
        raise UserError(message.replace(f"--model {entry.spec}", f"{field} {shown}")) from None
