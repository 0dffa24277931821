"""Resumable checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint folder holds the trainable weights only (the LoRA adapters, or the fine-tuned UNet and
text encoders), the optimizer and LR-schedule state, the step, and every random stream (noise and
timesteps, data order and crops, the global torch/numpy/python RNGs). It is written to a hidden
temporary folder and renamed into place, so a kill at any moment leaves either the previous
checkpoint or the new one, never half of one.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import UserError
from ..outputs import CHECKPOINTS_DIR, as_user_file, checkpoint_name, checkpoint_step

# Settings a checkpoint's weights depend on: resuming with others would load the wrong tensors.
SHAPE_SETTINGS = ("model", "method", "rank", "train_text_encoder")


def checkpoint_dir(output: Path) -> Path:
    return output / CHECKPOINTS_DIR


def list_checkpoints(output: Path) -> list[Path]:
    root = checkpoint_dir(output)
    if not root.is_dir():
        return []
    found = [(step, p) for p in root.iterdir()
             if (step := checkpoint_step(p)) is not None and (p / "state.pt").exists()]
    return [p for _, p in sorted(found)]


def find_checkpoint(resume: str, output: Path) -> Path:
    if resume == "latest":
        found = list_checkpoints(output)
        if not found:
            raise UserError(f"--resume latest: no checkpoint in {checkpoint_dir(output)}")
        return found[-1]
    path = Path(resume).expanduser()
    if not (path / "state.pt").exists():
        raise UserError(f"--resume {resume}: not a checkpoint folder (no state.pt); use a checkpoints/checkpoint-N folder or 'latest'")
    return path


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(models: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    return {f"{name}.{key}": p.detach().to("cpu").contiguous()
            for name, model in models.items() for key, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(output: Path, step: int, models: dict[str, torch.nn.Module], optimizer, state: dict,
                    settings: dict, keep: int) -> Path:
    root = checkpoint_dir(output)
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = root / f".tmp-{checkpoint_name(step)}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(trainable_state(models), str(tmp / "trainable.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save({**state, "step": step, "rng": rng_state()}, tmp / "state.pt")
    (tmp / "settings.json").write_text(json.dumps(settings, indent=2, default=str))
    as_user_file(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    if keep > 0:
        for old in list_checkpoints(output)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, models: dict[str, torch.nn.Module], optimizer, settings: dict) -> dict:
    saved = json.loads((path / "settings.json").read_text())
    for key in SHAPE_SETTINGS:
        if str(saved.get(key)) != str(settings.get(key)):
            raise UserError(f"--resume {path}: checkpoint was made with {key}={saved.get(key)}, "
                            f"this run has {key}={settings.get(key)}; use the same setting to resume")
    tensors = load_file(str(path / "trainable.safetensors"))
    for name, model in models.items():
        params = dict(model.named_parameters())
        for key, value in tensors.items():
            comp, _, pname = key.partition(".")
            if comp == name:
                if pname not in params:
                    raise UserError(f"--resume {path}: weight {key} does not exist in this model")
                with torch.no_grad():
                    params[pname].copy_(value.to(params[pname].device, params[pname].dtype))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False))
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    set_rng_state(state["rng"])
    return state
