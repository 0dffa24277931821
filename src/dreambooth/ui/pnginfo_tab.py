"""The PNG Info tab: any PNG's parameters (ours or A1111's), and a button that sends them to txt2img."""
from __future__ import annotations

import gradio as gr

from .errors import ui_error

from ..generation.infotext import parse_generation_parameters
from ..errors import UserError
from ..generation.params import GenerationParams
from ..generation.samplers import resolve
from .generate_tab import Controls


def infotext_of(image) -> str:
    if image is None:
        return ""
    text = image.info.get("parameters") if hasattr(image, "info") else None
    return text or "(no generation parameters in this image)"


def tab(txt2img: Controls, tabs: gr.Tabs):
    with gr.Row():
        image = gr.Image(label="Drop a PNG here", type="pil", image_mode=None, elem_id="pnginfo_image")
        with gr.Column():
            text = gr.Textbox(label="Parameters", lines=8, interactive=False, elem_id="pnginfo_text")
            send = gr.Button("Send to txt2img", variant="primary", elem_id="pnginfo_send")
    image.change(infotext_of, image, text)

    def to_txt2img(infotext: str):
        info = parse_generation_parameters(infotext or "")
        try:
            p = GenerationParams.from_infotext(info)              # (a malformed number or size: one line)
            row, schedule = resolve(p.sampler, p.schedule)     # "DPM++ 2M Karras" is DPM++ 2M, Karras
        except UserError as exc:
            raise ui_error(str(exc)) from None
        return (p.prompt, p.negative_prompt, row.name, schedule, p.steps, p.cfg_scale, p.width or 512,
                p.height or 512, p.seed, p.clip_skip, gr.Tabs(selected="txt2img"))
    c = txt2img
    send.click(to_txt2img, text, [c.prompt, c.negative, c.sampler, c.schedule, c.steps, c.cfg, c.width, c.height,
                                  c.seed, c.clip_skip, tabs])
