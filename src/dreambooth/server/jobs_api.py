"""``/dreambooth/v1/jobs``: submit, list, watch, cancel training jobs and read their logs.

``DELETE /dreambooth/v1/jobs/<id>`` removes an ended job with its photos and model.
``POST /dreambooth/v1/jobs`` takes multipart form fields: ``photos`` (files; or ``photos_dir``, a
folder on the server), ``instance_prompt``, ``class_prompt``, ``preset`` (a shipped preset's name),
``model`` (a title from ``/sdapi/v1/sd-models``; default: the loaded one) and ``overrides`` (a JSON
object of ``TrainConfig`` settings, checked as ``dreambooth train`` checks its flags; its ``vae`` a name
from ``/sdapi/v1/sd-vae`` or ``"Automatic"``, the model's own) and ``name`` (the
trained model's or LoRA's name in the lists; default ``job-<id>``)."""
from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import torch
from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, PlainTextResponse

from ..errors import UserError
from ..images import list_images, open_image
from ..models.specs import hub_snapshot, offline
from ..training.config import load_preset
from ..training.guard import check_one_process_options
from ..outputs import VALIDATION_DIR
from .catalog import Catalog
from .model_configs import vae_scale
from .json_bodies import BadBody, check_characters, printable, read_json, shortened
from .jobs import ENDED, Job, JobRunner, JobStore, in_api_words, job_config

MAX_PHOTOS = 50
MAX_PHOTO_BYTES = 25 * 2**20
PRESETS = ("sd15-full", "sd15-lora", "sd21-lora", "sdxl-lora", "toy")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
RESERVED_NAMES = ("photos", "log.txt")        # what the job's folder holds beside its output


def not_a_form(content_type: str | None) -> str | None:
    """The 422 of a body this route cannot read (JSON, say), or None for form fields."""
    sent = (content_type or "").split(";")[0].strip().lower()
    if sent in ("multipart/form-data", "application/x-www-form-urlencoded"):
        return None
    return ("body: this route takes multipart form fields (curl -F instance_prompt=..., photos as files), "
            f"not {shortened(sent) or 'a body without a Content-Type'}")


class NotFound(UserError):
    """A job or file that does not exist (a 404)."""


def public(job: Job, store: JobStore, runner: JobRunner | None = None) -> dict:
    """A job as clients see it; ``phase``: while it runs, what it does now (class images before step 1)."""
    folder = store.folder(job.id)
    chosen_vae = {"vae": job.request["vae_name"]} if "vae_name" in job.request else {}     # (submit_job)
    return {
        "id": job.id, "state": job.state, "created": job.created, "started": job.started, "finished": job.finished,
        "phase": runner.phases.get(job.id) if runner is not None and job.state in ("running", "cancelling") else None,
        "step": job.step, "max_steps": job.max_steps, "eta_seconds": job.eta, "losses": job.losses,
        "error": job.error, "method": job.method, "name": store.output(job).name, "model": job.request.get("model"),
        "instance_prompt": job.request.get("instance_prompt"), "class_prompt": job.request.get("class_prompt"),
        "preset": job.request.get("preset"), "overrides": {**(job.request.get("overrides") or {}), **chosen_vae},
        "validations": [{**v, "url": f"/dreambooth/v1/jobs/{job.id}/validation/{v['grid']}"} for v in job.validations or []],
        "output": {"name": store.output(job).name, "path": str(store.output(job))} if job.state == "done" else None,
        "log": f"/dreambooth/v1/jobs/{job.id}/log",
    }


def listed(job: Job, store: JobStore, runner: JobRunner | None = None) -> dict:
    """``public``, for any stored row: one this server's checks would refuse now (half a surrogate pair
    in a prompt, a damaged request) is listed as best it can be, never a 500 for the whole list."""
    try:
        return printable(public(job, store, runner))
    except Exception as exc:          # (a row no check of this version wrote)
        return {"id": job.id, "state": job.state, "error": f"this job's stored record cannot be read "
                f"({shortened(type(exc).__name__ + ': ' + str(exc))}); DELETE it", "created": job.created}


def _save_photos(uploads: list[tuple[str, bytes]], folder: Path) -> None:
    """Uploaded (file name, bytes): at most ``MAX_PHOTOS``, each under ``MAX_PHOTO_BYTES``, each an image."""
    if len(uploads) > MAX_PHOTOS:
        raise UserError(f"photos: {len(uploads)} files; at most {MAX_PHOTOS}")
    folder.mkdir(parents=True, exist_ok=True)
    for k, (filename, data) in enumerate(uploads):
        if len(data) > MAX_PHOTO_BYTES:
            raise UserError(f"photos[{k}] {filename}: over {MAX_PHOTO_BYTES // 2**20} MB")
        suffix = Path(filename).suffix.lower()
        path = folder / f"{k:03d}{suffix if suffix in ('.jpg', '.jpeg', '.png', '.webp', '.bmp') else '.png'}"
        path.write_bytes(data)
        try:
            open_image(path)               # every file must decode, and stay under MAX_PIXELS
        except UserError as exc:
            why = str(exc).split(": ", 1)[-1].replace(str(path), filename)    # not the server's staging path
            raise UserError(f"photos[{k}] {filename}: {why}") from None


def check_preset_vae(vae: str | None, preset: str) -> None:
    """A preset's VAE (sdxl-lora's fp16-fix) that training could not load here: refused now, not a job
    that fails once it starts. (Online, training fetches one not cached.)"""
    if not vae or Path(vae).expanduser().exists() or not offline():
        return
    try:
        hub_snapshot(vae, "vae")             # the local cache only, offline
    except UserError:
        raise UserError(f"preset {preset or 'default'}: its vae {vae} is not on this server (not in its Hugging Face "
                        "cache, and it is offline); send overrides {\"vae\": \"Automatic\"} to train with the model's "
                        "own VAE (or a name from GET /sdapi/v1/sd-vae), or ask the operator to "
                        f"`hf download {vae}`") from None


def check_training_device(config) -> None:
    """Settings this machine cannot train with (8-bit Adam without CUDA, ...): refused at submission by
    the trainer's own device check, not a job that fails when its turn comes, hours later."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")     # the trainer's (Trainer.setup)
    check_one_process_options(config, device, 1, False, lambda warning: None)   # (its warnings: the job's log)


def _preset_model(preset: str, catalog: Catalog):
    """The listed model a preset names (toy's ``toy``), for a job that names none: the toy recipe on
    whatever model was loaded trained that model with the toy's settings."""
    named = load_preset(preset).get("model") if preset else None
    return next((e for e in catalog.models() if named and e.spec == named), None)


def check_name(name: str, store: JobStore, catalog: Catalog) -> None:
    """A job's name becomes its model's (or LoRA's) name in the lists, where clients pick by name: a
    name listed already, or another job's, would leave one of the two out of reach."""
    if len(name) > 64:
        raise UserError(f"name: {len(name)} characters; at most 64")
    if not NAME.fullmatch(name):
        raise UserError(f"name: {name!r}: letters, digits, '.', '_' and '-' only, starting with a letter or digit "
                        "(the model's or LoRA's name)")
    if name in RESERVED_NAMES:
        raise UserError(f"name: {name!r} is a folder of the job itself; choose another")
    if re.fullmatch(r"job-[0-9a-f]{12}", name):
        raise UserError(f"name: {name!r} is how jobs without a name are called; choose another")
    for job in store.all():
        if job.request.get("name") == name and job.state not in ("failed", "cancelled"):
            raise UserError(f"name: {name!r} is job {job.id}'s already; choose another (clients pick models by name)")
    if any(name in (entry.title, entry.name) for entry in catalog.models()) or name in catalog.loras():
        raise UserError(f"name: {name!r} is a listed model or LoRA already; choose another (clients pick by name)")


def submit_job(store: JobStore, runner: JobRunner, catalog: Catalog, current, *, instance_prompt: str,
               class_prompt: str = "", preset: str = "", model: str = "", overrides: dict | None = None,
               name: str = "", uploads: list[tuple[str, bytes]] | None = None, photos_dir: str = "") -> Job:
    """Check a job request completely, store its photos, then queue it: what the API route and the
    web UI's Train tab both call."""
    values = overrides if overrides is not None else {}
    if not isinstance(values, dict):
        raise UserError("overrides: not a JSON object")
    check_characters(values, "overrides")        # a stored job's text is listed to every client, later
    check_characters({"instance_prompt": instance_prompt, "class_prompt": class_prompt, "preset": preset,
                      "model": model, "name": name, "photos_dir": photos_dir})
    if not (instance_prompt or "").strip():
        raise UserError("instance_prompt: empty; give the prompt of the subject's photos, with its rare token "
                        "(instance_prompt=\"a photo of sks dog\")")
    if preset and preset not in PRESETS:
        raise UserError(f"preset: {shortened(repr(preset))} unknown; one of {', '.join(PRESETS)}")
    entry = catalog.find_model(model, "model") if model else _preset_model(preset, catalog) or current
    if name:
        check_name(name, store, catalog)          # again under the store's lock below: two at once
    request = {"instance_prompt": instance_prompt, "class_prompt": class_prompt or None, "preset": preset or None,
               "overrides": values, "model": entry.title, "model_spec": entry.spec, "name": name or None,
               "model_config": entry.config}
    if values.get("vae") is not None:      # a VAE the server lists, by name (never a path), or the model's own
        vae = catalog.find_vae(values["vae"], "overrides.vae")
        request.update(overrides={k: v for k, v in values.items() if k != "vae"}, vae=str(vae.path) if vae else "",
                       vae_name=values["vae"])
    if uploads and photos_dir:
        raise UserError("photos: upload photos, or give photos_dir (a folder on the server), not both")
    if not uploads and not photos_dir:
        raise UserError("photos: upload the subject's photos (or give photos_dir, a folder on the server)")
    with tempfile.TemporaryDirectory() as check:       # every setting checked before anything is stored
        try:
            config = job_config(request, Path(check) / "output", Path(check), entry.spec)
        except UserError as exc:
            raise UserError(in_api_words(str(exc), request)) from None
    if "vae" not in request:
        check_preset_vae(config.vae, preset)
    ours, theirs = vae_scale(entry.spec), vae_scale(config.vae) if config.vae else None
    if ours and theirs and abs(ours - theirs) > 1e-6:    # (training would refuse it once started: said now)
        what = f"overrides.vae {request['vae_name']}" if "vae" in request else f"preset {preset}: its vae {config.vae}"
        raise UserError(f"{what} scales latents by {theirs:g}, the model {entry.title}'s VAE by {ours:g}: a VAE of "
                        "another family; send overrides {\"vae\": \"Automatic\"} for the model's own")
    try:
        check_training_device(config)
    except UserError as exc:
        raise UserError(in_api_words(str(exc), request)) from None
    staging = Path(tempfile.mkdtemp(prefix=".upload-", dir=store.root))    # photos checked before a job exists
    try:
        if uploads:
            _save_photos(uploads, staging)
        else:
            found = list_images(Path(photos_dir).expanduser(), "photos_dir")
            if len(found) > MAX_PHOTOS:
                raise UserError(f"photos_dir {photos_dir}: {len(found)} images; at most {MAX_PHOTOS}")
            for path in found:
                open_image(path, "photos_dir")
                shutil.copy2(path, staging / path.name)
        with store.adding:
            if name:
                check_name(name, store, catalog)
            job = store.add(request, config.method, config.max_steps)
        store.folder(job.id).mkdir(parents=True)
        staging.rename(store.folder(job.id) / "photos")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    runner.wake()
    return store.get(job.id)


def router(store: JobStore, runner: JobRunner, catalog: Catalog, current_model: callable) -> APIRouter:
    api = APIRouter(prefix="/dreambooth/v1")

    def job_of(job_id: str) -> Job:
        job = store.get(job_id)
        if job is None:
            raise NotFound(f"job {job_id}: no such job")
        return job

    @api.post("/jobs")
    def submit(request: Request, instance_prompt: str = Form(""), class_prompt: str = Form(""), preset: str = Form(""),
               model: str = Form(""), overrides: str = Form("{}"), photos_dir: str = Form(""), name: str = Form(""),
               photos: list[UploadFile] = File(default=[])):
        if not_a_form(request.headers.get("content-type")):
            raise BadBody(not_a_form(request.headers.get("content-type")))
        values = read_json(overrides or "{}", "overrides")
        uploads = [(upload.filename or f"{k}.png", upload.file.read(MAX_PHOTO_BYTES + 1)) for k, upload in enumerate(photos)]
        job = submit_job(store, runner, catalog, current_model(), instance_prompt=instance_prompt,
                         class_prompt=class_prompt, preset=preset, model=model, overrides=values, name=name,
                         uploads=uploads, photos_dir=photos_dir)
        return public(job, store, runner)

    # reading and cancelling jobs answer on the event loop, not behind generations in worker threads
    @api.get("/jobs")
    async def jobs():
        return [listed(j, store, runner) for j in store.all()]

    @api.get("/jobs/{job_id}")
    async def one(job_id: str):
        return listed(job_of(job_id), store, runner)

    @api.post("/jobs/{job_id}/cancel")
    async def cancel(job_id: str):
        job = job_of(job_id)
        if job.state in ("done", "failed"):
            raise UserError(f"job {job_id}: already {job.state}; nothing to cancel")
        if job.state not in ("cancelled", "cancelling"):       # asked again (a retry): the job as it is
            runner.cancel(job_id)
        return public(job_of(job_id), store, runner)

    @api.delete("/jobs/{job_id}")
    def delete(job_id: str):
        job = job_of(job_id)
        if job.state == "cancelling":
            raise UserError(f"job {job_id}: still stopping (cancelling); delete it once it is cancelled")
        if job.state not in ENDED:
            raise UserError(f"job {job_id}: {job.state}; cancel it first")
        output = store.output(job).resolve()
        if Path(current_model().spec).expanduser().resolve() == output:
            raise UserError(f"job {job_id}: its model is the one loaded; load another first")
        for other in store.all():
            spec = other.request.get("model_spec")
            if other.state not in ENDED and spec and Path(spec).expanduser().resolve() == output:
                raise UserError(f"job {job_id}: job {other.id} ({other.state}) trains on its model; delete it "
                                "once that job has ended")
        store.delete(job_id)
        runner.on_done()                   # its model or LoRA leaves the lists
        return {"deleted": job_id}

    @api.get("/jobs/{job_id}/log", response_class=PlainTextResponse)
    async def log(job_id: str):
        job_of(job_id)
        path = store.folder(job_id) / "log.txt"
        return path.read_text() if path.exists() else ""

    @api.get("/jobs/{job_id}/validation/{name}")
    def validation_image(job_id: str, name: str):
        job_of(job_id)
        folder = store.output(job_of(job_id)) / VALIDATION_DIR
        files = {p.name: p for p in folder.glob("step-*.png")} if folder.is_dir() else {}
        if name not in files:                    # looked up among the job's grids, never joined as a path
            raise NotFound(f"{name}: no such validation image of job {job_id}")
        return FileResponse(files[name], media_type="image/png")

    return api
