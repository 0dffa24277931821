"""The Train tab: photos, prompts, preset, method and steps, and an "advanced" section made from
``TrainConfig`` itself (a new training flag appears here without UI code). Start submits a job to the
server's own queue (``jobs_api.submit_job``, what ``POST /dreambooth/v1/jobs`` calls), so it survives
a restart; a timer shows its progress, ETA, loss curve and validation grids."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import gradio as gr

import pandas as pd

from ..errors import UserError
from ..models.tokens import rare_identifiers
from ..server.engine import Engine
from ..server.jobs import SERVER_FIELDS
from ..server.jobs_api import MAX_PHOTOS, PRESETS, submit_job
from ..training.config import TrainConfig, field_type, load_preset
from .errors import in_ui_words, ui_error

BASIC = ("method", "max_steps")     # shown outside the advanced section
HIDDEN = set(SERVER_FIELDS) | set(BASIC) | {"instance_prompt", "class_prompt"}
# DreamBooth learns from a handful of photos; the server takes 1 to MAX_PHOTOS.
PHOTOS = f"Photos of the subject (3 to 20 work best; 1 to {MAX_PHOTOS})"


def advanced_fields() -> list[dataclasses.Field]:
    return [f for f in TrainConfig.fields() if f.name not in HIDDEN]


def _default(f: dataclasses.Field):
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def base_values(preset: str | None, model_spec: str) -> dict:
    """What a job would train with before the form's changes: the defaults under the preset (the toy
    model's own preset when none is chosen, as ``build_config`` applies it)."""
    values = {f.name: _default(f) for f in TrainConfig.fields()}
    chosen = preset if preset and preset != "(none)" else ("toy" if model_spec == "toy" else None)
    if chosen:
        values.update(load_preset(chosen))
    return values


def shown(f: dataclasses.Field, value):
    """A setting's value as its input shows it."""
    typ, is_list = field_type(f)
    if typ is bool and _default(f) is None and "choices" not in f.metadata:
        return {True: "true", False: "false"}.get(value, "(default)")
    if typ is bool:
        return bool(value)
    if is_list:
        return ", ".join(str(v) for v in value or [])
    if typ is str and "choices" not in f.metadata:
        return value or ""
    return value


def component_for(f: dataclasses.Field):
    """One input per TrainConfig field, from its type, choices, default and help."""
    typ, is_list = field_type(f)
    default = _default(f)
    label, help_text, key = f.name.replace("_", " "), f.metadata.get("help", ""), f"train_{f.name}"
    if "choices" in f.metadata:
        return gr.Dropdown(list(f.metadata["choices"]), value=default, label=label, info=help_text, elem_id=key)
    if typ is bool and default is None:          # "on when ..." by default: three states
        return gr.Dropdown(["(default)", "true", "false"], value="(default)", label=label, info=help_text, elem_id=key)
    if typ is bool:
        return gr.Checkbox(value=bool(default), label=label, info=help_text, elem_id=key)
    if is_list:
        return gr.Textbox(value=shown(f, default), label=label, info=help_text + " (comma-separated)", elem_id=key)
    if typ in (int, float):
        return gr.Number(value=default, label=label + (" (empty: the default)" if default is None else ""),
                         info=help_text, precision=0 if typ is int else None, elem_id=key)
    return gr.Textbox(value=default or "", label=label, info=help_text, elem_id=key)


def overrides_of(values: list, base: dict | None = None) -> dict:
    """The advanced values that differ from ``base`` (``base_values``; default: the defaults), as
    TrainConfig names and types."""
    out = {}
    for f, value in zip(advanced_fields(), values):
        typ, is_list = field_type(f)
        default = _default(f)
        if is_list:
            items = [v.strip() for v in str(value or "").split(",") if v.strip()]
            try:
                value = [typ(v) for v in items] or None
            except ValueError:
                raise UserError(f"{f.name.replace('_', ' ')}: {value!r}: give {typ.__name__} values separated by "
                                "commas") from None
        elif typ is bool and default is None:
            value = {"true": True, "false": False}.get(value)
        elif typ in (int, float) and default is None and not value:
            value = None                         # an empty box (the browser sends 0): the default
        elif typ in (int, float) and value is not None:
            value = typ(value)
        elif typ is str and value == "" and default is None:
            value = None
        if value != (base or {}).get(f.name, default):
            out[f.name] = value
    return out


def jobs_table(store) -> pd.DataFrame:
    rows = [{"job": j.id, "name": j.request.get("name") or f"job-{j.id}", "state": j.state,
             "step": f"{j.step}/{j.max_steps}", "prompt": j.request.get("instance_prompt")} for j in reversed(store.all())]
    return pd.DataFrame(rows, columns=["job", "name", "state", "step", "prompt"])


def latest_job(store):
    """The job the page shows when it loads: the one running (or being cancelled), else the next
    queued, else the newest; empty when there is none."""
    def pick() -> str:
        jobs = store.all()
        for states in (("running", "cancelling"), ("queued",)):
            found = [j for j in jobs if j.state in states]
            if found:
                return found[0].id
        return jobs[-1].id if jobs else ""
    return pick


def phase(runner, job) -> str:
    """What a running job does before its first step (class images, caching latents), as its runner
    reports it (the API's job ``phase``)."""
    now = runner.phases.get(job.id) if runner is not None else None
    if now is None or now["task"] == "training":
        return "loading the model and the photos"
    what = "making class images" if now["task"] == "class images" else now["task"]
    return f"{what} ({now['done']} of {now['of']}), then training"


def how_to_use(store, job) -> str:
    """Where a finished job's model is, and how to pick it."""
    out = store.output(job)
    if job.method == "lora":
        use = f"add `<lora:{out.name}:1>` to the prompt (the LoRA list above does it)"
    else:
        use = f"pick **{out.name}** in the Stable Diffusion checkpoint list"
    return f"  \nmodel: {use}; saved in `{out}`"


def status_text(store, job, runner) -> str:
    share = job.step / job.max_steps if job.max_steps else 0
    if job.state == "running" and not job.step:
        text = f"**running**: {phase(runner, job)}"
    else:
        eta = f", ETA {job.eta:.0f} s" if job.eta and job.state == "running" else ""
        text = f"**{job.state}**: step {job.step}/{job.max_steps} ({share:.0%}{eta})"
    if job.state == "done":
        text += how_to_use(store, job)
    if job.error:
        text += f"  \nerror: {in_ui_words(job.error)}"
    return text


def tab(engine: Engine, store, runner, catalog):
    with gr.Row():
        with gr.Column():
            photos = gr.File(label=PHOTOS, file_count="multiple", file_types=["image"], elem_id="train_photos")
            thumbnails = gr.Gallery(label="Photos", columns=6, height=120, elem_id="train_thumbnails",
                                    interactive=False)
            instance = gr.Textbox(label="Instance prompt", placeholder="a photo of sks dog", elem_id="train_instance")
            suggest = gr.Button("Suggest a rare identifier", size="sm", elem_id="train_suggest")
            suggestion = gr.Markdown("", elem_id="train_suggestion")
            klass = gr.Textbox(label="Class prompt (prior preservation; empty: none)", placeholder="a photo of dog",
                               elem_id="train_class")
            with gr.Row():
                preset = gr.Dropdown(["(none)", *PRESETS], value="(none)", label="Preset", elem_id="train_preset")
                method = gr.Radio(["full", "lora"], value="lora", label="Method", elem_id="train_method")
                steps = gr.Number(value=400, precision=0, label="Steps", elem_id="train_steps")
                name = gr.Textbox(label="Name of the trained model", placeholder="my_dog", elem_id="train_name")
            with gr.Accordion("Advanced (every training setting)", open=False):
                advanced = [component_for(f) for f in advanced_fields()]
            start = gr.Button("Train", variant="primary", elem_id="train_start")
        with gr.Column():
            job_id = gr.Textbox(label="Job", interactive=False, elem_id="train_job")
            status = gr.Markdown("", elem_id="train_status")
            loss = gr.LinePlot(x="step", y="loss", label="Loss", height=220, elem_id="train_loss")
            grids = gr.Gallery(label="Validation", columns=1, height=240, elem_id="train_validation",
                               interactive=False)
            cancel = gr.Button("Cancel", elem_id="train_cancel")
            jobs = gr.Dataframe(value=jobs_table(store), label="Jobs (click a row to show that job)", interactive=False,
                                elem_id="train_jobs")

    photos.change(lambda files: [f.name if hasattr(f, "name") else f for f in files or []], photos, thumbnails)

    def suggest_token():
        found = rare_identifiers(engine.pipeline.pipe.tokenizer, 8)
        return "Rare tokens of this model's tokenizer: " + ", ".join(f"`{c.token}`" for c in found)
    suggest.click(suggest_token, outputs=suggestion)

    def from_preset(preset_name):            # the form shows what the preset trains with
        base = base_values(preset_name, engine.entry.spec)
        return [base["method"], base["max_steps"], *[shown(f, base[f.name]) for f in advanced_fields()]]
    preset.change(from_preset, preset, [method, steps, *advanced])

    def submit(files, instance_prompt, class_prompt, preset_name, method_name, max_steps, model_name, *values):
        try:
            base = base_values(preset_name, engine.entry.spec)
            overrides = overrides_of(list(values), base)
            for key, value in (("method", method_name), ("max_steps", int(max_steps or 0))):
                if value != base[key]:               # only what the form changed: the preset's stand
                    overrides[key] = value
            uploads = [(Path(f.name if hasattr(f, "name") else f).name, Path(f.name if hasattr(f, "name") else f).read_bytes())
                       for f in files or []]
            if not 1 <= len(uploads) <= MAX_PHOTOS:
                raise UserError(f"Photos of the subject: {len(uploads) or 'none'} given; upload 1 to {MAX_PHOTOS} "
                                "(3 to 20 work best)")
            job = submit_job(store, runner, catalog, engine.entry, instance_prompt=instance_prompt or "",
                             class_prompt=class_prompt or "", preset="" if preset_name == "(none)" else preset_name,
                             overrides=overrides, name=model_name or "", uploads=uploads)
        except UserError as exc:
            raise ui_error(str(exc)) from None
        return job.id, f"queued: {job.id}"
    start.click(submit, [photos, instance, klass, preset, method, steps, name, *advanced], [job_id, status])

    def watch(current: str):
        job = store.get(current) if current else None
        table = jobs_table(store)
        if job is None:                       # none chosen yet, or deleted (DELETE /dreambooth/v1/jobs/<id>)
            return (f"**deleted**: job {current}" if current else gr.update()), gr.update(), gr.update(), table
        text = status_text(store, job, runner)
        curve = pd.DataFrame({"step": list(range(1, len(job.losses or []) + 1)), "loss": job.losses or []})
        folder = store.output(job) / "validation"
        images = [str(p) for p in sorted(folder.glob("step-*.png"))] if folder.is_dir() else []
        return text, curve, images, table
    timer = gr.Timer(1.0)
    timer.tick(watch, inputs=job_id, outputs=[status, loss, grids, jobs])

    def cancel_job(current: str):
        job = store.get(current) if current else None
        if job is None:
            raise ui_error("Job: none selected; click a row of the Jobs table to choose the job to cancel")
        if job.state not in ("queued", "running"):
            raise ui_error(f"Job {job.id}: {job.state}; nothing to cancel")
        runner.cancel(job.id)
        gr.Info(f"job {job.id}: cancel asked" + ("" if job.state == "queued" else "; it stops at its next step"))
    cancel.click(cancel_job, inputs=job_id)

    def chosen(evt: gr.SelectData):
        row = evt.row_value or []
        return row[0] if row else gr.update()
    jobs.select(chosen, outputs=job_id)
    return job_id
