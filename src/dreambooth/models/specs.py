"""What a model spec names, resolved to files on disk: the one resolver.

A spec is ``toy`` (the small model shipped in this package), a diffusers pipeline folder
(``model_index.json``), a single-file checkpoint (``.safetensors``/``.ckpt``, as A1111 and ComfyUI
keep them), a hub id (from the local Hugging Face cache; fetched only when ``HF_HUB_OFFLINE`` is not
set), or a LoRA training output folder, which stands for its base model plus that LoRA.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..outputs import CHECKPOINTS_DIR, LORA_WEIGHTS_FILE, PREVIOUS_OUTPUT_DIR, TRAINING_ARGS_FILE, checkpoint_step

CHECKPOINT_WEIGHTS = "trainable.safetensors"      # a training checkpoint's trained weights (training/checkpoint.py)

TOY_MODEL_DIR = Path(__file__).resolve().parent.parent / "data" / "toy_model"
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass(frozen=True)
class ModelRef:
    spec: str              # what the user wrote
    kind: str              # "folder" | "file" | "hub"
    path: Path             # the folder or file on disk (for hub ids: the cached snapshot)


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def is_hub_id(spec: str) -> bool:
    """``org/name``; not ``models/base.safetensors``, a file that is not there (no repo is named so)."""
    return bool(_HUB_ID.match(spec)) and not spec.startswith((".", "/", "~")) \
        and not spec.lower().endswith(SINGLE_FILE_SUFFIXES)


def hub_snapshot(repo_id: str, flag: str, patterns: tuple[str, ...] = ("*.json", "*.txt", "*.safetensors", "*.model")) -> Path:
    """The local snapshot of a hub repository: the cache first; the network only when not offline."""
    from huggingface_hub import snapshot_download
    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:     # not cached, or a partial cache
        pass
    how = f"run `hf download {repo_id}` on a connected machine, or give a local folder"
    if offline():
        raise UserError(f"{flag} {repo_id}: not in the local Hugging Face cache and HF_HUB_OFFLINE=1; {how}")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=list(patterns)))
    except Exception as exc:  # network, auth, missing repo: all one line for the user
        raise UserError(f"{flag} {repo_id}: could not fetch from the hub ({type(exc).__name__}); {how}") from None


def resolve_model(spec: str, flag: str = "--model") -> ModelRef:
    """Turn what the user wrote into a folder or file on disk, or a one-line error."""
    spec = str(spec)
    if not spec.strip():
        raise UserError(f"{flag}: empty; give a diffusers folder, a .safetensors/.ckpt file, a hub id or toy")
    if spec == "toy":
        if not (TOY_MODEL_DIR / "model_index.json").exists():
            raise UserError(f"{flag} toy: the toy model's weights are not in this install "
                            f"({TOY_MODEL_DIR}); run scripts/pretrain_toy.py to make them")
        return ModelRef(spec, "folder", TOY_MODEL_DIR)
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "model_index.json").exists():
            return ModelRef(spec, "folder", path)
        if is_lora_output(path):
            raise UserError(f"{flag} {spec}: a LoRA training output, not a model; give its base model "
                            f"({training_args(path, flag).get('model', '?')}) here, or --resume to go on training it")
        if (method := checkpoint_method(path)) is not None:
            raise UserError(f"{flag} {spec}: a training checkpoint (state to go on training from: `dreambooth train "
                            f"--resume {spec}` with the run's settings), not a model; "
                            + (f"its LoRA at that step loads as --model BASE --lora {spec}" if method == "lora" else
                               "the run's output folder is the model once the run has finished"))
        if unfinished := unfinished_run(path, flag, spec):
            raise UserError(unfinished)
        raise UserError(f"{flag} {spec}: folder has no model_index.json; give a diffusers pipeline folder, "
                        "a .safetensors/.ckpt file or a hub id")
    if path.is_file():
        if path.suffix.lower() in SINGLE_FILE_SUFFIXES:
            return ModelRef(spec, "file", path)
        raise UserError(f"{flag} {spec}: not a model file; expected .safetensors or .ckpt")
    if is_hub_id(spec):
        return ModelRef(spec, "hub", _local_or_hub(spec, flag))
    raise UserError(f"{flag} {spec}: no such folder or file, and not a hub id (org/name)")


def unfinished_run(path: Path, flag: str, spec: str) -> str | None:
    """The error for a training output whose run stopped before writing its model: the model an
    ``--overwrite`` run was replacing waits in ``.previous`` (usable as it is), the run's checkpoints
    in ``checkpoints/``. None for any other folder."""
    checkpoints = path / CHECKPOINTS_DIR
    resumable = checkpoints.is_dir() and any(checkpoint_step(p) is not None for p in checkpoints.iterdir())
    resume = f"`dreambooth train ... --output {spec} --resume latest`"
    previous = path / PREVIOUS_OUTPUT_DIR
    if previous.is_dir() and any(previous.iterdir()):
        use = f"--lora {previous}" if is_lora_output(previous) else f"--model {previous}"     # what it is, kept
        return (f"{flag} {spec}: holds an unfinished training run, and the model it was replacing is kept in "
                f"{previous}: use {use}" + (f", or finish the run with {resume}" if resumable else ""))
    if resumable:
        return f"{flag} {spec}: holds an unfinished training run (checkpoints, no model yet); finish it with {resume}"
    return None


def _local_or_hub(spec: str, flag: str) -> Path:
    """A hub id's snapshot; 'runs/nope', not cached, whose first folder lies here, is a path that is
    not there (a download hint would mislead)."""
    try:
        return hub_snapshot(spec, flag)
    except UserError:
        first = Path(spec).expanduser().parts[0]
        if Path(first).is_dir():
            raise UserError(f"{flag} {spec}: no such folder or file (there is a folder {first} here, and no "
                            "hub model of that name in the cache)") from None
        raise


def resolve_folder_or_hub(spec: str, flag: str, need: str = "config.json") -> Path:
    """A component folder (a VAE, an evaluation model): a local folder holding ``need``, or a hub id."""
    path = Path(str(spec)).expanduser()
    if path.is_dir():
        if not (path / need).exists():
            raise UserError(f"{flag} {spec}: folder has no {need} (save the model with save_pretrained)")
        return path
    if is_hub_id(str(spec)):
        snapshot = _local_or_hub(str(spec), flag)
        if not (snapshot / need).exists():
            raise UserError(f"{flag} {spec}: the cached copy has no {need}; run `hf download {spec}` again")
        return snapshot
    raise UserError(f"{flag} {spec}: no such folder, and not a hub id (org/name)")


# ----- LoRA training outputs -------------------------------------------------------------------

def is_lora_output(path: str | Path) -> bool:
    """A ``dreambooth train`` LoRA output folder: LoRA weights and training args, no pipeline."""
    path = Path(path).expanduser()
    return (path.is_dir() and not (path / "model_index.json").exists()
            and (path / LORA_WEIGHTS_FILE).exists() and (path / TRAINING_ARGS_FILE).exists())


def checkpoint_method(path: str | Path) -> str | None:
    """The ``--method`` ("lora", "full") of the run whose training checkpoint (``checkpoints/checkpoint-N``)
    ``path`` is; None for anything else ("?" where its settings.json cannot be read)."""
    path = Path(path).expanduser()
    if checkpoint_step(path) is None or not (path / CHECKPOINT_WEIGHTS).is_file():
        return None
    try:
        method = json.loads((path / "settings.json").read_text()).get("method")
    except (OSError, ValueError, AttributeError):
        return "?"
    return method if isinstance(method, str) else "?"


def training_args(folder: str | Path, flag: str = "--model") -> dict:
    folder = Path(folder).expanduser()
    try:
        args = json.loads((folder / TRAINING_ARGS_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{flag} {folder}: unreadable {TRAINING_ARGS_FILE} ({type(exc).__name__})") from None
    if not isinstance(args, dict):
        raise UserError(f"{flag} {folder}: {TRAINING_ARGS_FILE} is not a JSON object")
    return args


def lora_output_base(folder: str | Path, flag: str = "--model") -> tuple[str, str | None, str | None]:
    """(base model spec, VAE spec or None, model config or None) a LoRA training output was trained on;
    a base that is not here is one line naming the output and what to do."""
    folder = Path(folder).expanduser()
    args = training_args(folder, flag)
    base = args.get("model")
    if not base:
        raise UserError(f"{flag} {folder}: {TRAINING_ARGS_FILE} names no base \"model\"; "
                        f"pass --model BASE --lora {folder}")
    base = str(base)
    if not Path(base).expanduser().exists() and (folder / base).exists():
        base = str(folder / base)        # a path written relative to the output folder
    if not is_hub_id(base) and base != "toy" and not Path(base).expanduser().exists():
        # (older outputs recorded a relative path as it was typed; a hub id says what to download where it loads)
        raise UserError(f"{flag} {folder}: the base model its {TRAINING_ARGS_FILE} names, {base!r}, is not found "
                        f"here; pass --model BASE --lora {folder}")
    return base, args.get("vae"), args.get("model_config")


def trained_clip_skip(model: str | Path) -> int | None:
    """The clip skip a ``dreambooth train`` output (full or LoRA) was trained at, from its
    ``training_args.json`` (1 before the setting existed); None for any other model, or an unreadable record."""
    try:
        value = training_args(model).get("clip_skip", 1)
    except UserError:
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else None
