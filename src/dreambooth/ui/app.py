"""The web UI: txt2img, img2img, Train, Evaluate and PNG Info tabs under the checkpoint, VAE and LoRA
dropdowns, as in the AUTOMATIC1111 WebUI. It is gradio mounted at ``/`` on the server's FastAPI app
(``mount_ui``), and every tab calls the server's engine and job queue, so an image made here equals
one made through the API or the CLI.

Conventions: dark and light themes follow the browser (gradio's own); Ctrl+Enter generates; the
last prompt and settings survive a reload (the browser's local storage); errors are one line; with
``--api-auth`` the browser asks for the login (HTTP Basic, the server's check on every route)."""
from __future__ import annotations

import os
import threading
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")     # nothing leaves the machine

import gradio as gr  # noqa: E402

from ..errors import UserError  # noqa: E402
from ..models.specs import trained_clip_skip  # noqa: E402
from . import evaluate_tab, generate_tab, pnginfo_tab, train_tab  # noqa: E402
from .errors import ui_error  # noqa: E402
from .numbers import fitted, keep_in_range, storable_seed  # noqa: E402
from .pnginfo_tab import HIRES_CONTROLS, pasted, pasted_into  # noqa: E402

# Ctrl+Enter (Cmd+Enter) clicks the Generate button of the tab on screen, as in A1111.
CTRL_ENTER = """
() => {
  document.addEventListener('keydown', (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key === 'Enter') {
      for (const id of ['txt2img_generate', 'img2img_generate']) {
        const button = document.getElementById(id);
        if (button && button.offsetParent !== null) { e.preventDefault(); button.click(); return; }
      }
    }
  });
}
"""
REMEMBERED = ("prompt", "negative", "sampler", "schedule", "steps", "cfg", "width", "height", "batch_count",
              "batch_size", "seed", "clip_skip", "script", "x", "y", "z", *HIRES_CONTROLS)


def build(app) -> gr.Blocks:
    engine, store, runner, catalog = app.state.engine, app.state.store, app.state.runner, app.state.catalog
    data_dir = Path(store.root).parent
    with gr.Blocks(title="dreambooth") as ui:
        saved = gr.BrowserState({}, storage_key="dreambooth-ui")
        with gr.Row(elem_id="models_row"):
            checkpoint = gr.Dropdown([m.title for m in catalog.models()], value=engine.entry.title,
                                     label="Stable Diffusion checkpoint", elem_id="checkpoint", scale=3)
            vae = gr.Dropdown(["Automatic", *[v.name for v in catalog.vaes()]], value="Automatic", label="SD VAE",
                              elem_id="vae", scale=2)
            lora = gr.Dropdown(list(catalog.loras()), value=None, label="Add a LoRA to the prompt", elem_id="lora",
                               scale=2)
            refresh = gr.Button("Refresh", size="sm", elem_id="refresh", scale=0)
        switching = gr.Markdown("", elem_id="switching")
        with gr.Tabs() as tabs:
            with gr.Tab("txt2img", id="txt2img"):
                t2i, gallery, info, t2i_extras, send = generate_tab.tab(engine, data_dir / "outputs", "txt2img")
            with gr.Tab("img2img", id="img2img"):
                i2i, _, _, extras, _ = generate_tab.tab(engine, data_dir / "outputs", "img2img")
            with gr.Tab("Train", id="train"):
                train_job, train_form = train_tab.tab(engine, store, runner, catalog, checkpoint)
            with gr.Tab("Evaluate", id="evaluate") as evaluate:
                evaluate_lists, evaluate_dropdowns = evaluate_tab.tab(engine, store, data_dir)
            with gr.Tab("PNG Info", id="pnginfo"):
                pnginfo_tab.tab(t2i, tabs, t2i_extras)

        sizes = [t2i.width, t2i.height, i2i.width, i2i.height]
        loading = [0]                                  # switches under way (the timer leaves the picker alone)
        lock = threading.Lock()

        def loading_lines(title, vae_name):
            """Load the model ``title`` with ``vae_name``, yielding what the page says meanwhile: after
            a generation under way (another tab's too), which finishes first. (No gradio progress: it
            would show "0.0%" of a wait whose length is not known.)"""
            with lock:
                loading[0] += 1
            try:
                entry = catalog.find_model(title)
                chosen = catalog.find_vae(vae_name)
                yield (f"waiting for the generation under way to finish, then loading {title}" if engine.state.job
                       else f"loading {title}...")
                with engine.gate.request():
                    engine.load(entry, chosen)
            except UserError as exc:
                error = ui_error(str(exc))
                yield f"**error**: {error.message}"
                raise error from None
            finally:
                with lock:
                    loading[0] -= 1

        def switch(title, vae_name):
            yield from loading_lines(title, vae_name)
            yield f"loaded **{engine.entry.title}**"

        def switch_model(title, vae_name):
            """To a training output, the Clip skip sliders move to what it was trained at (the CLI's
            default too); another model leaves them as they are, as the WebUI's setting stays. To a model
            made for another size (the toy's 32 px, SD's 512), Width and Height follow it."""
            before = engine.pipeline.default_size[0]
            for line in loading_lines(title, vae_name):
                yield line, *[gr.update() for _ in range(2 + len(sizes))]
            loaded = f"loaded **{engine.entry.title}**"
            size = engine.pipeline.default_size[0]
            # one update each: gradio consumes the update it is given, so a repeated one sets the first alone
            resized = [gr.update(value=size) if size != before else gr.update() for _ in sizes]
            skip = trained_clip_skip(engine.entry.spec)
            if skip is None:
                yield loaded, gr.update(), gr.update(), *resized
            else:
                yield f"{loaded} (trained at Clip skip {skip})", gr.update(value=skip), gr.update(value=skip), *resized
        checkpoint.input(switch_model, [checkpoint, vae], [switching, t2i.clip_skip, i2i.clip_skip, *sizes],
                         show_progress="hidden")
        vae.input(switch, [checkpoint, vae], switching, show_progress="hidden")

        def pickers(scan: bool = False):
            """The model, VAE and LoRA lists as the server has them (``scan``: look at the folders again,
            the Refresh button), showing the model loaded now."""
            if scan:
                catalog.refresh()
                engine.refresh_loras()
            vae_name = engine.vae.name if engine.vae else "Automatic"
            return (gr.Dropdown(choices=[m.title for m in catalog.models()], value=engine.entry.title),
                    gr.Dropdown(choices=["Automatic", *[v.name for v in catalog.vaes()]], value=vae_name),
                    gr.Dropdown(choices=list(catalog.loras()), value=None))
        refresh.click(lambda: pickers(scan=True), outputs=[checkpoint, vae, lora])
        ui.load(pickers, outputs=[checkpoint, vae, lora])        # a reload or a second tab: the server's state

        def tick():
            """A finished job's model appears without a click; a model another tab (or the API) loaded
            shows here, so the picker never names one that generation does not use."""
            models = [m.title for m in catalog.models()]
            with lock:
                shown = {} if loading[0] else {"value": engine.entry.title}
            return gr.Dropdown(choices=models, **shown), gr.Dropdown(choices=list(catalog.loras()))
        timer = gr.Timer(5.0)
        timer.tick(tick, outputs=[checkpoint, lora])
        lora.input(lambda name, prompt: (f"{prompt} <lora:{name}:1>".strip(), None), [lora, t2i.prompt], [t2i.prompt, lora])

        def to_img2img(items, index):
            """The selected image (the grid too, as A1111), else the first shown, whose settings the info shows."""
            if not items:
                raise ui_error("Output: generate an image first")
            from PIL import Image
            image = Image.open(items[int(index) if index is not None and int(index) < len(items) else 0][0])
            return {"background": image, "layers": [], "composite": image}, gr.Tabs(selected="img2img")
        send.click(to_img2img, [gallery, t2i_extras["chosen"]], [extras["init"], tabs])
        # as the WebUI: the selected image's settings too, from its infotext
        send.click(lambda text: pasted(text) if text else [gr.update()] * len(pasted_into(i2i)), info, pasted_into(i2i))

        for extra in (t2i_extras, extras):         # a run under way (another tab's, the API's) shown in each tab
            ui.load(generate_tab.others_shown(engine), outputs=extra["progress"], concurrency_limit=None,
                    show_progress="hidden")

        evaluate.select(evaluate_lists, outputs=evaluate_dropdowns)      # models and jobs finished since
        ui.load(lambda: evaluate_lists(loaded=True), outputs=evaluate_dropdowns)
        ui.load(train_tab.latest_job(store), outputs=train_job)          # a running job, after a reload too
        ui.load(**train_form)               # the Train form shows what the loaded model's job would train with

        # the last prompt and settings survive a reload; the size only under a model of the same size
        fields = [t2i_extras[name] if name in t2i_extras else getattr(t2i, name) for name in REMEMBERED]
        ui.load(lambda data: restored(data, engine.pipeline.default_size[0]), saved, [*fields, i2i.width, i2i.height])

        def remember(data, *values):
            """Raw values (``preprocess=False``: gradio's range check would print a traceback in the log),
            kept as the sliders will hold them (``keep_in_range`` sets them and says so)."""
            values = dict(zip(REMEMBERED, [fitted(c, v)[0] if isinstance(c, gr.Slider) else v
                                           for c, v in zip(fields, values)]))
            if not storable_seed(values["seed"]):          # refused by Generate, in one line; never saved
                del values["seed"]
            return {**(data or {}), **values, "model_size": engine.pipeline.default_size[0]}
        for component in fields:
            component.change(remember, [saved, *fields], saved, preprocess=False)
        sliders = [*vars(t2i).values(), *vars(i2i).values(), *t2i_extras.values(), *extras.values()]
        keep_in_range([c for c in sliders if isinstance(c, gr.Slider)])
    return ui


def restored(data: dict | None, size: int) -> list:
    """The remembered settings (``REMEMBERED``, then img2img's width and height) as updates. Width and
    Height come back only if they were chosen under a model of the loaded one's own size; else they
    are that size (a 512 px image of the 32 px toy is slow noise)."""
    data = dict(data or {})
    if not storable_seed(data.get("seed")):          # (saved before such seeds were kept out)
        del data["seed"]
    if data.get("model_size") != size:
        data.update(width=size, height=size)
    return [*[gr.update(value=data[k]) if k in data else gr.update() for k in REMEMBERED],
            gr.update(value=size), gr.update(value=size)]


# the token counters sit small at the right under their prompt boxes, where they take no row of their own
TOKEN_COUNTER_CSS = ".token-counter { text-align: right; font-size: 0.8em; opacity: 0.7; margin-top: -0.5em; }"


def mount_ui(app, path: str = "/") -> None:
    """Mount the web UI on the server's app (after its API routes, which keep precedence)."""
    ui = build(app)
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])        # no font downloads
    data_dir = Path(app.state.store.root).parent
    gr.mount_gradio_app(app, ui, path=path, theme=theme, js=CTRL_ENTER, ssr_mode=False, footer_links=["api"],
                        allowed_paths=[str(data_dir)], show_error=True, css=TOKEN_COUNTER_CSS)
