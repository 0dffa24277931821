"""The flags users type out of habit from other tools, with what we call them: for ``dreambooth train``
diffusers' DreamBooth scripts' and kohya's sd-scripts' (the mapping is ``training.peer_names``, shared
with ``--config`` files; docs/training.md has the tables), for ``dreambooth generate`` A1111's and
diffusers'. Where one is not ours, an unknown-option error names ours instead of a near spelling."""
from __future__ import annotations

import dataclasses

import click

from ..training.config import TrainConfig, flag
from ..training.peer_names import PEER_NAMES as PEER_FLAGS

__all__ = ["GENERATE_PEER_FLAGS", "PEER_FLAGS", "flag_hint", "peer_hint", "peer_name"]


def peer_name(name: str) -> str | None:
    """What ``dreambooth train`` calls a peer's setting (``--rank`` for ``network_dim``); our own
    setting typed with underscores (``--offset_noise``) is named as our flag. None: not known."""
    key = name.lstrip("-").replace("-", "_")
    if key in PEER_FLAGS:
        return PEER_FLAGS[key]
    return flag(key) if key in {f.name for f in dataclasses.fields(TrainConfig)} else None


def peer_hint(option: str) -> str | None:
    """``"; dreambooth train calls it --rank"`` for kohya's ``--network_dim`` (or ``--network-dim``)."""
    ours = peer_name(option)
    return f"; dreambooth train calls it {ours}" if ours else None


# What A1111 (its API fields, launch scripts), the original SD scripts and diffusers call our flags:
# an unknown option named so gets ours, not click's nearest spelling (--n-iter is not --init-image).
GENERATE_PEER_FLAGS = {
    "n_iter": "--batch-count", "n_samples": "--batch-size", "num_images_per_prompt": "--batch-size",
    "cfg_scale": "--cfg", "guidance_scale": "--cfg", "scale": "--cfg",
    "sampler_name": "--sampler", "sampler_index": "--sampler", "scheduler": "--schedule",
    "num_inference_steps": "--steps", "ddim_steps": "--steps", "denoising_strength": "--strength",
    "h": "--height", "w": "--width", "outdir": "--output", "output_dir": "--output",
    "init_img": "--init-image", "init_images": "--init-image", "image": "--init-image", "mask_image": "--mask",
    "inpainting_fill": "--masked-content", "inpaint_full_res": "--only-masked",
    "inpaint_full_res_padding": "--masked-padding", "inpainting_mask_invert": "--invert-mask",
    "enable_hr": "--hires", "hr_scale": "--hires-scale", "hr_upscaler": "--hires-upscaler",
    "hr_second_pass_steps": "--hires-steps", "hr_resize_x": "--hires-width", "hr_resize_y": "--hires-height",
    "ckpt": "--model", "sd_model_checkpoint": "--model", "pretrained_model_name_or_path": "--model",
    "sd_vae": "--vae", "clip_stop_at_last_layers": "--clip-skip",
}


def flag_hint(command: click.Command, option: str) -> str | None:
    """``"; dreambooth generate calls it --batch-count"`` for an unknown option another tool has (A1111's
    ``--n_iter`` or ``--n-iter``); one of the command's own flags typed with underscores is named too."""
    if command.name == "train":
        return peer_hint(option)
    if command.name != "generate":
        return None
    key = option.lstrip("-").replace("-", "_").lower()
    ours = GENERATE_PEER_FLAGS.get(key) or next((o for p in command.params for o in p.opts
                                                 if o.startswith("--") and o[2:].replace("-", "_") == key), None)
    return f"; dreambooth generate calls it {ours}" if ours else None
