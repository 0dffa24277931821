"""The PNG Info tab: any PNG's parameters (ours or A1111's), and a button that sends them to txt2img."""
from __future__ import annotations

import html

import gradio as gr

from .errors import in_ui_words, ui_error

from ..generation.infotext import parse_generation_parameters, read_infotext
from ..errors import UserError
from ..generation.params import GenerationParams
from ..generation.samplers import resolve
from ..generation.xyz_infotext import plot_from_infotext
from .generate_tab import Controls


NONE = "(no generation parameters in this image)"


def infotext_of(path) -> tuple[str, str | None, None]:
    """(the parameters, the image to show, an empty drop zone for the next file) of an uploaded file: a
    PNG's chunk, or the EXIF comment the WebUI writes into JPEG and WebP. Read here, not by gradio, so
    a file that is not an image is one line."""
    if not path:
        return "", None, None
    try:
        return read_infotext(path, "Image") or NONE, path, None
    except UserError as exc:               # a warning, so the drop zone is emptied for the next file
        gr.Warning(html.escape(in_ui_words(str(exc).replace(f" {path}", ""))))    # (the upload's temporary name)
        return "", None, None


def tab(txt2img: Controls, tabs: gr.Tabs, hires: dict | None = None):
    """``hires``: txt2img's Hires. fix controls, which a hires image's infotext sets too."""
    hires_controls = [hires[k] for k in HIRES_CONTROLS] if hires else []
    with gr.Row():
        with gr.Column():
            upload = gr.File(label="Drop a PNG (or an A1111 JPEG / WebP) here", file_types=["image"],
                             elem_id="pnginfo_image")
            image = gr.Image(label="Image", interactive=False, elem_id="pnginfo_shown")
        with gr.Column():
            text = gr.Textbox(label="Parameters", lines=8, interactive=False, elem_id="pnginfo_text")
            send = gr.Button("Send to txt2img", variant="primary", elem_id="pnginfo_send")
    upload.upload(infotext_of, upload, [text, image, upload])

    def to_txt2img(infotext: str):
        if not infotext or infotext == NONE:       # nothing to send: the txt2img settings stay as they are
            raise ui_error("PNG Info: no generation parameters to send; drop an image made by this studio or A1111")
        return (*pasted(infotext), *(pasted_hires(infotext) if hires_controls else ()), gr.Tabs(selected="txt2img"))
    send.click(to_txt2img, text, [*pasted_into(txt2img), *hires_controls, tabs])


def pasted(infotext: str) -> tuple:
    """An infotext's settings as the values of :func:`pasted_into`'s controls (the WebUI's paste): as
    A1111 pastes them, the image's own seed with its batch's size (ours ``Batch: 2/4``, A1111's ``Batch
    size: 4``), and an X/Y/Z plot's script and axes (another image's turn the script off)."""
    try:
        info = parse_generation_parameters(infotext)
        p = GenerationParams.from_infotext(info)      # (a malformed one: one line)
        row, schedule = resolve(p.sampler, p.schedule)     # "DPM++ 2M Karras" is DPM++ 2M, Karras
        batch_size = int(info.get("Batch size") or str(info.get("Batch", "1/1")).partition("/")[2] or 1)
    except UserError as exc:
        raise ui_error(str(exc)) from None
    except ValueError:
        raise ui_error(f"infotext: Batch: {info.get('Batch size') or info.get('Batch')!r} is not a number") from None
    # from_infotext replays a batch from its first seed (keep: the image's place in it); the page
    # pastes the image's own seed, as A1111 does
    seed = p.seed + p.keep if p.keep else p.seed
    plot = plot_from_infotext(info)
    axes = [plot.get(letter, "") for letter in "xyz"]
    return (p.prompt, p.negative_prompt, row.name, schedule, p.steps, p.cfg_scale, p.width or 512, p.height or 512,
            seed, p.clip_skip, batch_size, "X/Y/Z plot" if plot else "None", *axes)


HIRES_CONTROLS = ("hires", "hires_upscaler", "hires_steps", "hires_strength", "hires_scale", "hires_width", "hires_height")


def pasted_hires(infotext: str) -> tuple:
    """The Hires. fix controls' values (``HIRES_CONTROLS``) from an infotext: set by a hires image's,
    switched off by another's."""
    p = GenerationParams.from_infotext(parse_generation_parameters(infotext))
    if not p.hires:
        return (False, *[gr.update()] * (len(HIRES_CONTROLS) - 1))
    return True, p.hires_upscaler, p.hires_steps, p.strength, p.hires_scale, p.hires_width, p.hires_height


def pasted_into(c: Controls) -> list:
    return [c.prompt, c.negative, c.sampler, c.schedule, c.steps, c.cfg, c.width, c.height, c.seed, c.clip_skip,
            c.batch_size, c.script, c.x, c.y, c.z]
