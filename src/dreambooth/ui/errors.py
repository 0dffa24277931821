"""Errors in the UI: one line, shown as the message of gradio's error toast, in the UI's own words.

The library's messages name the CLI's flags (``--width``) and the API's fields (``overrides.max_steps``);
:func:`in_ui_words` turns those into the labels a user sees on the page. Gradio renders the message
as HTML, so a prompt's ``<lora:name>`` would vanish unless escaped."""
from __future__ import annotations

import html
import re

import gradio as gr

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
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*|\boverrides\.([a-z_]+)")
# (an API field starts the message; "photos[2] a.png": the file's name says which)
FIELD = re.compile(r"^(instance_prompt|class_prompt|name|photos|preset)(?:\[\d+\])?(?![\w.])")
EXCEPTION_NAME = re.compile(r" \([A-Z]\w*(?:Error|Exception)\)")     # "(UnidentifiedImageError)": Python's, not ours


def in_ui_words(message: str) -> str:
    """A library or API message with the page's labels for flags and fields."""
    for phrase, ours in PHRASES.items():
        message = message.replace(phrase, ours)

    def label(match: re.Match) -> str:
        if match.group(0) in LABELS:
            return LABELS[match.group(0)]
        return match.group(1).replace("_", " ") if match.group(1) else match.group(0)
    message = FLAG.sub(label, message)
    message = FIELD.sub(lambda m: LABELS[m.group(1)], message)
    return EXCEPTION_NAME.sub("", message)


def ui_error(message: str) -> gr.Error:
    line = str(message).splitlines()[0] if str(message) else "error"
    return gr.Error(html.escape(in_ui_words(line)), print_exception=False)
