"""Errors in the UI: one line, shown as the message of gradio's error toast, in the UI's own words.

The library's messages name the CLI's flags (``--width``) and the API's fields (``overrides.max_steps``);
:func:`in_ui_words` turns those into the labels a user sees on the page. Gradio renders the message
as HTML, so a prompt's ``<lora:name>`` would vanish unless escaped."""
from __future__ import annotations

import html
import re

import gradio as gr

from ..training.config import TrainConfig

# The CLI's flags and the API's fields, as the UI labels the control that sets them.
LABELS = {
    "--prompt": "Prompt", "--negative-prompt": "Negative prompt", "--sampler": "Sampling method",
    "--schedule": "Schedule type", "--steps": "Sampling steps", "--cfg": "CFG Scale", "--width": "Width",
    "--height": "Height", "--batch-count": "Batch count", "--batch-size": "Batch size", "--seed": "Seed",
    "--clip-skip": "Clip skip", "--x": "X axis", "--y": "Y axis", "--z": "Z axis", "--prompt-matrix": "Prompt matrix",
    "--model": "Stable Diffusion checkpoint", "--init-image": "Image", "--mask": "Inpainting mask",
    "--strength": "Denoising strength", "--mask-blur": "Mask blur", "--masked-padding": "Only masked padding",
    "--masked-content": "Masked content", "--only-masked": "Inpaint area", "--invert-mask": "Mask mode",
    "--resize-mode": "Resize mode", "--hires": "Hires. fix", "--hires-upscaler": "Upscaler",
    "--hires-steps": "Hires steps", "--hires-scale": "Upscale by", "--hires-width": "Resize width to",
    "--hires-height": "Resize height to",
    # the Train tab (submit_job's fields; the advanced settings are labelled by their names, spaced)
    "overrides.max_steps": "Steps (max_steps)", "overrides.method": "Method", "instance_prompt": "Instance prompt",
    "class_prompt": "Class prompt", "name": "Name of the trained model", "photos": "Photos of the subject",
    "preset": "Preset",
}
# Directions that point at the API, where the page has its own way.
PHRASES = {
    "this server's are listed by GET /sdapi/v1/loras and in the web UI (refresh them after adding a file to its "
    "--loras-dir)": "the LoRA list above shows this server's (press Refresh after adding a file)",
    "GET /sdapi/v1/sd-vae lists them": "the SD VAE list shows them",
}
# The CLI's flags, the API's ``overrides.<setting>``, a training setting named bare ("batch_size (of the toy
# settings)"), and the request's own fields; one pass, so a label that names its setting (``Steps
# (max_steps)``) is not translated again.
_SETTINGS = sorted((f.name for f in TrainConfig.fields() if "_" in f.name), key=len, reverse=True)
WORDS = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*|\boverrides\.([a-z_]+)"
                   r"|(?<![\w.-])(" + "|".join(_SETTINGS) + r")(?:\[\d+\])?(?![\w.])"
                   # a bare English word (name, photos, preset) only where an API field starts the message:
                   # "photos[2] a.png: ..." (the file's name says which), not "no LoRA of that name"
                   r"|^(name|photos|preset)(?:\[\d+\])?(?![\w.])")
EXCEPTION_NAME = re.compile(r" \([A-Z]\w*(?:Error|Exception)\)")     # "(UnidentifiedImageError)": Python's, not ours


def in_ui_words(message: str) -> str:
    """A library or API message with the page's labels for flags and fields, wherever they stand."""
    for phrase, ours in PHRASES.items():
        message = message.replace(phrase, ours)

    def label(match: re.Match) -> str:
        flag, setting, bare, field = match.group(0), match.group(1), match.group(2), match.group(3)
        if flag.startswith("--"):
            return LABELS.get(flag, flag)
        name = setting or bare or field
        return LABELS.get(name) or LABELS.get(f"overrides.{name}") or name.replace("_", " ")
    return EXCEPTION_NAME.sub("", WORDS.sub(label, message))


def ui_error(message: str) -> gr.Error:
    line = str(message).splitlines()[0] if str(message) else "error"
    return gr.Error(html.escape(in_ui_words(line)), print_exception=False)
