"""The txt2img and img2img tabs: the WebUI's controls, on the server's engine (the API's own path).

A request runs in a thread while the tab streams its own progress, ETA and live preview; the tab's
Interrupt and Skip act on its own request (``running``). Images are saved with their infotext under
the data folder as the API saves them (several: a grid too), so the gallery's downloads carry it."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from .errors import ui_error
from .numbers import seed_of
from .running import Request, others_run, run

from ..errors import UserError
from ..generation.grammar import extract_loras
from ..generation.hires import HIRES_UPSCALERS, MAX_HIRES_SCALE
from ..generation.masks import MASKED_CONTENT, MAX_MASK_BLUR, MAX_MASKED_PADDING, as_mask
from ..generation.params import RANGES, GenerationParams
from ..generation.resizing import RESIZE_MODES
from ..generation.samplers import SAMPLERS, SCHEDULES
from ..generation.token_counter import counter_text
from ..generation.xyz import AXES
from ..server.engine import Engine

SCRIPTS = ("None", "Prompt matrix", "X/Y/Z plot")
# Each browser tab's requests, by gradio's session (one per page): its Interrupt and Skip, in txt2img or
# img2img, act on these alone.
REQUESTS: dict[str, set[Request]] = {}
_requests_lock = threading.Lock()


@dataclass
class Controls:
    prompt: gr.Textbox
    negative: gr.Textbox
    sampler: gr.Dropdown
    schedule: gr.Dropdown
    steps: gr.Slider
    cfg: gr.Slider
    width: gr.Slider
    height: gr.Slider
    batch_count: gr.Slider
    batch_size: gr.Slider
    seed: gr.Number
    script: gr.Dropdown
    x: gr.Textbox
    y: gr.Textbox
    z: gr.Textbox
    clip_skip: gr.Slider

    def inputs(self) -> list:
        return [self.prompt, self.negative, self.sampler, self.schedule, self.steps, self.cfg, self.width,
                self.height, self.batch_count, self.batch_size, self.seed, self.script, self.x, self.y, self.z,
                self.clip_skip]


def controls(prefix: str, size: int = 512, below_prompts=None) -> Controls:
    """``size``: the loaded model's own (the page sets it again on load); ``below_prompts``: makes what
    comes between the prompts and the settings (img2img's image, as the WebUI places it)."""
    prompt = gr.Textbox(label="Prompt", lines=3, elem_id=f"{prefix}_prompt",
                        placeholder="a photo of sks dog in the snow, (oil painting:1.2), <lora:name:0.8>")
    prompt_tokens = gr.Markdown("0/75", elem_id=f"{prefix}_token_counter", elem_classes="token-counter")
    negative = gr.Textbox(label="Negative prompt", lines=2, elem_id=f"{prefix}_negative")
    negative_tokens = gr.Markdown("0/75", elem_id=f"{prefix}_negative_token_counter", elem_classes="token-counter")
    if below_prompts is not None:
        below_prompts()
    with gr.Row():
        sampler = gr.Dropdown([s.name for s in SAMPLERS], value="Euler a", label="Sampling method", elem_id=f"{prefix}_sampler")
        schedule = gr.Dropdown(list(SCHEDULES), value="Automatic", label="Schedule type", elem_id=f"{prefix}_schedule")
        steps = gr.Slider(1, 150, value=20, step=1, label="Sampling steps", elem_id=f"{prefix}_steps")
    with gr.Row():
        width = gr.Slider(8, 2048, value=size, step=8, label="Width", elem_id=f"{prefix}_width")
        height = gr.Slider(8, 2048, value=size, step=8, label="Height", elem_id=f"{prefix}_height")
    with gr.Row():
        batch_count = gr.Slider(1, 100, value=1, step=1, label="Batch count", elem_id=f"{prefix}_batch_count")
        batch_size = gr.Slider(1, 8, value=1, step=1, label="Batch size", elem_id=f"{prefix}_batch_size")
        cfg = gr.Slider(0, 30, value=7, step=0.5, label="CFG Scale", elem_id=f"{prefix}_cfg")
    with gr.Row():
        seed = gr.Number(value=-1, label="Seed (-1: random)", elem_id=f"{prefix}_seed")    # as typed: numbers.seed_of
        random_seed = gr.Button("Random", size="sm", elem_id=f"{prefix}_random_seed")
        reuse_seed = gr.Button("Reuse last seed", size="sm", elem_id=f"{prefix}_reuse_seed")
        # wide enough for its range's labels ("12" was cut off at the box's edge)
        clip_skip = gr.Slider(*RANGES["clip_skip"], value=1, step=1, label="Clip skip (SD1)",
                              elem_id=f"{prefix}_clip_skip", min_width=260)
    with gr.Accordion("Script", open=False):
        script = gr.Dropdown(list(SCRIPTS), value="None", label="Script", elem_id=f"{prefix}_script")
        axes = ", ".join(a.label for a in AXES)
        x = gr.Textbox(label=f"X axis ({axes})", placeholder="Sampler: Euler a, DDIM", elem_id=f"{prefix}_x")
        y = gr.Textbox(label="Y axis", placeholder="CFG scale: 3, 7, 11", elem_id=f"{prefix}_y")
        z = gr.Textbox(label="Z axis", placeholder="Steps: 10, 20", elem_id=f"{prefix}_z")
    random_seed.click(lambda: -1, outputs=seed)
    c = Controls(prompt, negative, sampler, schedule, steps, cfg, width, height, batch_count, batch_size, seed,
                 script, x, y, z, clip_skip)
    c.reuse = reuse_seed
    c.counters = (prompt_tokens, negative_tokens)
    return c


def params_of(prompt, negative, sampler, schedule, steps, cfg, width, height, batch_count, batch_size, seed,
              init=None, mask=None, strength=0.75, clip_skip=1, mask_blur=4, area="Whole picture",
              padding=32, content="original", resize_mode="Just resize", mask_mode="Inpaint masked",
              hires=False, hires_upscaler="Latent", hires_steps=0, hires_scale=2.0, hires_width=0,
              hires_height=0) -> GenerationParams:
    return GenerationParams(prompt or "", negative or "", sampler, schedule, steps=int(steps), cfg_scale=float(cfg),
                            seed=seed_of(seed), width=int(width), height=int(height),
                            batch_size=int(batch_size), batch_count=int(batch_count), init_image=init, mask=mask,
                            strength=float(strength), clip_skip=int(clip_skip), mask_blur=int(mask_blur),
                            # the inpainting settings only where a mask is painted or given: plain img2img ignores them
                            only_masked=mask is not None and area == "Only masked", masked_padding=int(padding),
                            masked_content=content if mask is not None else "original",
                            invert_mask=mask is not None and mask_mode == "Inpaint not masked",
                            # as in the WebUI, "Only masked" keeps the init image's size whatever the resize mode
                            resize_mode=resize_mode if init is not None and not (mask is not None and area == "Only masked")
                            else "Just resize",
                            # the hires fix's settings only when it is on (and for txt2img), as in the WebUI
                            **(dict(hires=True, hires_upscaler=hires_upscaler, hires_steps=int(hires_steps),
                                    hires_scale=float(hires_scale), hires_width=int(hires_width),
                                    hires_height=int(hires_height)) if hires and init is None else {}))


def last_seed(info: str):
    from ..generation.infotext import parse_generation_parameters
    if not info:
        return -1
    try:
        return int(parse_generation_parameters(info).get("Seed", -1))
    except ValueError:
        return -1


def tab(engine: Engine, output: Path, mode: str, send_to_img2img=None):
    """The tab's components; returns (controls, gallery, info, extras) for wiring across tabs."""
    prefix = mode
    size = engine.pipeline.default_size[0]
    with gr.Row():
        with gr.Column(scale=3):
            extras = {}

            def image_inputs():           # as in the WebUI: the image first, under the prompts
                extras["init"] = gr.ImageEditor(label="Image (paint the area to repaint)", type="pil",
                                                elem_id="img2img_image")
                extras["mask"] = gr.Image(label="Inpainting mask (white or opaque = repaint; optional)", type="pil",
                                          image_mode="RGBA", elem_id="img2img_mask")
            c = controls(prefix, size, image_inputs if mode == "img2img" else None)
            if mode == "txt2img":
                with gr.Accordion("Hires. fix", open=False, elem_id="txt2img_hires_fix"):
                    extras["hires"] = gr.Checkbox(False, label="Hires. fix", elem_id="txt2img_enable_hr")
                    with gr.Row():
                        extras["hires_upscaler"] = gr.Dropdown(list(HIRES_UPSCALERS), value="Latent", label="Upscaler",
                                                               elem_id="txt2img_hr_upscaler")
                        extras["hires_steps"] = gr.Slider(0, 150, value=0, step=1, label="Hires steps",
                                                          elem_id="txt2img_hires_steps")
                        extras["hires_strength"] = gr.Slider(0.01, 1, value=0.7, step=0.01, label="Denoising strength",
                                                             elem_id="txt2img_denoising_strength")
                    with gr.Row():
                        extras["hires_scale"] = gr.Slider(1, MAX_HIRES_SCALE, value=2, step=0.05, label="Upscale by",
                                                          elem_id="txt2img_hr_scale")
                        extras["hires_width"] = gr.Slider(0, 2048, value=0, step=8, label="Resize width to",
                                                          elem_id="txt2img_hr_resize_x")
                        extras["hires_height"] = gr.Slider(0, 2048, value=0, step=8, label="Resize height to",
                                                           elem_id="txt2img_hr_resize_y")
            if mode == "img2img":
                extras["resize_mode"] = gr.Radio(list(RESIZE_MODES), value="Just resize", label="Resize mode",
                                                 elem_id="img2img_resize_mode")
                extras["strength"] = gr.Slider(0, 1, value=0.75, step=0.01, label="Denoising strength",
                                               elem_id="img2img_strength")
                with gr.Row():
                    extras["mask_blur"] = gr.Slider(0, MAX_MASK_BLUR, value=4, step=1, label="Mask blur",
                                                    elem_id="img2img_mask_blur")
                    extras["mask_mode"] = gr.Radio(["Inpaint masked", "Inpaint not masked"], value="Inpaint masked",
                                                   label="Mask mode", elem_id="img2img_mask_mode")
                    extras["content"] = gr.Radio(list(MASKED_CONTENT), value="original", label="Masked content",
                                                 elem_id="img2img_masked_content")
                    extras["area"] = gr.Radio(["Whole picture", "Only masked"], value="Whole picture",
                                              label="Inpaint area", elem_id="img2img_inpaint_area")
                    extras["padding"] = gr.Slider(0, MAX_MASKED_PADDING, value=32, step=4,
                                                  label="Only masked padding, pixels", elem_id="img2img_padding")
        with gr.Column(scale=2):
            with gr.Row():
                generate_button = gr.Button("Generate", variant="primary", elem_id=f"{prefix}_generate")
                interrupt = gr.Button("Interrupt", elem_id=f"{prefix}_interrupt")
                skip = gr.Button("Skip", elem_id=f"{prefix}_skip")
            progress_text = gr.Markdown("", elem_id=f"{prefix}_progress")
            preview = gr.Image(label="Live preview", interactive=False, height=160, elem_id=f"{prefix}_preview")
            gallery = gr.Gallery(label="Output", columns=2, height="auto", elem_id=f"{prefix}_gallery",
                                 buttons=["download"], object_fit="contain", interactive=False)   # no drop zone
            info = gr.Textbox(label="Generation info (of the selected image)", lines=4, interactive=False,
                              elem_id=f"{prefix}_info", buttons=["copy"])
            send = gr.Button("Send to img2img", elem_id=f"{prefix}_send") if mode == "txt2img" else None

    def go(session: gr.Request, *values):
        request = Request(engine)
        with _requests_lock:
            REQUESTS.setdefault(session.session_hash, set()).add(request)
        try:
            yield from generate(request, *values)
        except gr.Error as exc:        # the last run's images and info are not this one's: cleared
            yield [], None, f"**error**: {exc.message}", ""
            raise
        except GeneratorExit:
            # gradio closes the stream of a page that went (closed, reloaded): its run stops, so no one
            # waits behind images no one will see. (Not Blocks.unload: its heartbeat never lets the page idle.)
            request.stop("interrupt")
            raise
        finally:
            with _requests_lock:
                mine = REQUESTS.get(session.session_hash, set())
                mine.discard(request)
                if not mine:
                    REQUESTS.pop(session.session_hash, None)

    def stop(what: str, session: gr.Request) -> None:
        """The page's Interrupt or Skip: its own requests (one still waiting is cancelled); with none,
        whatever runs, as A1111's (a run this page started before a reload, another tab's)."""
        with _requests_lock:
            mine = list(REQUESTS.get(session.session_hash, ()))
        for request in mine:
            request.stop(what)
        if not mine:
            engine.state.ask(what)

    def generate(request: Request, *values):
        base = values[:16]
        script, x, y, z, clip_skip = base[11:16]
        init = mask = None
        extra = {}
        strength = 0.75
        if mode == "img2img":
            editor, upload_mask, strength, mask_blur, content, area, padding, resize_mode, mask_mode = values[16:25]
            extra = dict(mask_blur=mask_blur, content=content, area=area, padding=padding,
                         resize_mode=resize_mode, mask_mode=mask_mode)
            init, mask = _init_and_mask(editor, upload_mask)
            if init is None:
                raise ui_error("Image: upload an image to start from")
        else:
            hires, upscaler, hires_steps, strength, scale, to_width, to_height = values[16:23]
            extra = dict(hires=hires, hires_upscaler=upscaler, hires_steps=hires_steps, hires_scale=scale,
                         hires_width=to_width, hires_height=to_height)
        try:
            params = params_of(*base[:11], init=init, mask=mask, strength=strength, clip_skip=clip_skip, **extra)
            extract_loras(params.prompt)
        except UserError as exc:
            raise ui_error(str(exc)) from None
        # dated folders, as the API's save_images and A1111 write them
        day = time.strftime("%Y-%m-%d")
        yield from run(engine, request, params, output / f"{mode}-images" / day, output / f"{mode}-grids" / day,
                       script, x, y, z)

    img2img = ("init", "mask", "strength", "mask_blur", "content", "area", "padding", "resize_mode", "mask_mode")
    txt2img = ("hires", "hires_upscaler", "hires_steps", "hires_strength", "hires_scale", "hires_width", "hires_height")
    inputs = c.inputs() + [extras[k] for k in (img2img if mode == "img2img" else txt2img)]
    generate_button.click(go, inputs=inputs, outputs=[gallery, preview, progress_text, info], concurrency_limit=None)

    def interrupt_own(session: gr.Request) -> None:
        stop("interrupt", session)

    def skip_own(session: gr.Request) -> None:
        stop("skip", session)
    interrupt.click(interrupt_own)
    skip.click(skip_own)
    c.reuse.click(last_seed, inputs=info, outputs=c.seed)
    count_tokens(engine, c)
    extras["progress"] = progress_text

    # the image selected (its index): what Send to img2img sends; a new run's output selects none
    chosen = gr.Number(None, visible=False, elem_id=f"{prefix}_chosen")
    extras["chosen"] = chosen

    def selected(evt: gr.SelectData, items):
        caption = items[evt.index][1] if items and evt.index < len(items) else ""
        return caption or "", evt.index
    gallery.select(selected, inputs=gallery, outputs=[info, chosen])
    gallery.change(lambda: None, outputs=chosen)
    return c, gallery, info, extras, send


def count_tokens(engine: Engine, c: Controls) -> None:
    """The WebUI's token counters under the prompt boxes (``12/75``): the loaded model's tokenizer, the
    prompt as it is encoded (``token_counter``), again as the prompt or the steps change."""
    for box, counter, negative in ((c.prompt, c.counters[0], False), (c.negative, c.counters[1], True)):
        def count(text, steps, negative=negative):
            pipeline = engine.pipeline
            if pipeline is None:
                return ""
            try:
                return counter_text(pipeline.pipe.tokenizer, text, steps, negative)
            except Exception:         # a count is a hint: never an error over the page while typing
                return ""
        gr.on([box.change, c.steps.change], count, inputs=[box, c.steps], outputs=counter,
              show_progress="hidden", trigger_mode="always_last", concurrency_limit=None)


def others_shown(engine: Engine):
    """For the page's load: a generation under way that is not this page's, shown in its progress line
    (one this page started before a reload: it has stopped, or stops at once)."""
    def shown(session: gr.Request):
        yield from others_run(engine, lambda: session.session_hash in REQUESTS)
    return shown


def _init_and_mask(editor, upload_mask):
    """The init image and the mask from the editor (painted strokes) or an uploaded mask."""
    from PIL import Image
    if editor is None:
        return None, None
    background = editor.get("background") if isinstance(editor, dict) else editor
    if background is None:
        return None, None
    init = background.convert("RGB")
    mask = None
    layers = [layer for layer in (editor.get("layers") or []) if layer is not None] if isinstance(editor, dict) else []
    for layer in layers:
        alpha = layer.convert("RGBA").getchannel("A")
        if alpha.getbbox():
            mask = alpha.point(lambda v: 255 if v > 0 else 0) if mask is None else Image.composite(
                Image.new("L", alpha.size, 255), mask, alpha.point(lambda v: 255 if v > 0 else 0))
    if upload_mask is not None:
        mask = as_mask(upload_mask)           # its alpha where it has transparency, as the WebUI reads it
    return init, mask
