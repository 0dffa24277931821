"""``/sdapi/v1``: the AUTOMATIC1111 WebUI's API, on the library's one sampling path.

The same request gives the same pixels as ``dreambooth generate`` with the same settings, and each
PNG carries the same infotext. Routes for features this server does not have (face restorers,
interrogators, ...) answer as A1111 does when it has none of them; Extras resize (``extras``)."""
from __future__ import annotations

import json
import os
import re
import resource
import threading
import time
from pathlib import Path

import torch
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from PIL import Image

from ..errors import UserError
from ..generation.infotext import image_infotext, parse_generation_parameters
from ..generation.hires import IMAGE_MODES, LATENT_MODES
from ..generation.params import GenerationParams
from ..generation.resizing import RESIZE_MODES
from ..grid import batch_grid
from ..images import write_png
from ..outputs import GRID_PREFIX, claim_numbered
from ..generation.samplers import SAMPLERS, SCHEDULES
from .a1111_info import echoed_parameters, info_json
from .a1111_fields import (check_option, first_pass_sampler, hires_fix, mask_blur, not_options, option_value,
                           refuse_unsupported)
from .base64_images import decode_base64, decode_image, encode_png, open_image
from .client_gone import while_connected
from .engine import PREVIEW_OPTIONS, Engine
from .json_bodies import JsonRoute
from .lora_metadata import lora_metadata
from .schemas import (GENERATION_OPTIONS, Img2ImgRequest, ImagesResponse, LoraItem, PNGInfoRequest, PNGInfoResponse,
                      ProgressResponse, SamplerItem, SchedulerItem, SDModelItem, SDVaeItem, Txt2ImgRequest)

# Library flags in the library's messages, as the API's field names.
FIELDS = {"--width": "width", "--height": "height", "--steps": "steps", "--cfg": "cfg_scale", "--seed": "seed",
          "--batch-size": "batch_size", "--batch-count": "n_iter", "--strength": "denoising_strength",
          "--sampler": "sampler_name", "--schedule": "scheduler", "--prompt": "prompt", "--negative-prompt": "negative_prompt",
          "--init-image": "init_images", "--mask": "mask",
          "--mask-blur": "mask_blur", "--eta": "eta", "--only-masked": "inpaint_full_res",
          "--masked-padding": "inpaint_full_res_padding",
          "--masked-content": "inpainting_fill", "--resize-mode": "resize_mode",
          "--invert-mask": "inpainting_mask_invert", "--hires": "enable_hr", "--hires-scale": "hr_scale",
          "--hires-width": "hr_resize_x", "--hires-height": "hr_resize_y", "--hires-steps": "hr_second_pass_steps",
          "--hires-upscaler": "hr_upscaler"}
FILLS = dict(enumerate(("fill", "original", "latent noise", "latent nothing")))     # A1111's inpainting_fill
# A1111's resize_mode (its 3, "Just resize (latent upscale)", is refused)
RESIZE = dict(enumerate(RESIZE_MODES))
EMPTY_LISTS = ("face-restorers", "realesrgan-models", "prompt-styles",
               "hypernetworks", "script-info", "extensions")


_FLAG = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, FIELDS)) + r")(?![\w-])")


def api_field_message(message: str) -> str:
    """The library's message with the API's field names for its flags, wherever they stand."""
    return _FLAG.sub(lambda m: FIELDS[m.group(1)], message)


def router(engine: Engine, options: dict, flags: dict, outputs: Path | None = None) -> APIRouter:
    """``outputs``: where ``save_images`` writes, in A1111's layout (``txt2img-images/<date>/``)."""
    # (A1111's FastAPI reads a body sent without a Content-Type as JSON; so do its clients' scripts)
    api = APIRouter(prefix="/sdapi/v1", route_class=JsonRoute, strict_content_type=False)
    # each option's value as the server starts: A1111's default, whose type a value set later must have
    # (checked against these, not what is held now: one wrong value stored would refuse every right one)
    defaults = dict(options)

    def checked_option(key: str, value, where: str = "") -> None:
        if defaults.get(key) is not None and type(value) is not type(defaults[key]):
            raise UserError(f"{where}{key}: expected {type(defaults[key]).__name__}")
        check_option(key, value, where)

    def params_of(req: Txt2ImgRequest, init: Image.Image | None = None, mask: Image.Image | None = None):
        refuse_unsupported(req)
        overrides = {k: option_value(k, v, defaults) for k, v in req.override_settings.items()}
        model = overrides.pop("sd_model_checkpoint", None)
        vae = overrides.pop("sd_vae", None)
        unknown = sorted(k for k in overrides if k not in options)
        if unknown:
            raise UserError(f"override_settings: {', '.join(unknown)}: {not_options(unknown)}")
        for key, value in overrides.items():
            checked_option(key, value, "override_settings: ")
        previews = {k: v for k, v in overrides.items() if k in PREVIEW_OPTIONS}
        switch = None
        if model is not None or vae is not None:
            switch = (engine.catalog.find_model(model, "override_settings: sd_model_checkpoint") if model else engine.entry,
                      engine.catalog.find_vae(vae, "override_settings: sd_vae") if vae is not None else engine.vae,
                      req.override_settings_restore_afterwards)
        steering = {field: overrides.get(key, options[key]) for key, (_, field) in GENERATION_OPTIONS.items()}
        sampler, schedule = first_pass_sampler(req)
        values = dict(steering, prompt=req.prompt, negative_prompt=req.negative_prompt, sampler=sampler, schedule=schedule,
                      steps=req.steps, cfg_scale=req.cfg_scale, seed=req.seed, width=req.width, height=req.height,
                      batch_size=req.batch_size, batch_count=req.n_iter, eta=req.eta)
        if init is not None:
            values.update(init_image=init, strength=req.denoising_strength if req.denoising_strength is not None else 0.75,
                          resize_mode=RESIZE[req.resize_mode])
        elif req.enable_hr:
            values.update(hires_fix(req))
        if mask is not None:
            values.update(mask=mask, mask_blur=mask_blur(req), only_masked=bool(req.inpaint_full_res),
                          masked_padding=req.inpaint_full_res_padding, masked_content=FILLS[req.inpainting_fill],
                          invert_mask=bool(req.inpainting_mask_invert))
            if req.inpaint_full_res:           # A1111 keeps the init image's size there, whatever the resize mode
                values.update(resize_mode="Just resize")
        params = GenerationParams(**values)
        params.check(engine.pipeline.max_side)
        kept = {} if req.override_settings_restore_afterwards else {k: v for k, v in overrides.items() if k in options}
        return params, switch, previews, kept

    def run(req: Txt2ImgRequest, init: Image.Image | None = None, mask: Image.Image | None = None,
            gone: threading.Event | None = None) -> ImagesResponse:
        params, switch, previews, kept = params_of(req, init, mask)
        kind, day = "txt2img" if init is None else "img2img", time.strftime("%Y-%m-%d")
        saving = req.save_images and outputs is not None
        result = engine.generate(params, switch, output_dir=outputs / f"{kind}-images" / day if saving else None,
                                 options=previews, gone=gone)
        made, grid = result[0], None
        if req.save_images and len(made) > 1:       # as A1111: a grid, first in the reply, and saved
            grid = batch_grid([m.image for m in made])
            if saving:
                write_png(grid, claim_numbered(outputs / f"{kind}-grids" / day, made[0].seed, GRID_PREFIX), made[0].infotext)
        response = respond(req, params, result, grid)
        options.update(kept)       # override_settings_restore_afterwards false: they stay set, as in A1111
        return response

    def respond(req: Txt2ImgRequest, params: GenerationParams, result, grid: Image.Image | None) -> ImagesResponse:
        made, (entry, vae) = result
        info = info_json(req, params, made, entry, vae, grid is not None, engine.state.job_timestamp)
        parameters = echoed_parameters(req)
        shown = [(grid, m.infotext) for m in made[:1] if grid is not None] + [(m.image, m.infotext) for m in made]
        images = [encode_png(image, text) for image, text in shown] if req.send_images else []
        return ImagesResponse(images=images, parameters=parameters, info=json.dumps(info))

    # Generations run in a worker thread while the loop watches their client: one gone is stopped
    @api.post("/txt2img", response_model=ImagesResponse)
    async def txt2img(req: Txt2ImgRequest, request: Request):
        return await while_connected(request, lambda gone: run(req, gone=gone))

    @api.post("/img2img", response_model=ImagesResponse)
    async def img2img(req: Img2ImgRequest, request: Request):
        if not req.init_images:
            raise UserError("init_images: img2img needs at least one image")
        if len(req.init_images) > 1:
            raise UserError("init_images: one image per request on this server")

        def work(gone: threading.Event) -> ImagesResponse:
            init = decode_image(req.init_images[0], "init_images[0]")
            mask = decode_image(req.mask, "mask", "RGBA") if req.mask else None        # (its alpha, where it has any)
            return run(req, init, mask, gone)
        return await while_connected(request, work)

    @api.post("/png-info", response_model=PNGInfoResponse)
    def png_info(req: PNGInfoRequest):
        with open_image(decode_base64(req.image, "image"), "image") as im:     # a JPEG's or WebP's EXIF too
            items = {k: v for k, v in im.info.items() if isinstance(v, str) and k != "parameters"}
            text = image_infotext(im) or ""
        return PNGInfoResponse(info=text, items=items, parameters=parse_generation_parameters(text) if text else {})

    @api.get("/options")
    def get_options():
        return {**options, "sd_model_checkpoint": engine.entry.title,
                "sd_checkpoint_hash": engine.entry.hash, "sd_vae": engine.vae.name if engine.vae else "Automatic"}

    @api.post("/options")
    async def set_options(request: Request):
        body = await request.json()              # read and checked by JsonRoute (None: no JSON body)
        if not isinstance(body, dict):
            raise UserError("options: expected a JSON object of option: value")
        # a model switch waits for the device: in a worker thread, not on the loop that answers /progress
        return await run_in_threadpool(apply_options, body)

    def apply_options(body: dict) -> None:
        body = {k: option_value(k, v, defaults) for k, v in body.items()
                if k != "sd_checkpoint_hash"}     # GET's hash of the loaded model: derived, so a round trip passes
        unknown = sorted(k for k in body if k not in options and k not in ("sd_model_checkpoint", "sd_vae"))
        if unknown:
            raise UserError(f"{', '.join(unknown)}: {not_options(unknown)}")
        entry = engine.catalog.find_model(body["sd_model_checkpoint"]) if "sd_model_checkpoint" in body else engine.entry
        vae = engine.catalog.find_vae(body["sd_vae"]) if "sd_vae" in body else engine.vae
        for key, value in body.items():
            checked_option(key, value)
        with engine.gate.request():
            engine.load(entry, vae)
        options.update({k: v for k, v in body.items() if k in options})
        return None

    @api.get("/sd-models", response_model=list[SDModelItem])
    def sd_models():          # a hash computed once is listed, never computed here (seconds for a big file)
        return [SDModelItem(title=m.title, model_name=m.name, hash=m.known_hash, sha256=None, filename=m.filename)
                for m in engine.catalog.models()]

    @api.get("/sd-vae", response_model=list[SDVaeItem])
    def sd_vae():
        return [SDVaeItem(model_name=v.name, filename=str(v.path)) for v in engine.catalog.vaes()]

    @api.get("/loras", response_model=list[LoraItem])
    def loras():
        return [LoraItem(name=name, alias=name, path=str(lo.shown), metadata=lora_metadata(Path(lo.shown)))   # (its header's)
                for name, lo in engine.catalog.loras().items()]

    @api.post("/refresh-checkpoints")
    def refresh_checkpoints():
        engine.catalog.refresh()

    @api.post("/refresh-loras")
    def refresh_loras():
        engine.catalog.refresh()
        engine.refresh_loras()

    @api.post("/refresh-vae")
    def refresh_vae():
        engine.catalog.refresh()

    @api.get("/samplers", response_model=list[SamplerItem])
    def samplers():
        return [SamplerItem(name=s.name, aliases=list(s.aliases), options={}) for s in SAMPLERS]

    @api.get("/schedulers", response_model=list[SchedulerItem])
    def schedulers():
        return [SchedulerItem(name=s.lower().replace(" ", "_"), label=s) for s in SCHEDULES]

    # Control routes answer on the event loop: generations waiting for the device hold worker threads
    # (40 at most), and an operator's progress, interrupt and skip must not wait behind them
    @api.get("/progress", response_model=ProgressResponse)
    async def get_progress(skip_current_image: bool = False):
        s = engine.state
        with s.lock:
            state = {"skipped": s.skipped, "interrupted": s.interrupted, "job": s.job, "job_count": s.job_count,
                     "job_timestamp": s.job_timestamp, "job_no": s.job_no, "sampling_step": s.sampling_step,
                     "sampling_steps": s.sampling_steps}
            return ProgressResponse(progress=s.fraction if s.job else 0.0, eta_relative=s.eta if s.job else 0.0,
                                    state=state, current_image=None if skip_current_image else s.take_preview())

    @api.post("/interrupt")
    async def interrupt():
        engine.state.ask("interrupt")
        return {}                       # as A1111's interrupt, unload and reload (its skip answers null)

    @api.post("/skip")
    async def skip():
        engine.state.ask("skip")

    @api.get("/memory")
    async def memory():
        page = os.sysconf("SC_PAGE_SIZE")
        total = os.sysconf("SC_PHYS_PAGES") * page
        free = os.sysconf("SC_AVPHYS_PAGES") * page
        ram = {"free": free, "used": total - free, "total": total,
               "process_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
        if torch.cuda.is_available():
            free_c, total_c = torch.cuda.mem_get_info()
            cuda = {"system": {"free": free_c, "used": total_c - free_c, "total": total_c},
                    "active": {"current": torch.cuda.memory_allocated(), "peak": torch.cuda.max_memory_allocated()}}
        else:
            cuda = {"error": "no CUDA device"}
        return {"ram": ram, "cuda": cuda}

    @api.get("/cmd-flags")
    def cmd_flags():
        return flags

    @api.get("/scripts")
    def scripts():
        return {"txt2img": [], "img2img": []}

    @api.get("/embeddings")
    def embeddings():
        return {"loaded": {}, "skipped": {}}

    @api.post("/unload-checkpoint")
    def unload_checkpoint():
        engine.unload()
        return {}

    @api.post("/reload-checkpoint")
    def reload_checkpoint():
        engine.reload()
        return {}

    @api.post("/refresh-embeddings")
    def refresh_embeddings():          # none are loaded (textual inversions are not supported): nothing to do
        return None

    for name in EMPTY_LISTS:
        api.add_api_route(f"/{name}", lambda: [], methods=["GET"], name=name)

    @api.get("/latent-upscale-modes")
    def latent_upscale_modes():
        return [{"name": name} for name in LATENT_MODES]

    @api.get("/upscalers")
    def upscalers():          # for the hires fix's image path (A1111's "None" resizes with Lanczos too)
        return [{"name": name, "model_name": None, "model_path": None, "model_url": None, "scale": 4}
                for name in IMAGE_MODES]

    @api.post("/interrogate")
    def interrogate():
        raise UserError("interrogate: this server has no interrogators (CLIP or DeepBooru captioning)")

    return api
