"""The Train tab: photos, prompts, preset, method and steps, and an "advanced" section made from
``TrainConfig`` itself (``train_form``: what a job would train with). Start submits a job to the
server's own queue (``jobs_api.submit_job``, what ``POST /dreambooth/v1/jobs`` calls), so it survives
a restart; a timer shows its progress, ETA, loss curve and validation grids."""
from __future__ import annotations

import json
from pathlib import Path

import gradio as gr

import pandas as pd

from ..errors import UserError
from ..models.tokens import rare_identifiers
from ..server.engine import Engine
from ..server.jobs_api import MAX_PHOTOS, PRESETS, submit_job
from .errors import in_ui_words, ui_error
from .train_form import NONE, advanced_fields, base_values, component_for, overrides_of, refilled, trained_spec

# DreamBooth learns from a handful of photos; the server takes 1 to MAX_PHOTOS.
PHOTOS = f"Photos of the subject (3 to 20 work best; 1 to {MAX_PHOTOS})"


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


def tab(engine: Engine, store, runner, catalog, checkpoint: gr.Dropdown):
    """``checkpoint``: the model picker, whose model (with no preset chosen) decides the form's values.
    Returns (the job box, the form's filling as the page's load event takes it)."""
    spec = trained_spec(NONE, catalog, engine.entry)
    base = base_values(NONE, spec)
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
                preset = gr.Dropdown([NONE, *PRESETS], value=NONE, label="Preset", elem_id="train_preset")
                method = gr.Radio(["full", "lora"], value=base["method"], label="Method", elem_id="train_method")
                steps = gr.Number(value=base["max_steps"], label="Steps", elem_id="train_steps")
                name = gr.Textbox(label="Name of the trained model", placeholder="my_dog", elem_id="train_name")
            with gr.Accordion("Advanced (every training setting)", open=False):
                advanced = [component_for(f, base) for f in advanced_fields()]
            start = gr.Button("Train", variant="primary", elem_id="train_start")
            # [preset, model, method] the form shows the values of (not a gr.State: that keeps a heartbeat
            # connection open, so a page would never be idle)
            filled_for = gr.Textbox(json.dumps([NONE, spec, None]), visible=False, elem_id="train_filled_for")
        with gr.Column():
            job_id = gr.Textbox(label="Job", interactive=False, elem_id="train_job")
            status = gr.Markdown("", elem_id="train_status")
            loss = gr.LinePlot(x="step", y="loss", label="Loss", height=220, elem_id="train_loss")
            grids = gr.Gallery(label="Validation", columns=1, height=240, elem_id="train_validation",
                               interactive=False)
            cancel = gr.Button("Cancel", elem_id="train_cancel")
            jobs = gr.Dataframe(value=jobs_table(store), label="Jobs (click a row to show that job)", interactive=False,
                                elem_id="train_jobs")
    form = [method, steps, *advanced]

    photos.change(lambda files: [f.name if hasattr(f, "name") else f for f in files or []], photos, thumbnails)

    def suggest_token():
        found = rare_identifiers(engine.pipeline.pipe.tokenizer, 8)
        return "Rare tokens of this model's tokenizer: " + ", ".join(f"`{c.token}`" for c in found)
    suggest.click(suggest_token, outputs=suggestion)

    def refill(preset_name, title, shows, *current):
        """The form shows what a job of the chosen preset, on the model picked (at the page's load, or
        by another tab too) and by the method chosen, trains with; what the user changed stays."""
        try:
            picked = catalog.find_model(title) if title else engine.entry
        except UserError:                        # (a picker being refreshed) the model loaded now
            picked = engine.entry
        was = json.loads(shows) if shows else None
        old = base_values(*was) if was else None
        # the method the user chose (now, or before: it stays chosen), else the preset's
        method = current[0] if old and current[0] != old["method"] else was[2] if was else None
        now = (preset_name, trained_spec(preset_name, catalog, picked), method)
        return *refilled(base_values(*now), old, list(current)), json.dumps(now)
    refill_io = ([preset, checkpoint, filled_for, *form], [*form, filled_for])
    for control in (preset, checkpoint, method):       # (no spinner over every input: it takes an instant)
        control.change(refill, *refill_io, show_progress="hidden")

    def submit(files, instance_prompt, class_prompt, preset_name, model_name, *values):
        try:
            # against what the job will train with (the model loaded now), so it trains with what the form shows
            model_spec = trained_spec(preset_name, catalog, engine.entry)
            source = f"the {preset_name} preset's" if preset_name != NONE else \
                "the toy model's" if model_spec == "toy" else "the default"
            chosen = values[0] if values[0] != base_values(preset_name, model_spec)["method"] else None
            overrides = overrides_of(list(values), base_values(preset_name, model_spec, chosen), source)
            if chosen:                   # (the base above is that method's: the toy's identifier lr is full's alone)
                overrides["method"] = chosen
            uploads = [(Path(f.name if hasattr(f, "name") else f).name, Path(f.name if hasattr(f, "name") else f).read_bytes())
                       for f in files or []]
            if not 1 <= len(uploads) <= MAX_PHOTOS:
                raise UserError(f"Photos of the subject: {len(uploads) or 'none'} given; upload 1 to {MAX_PHOTOS} "
                                "(3 to 20 work best)")
            job = submit_job(store, runner, catalog, engine.entry, instance_prompt=instance_prompt or "",
                             class_prompt=class_prompt or "", preset="" if preset_name == NONE else preset_name,
                             overrides=overrides, name=model_name or "", uploads=uploads)
        except UserError as exc:
            raise ui_error(str(exc)) from None
        return job.id, f"queued: {job.id}"
    start.click(submit, [photos, instance, klass, preset, name, *form], [job_id, status])

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
    return job_id, dict(fn=refill, inputs=refill_io[0], outputs=refill_io[1], show_progress="hidden")
