"""The ``info`` JSON and the ``parameters`` echo of txt2img and img2img replies, as A1111 writes them."""
from __future__ import annotations

import random
import re

from ..checks import MAX_SEED
from ..generation.infotext import parse_generation_parameters
from ..generation.params import GenerationParams
from ..generation.samplers import resolve
from .schemas import Img2ImgRequest, Txt2ImgRequest

# Infotext keys that the info JSON holds as fields of its own (A1111's ``Processed.js``): the others
# are its ``extra_generation_params``. img2img's "Denoising strength" is its own field too; a hires
# fix's is extra, as A1111 records it.
OWN_KEYS = {"Prompt", "Negative prompt", "Steps", "Sampler", "CFG scale", "Seed", "Size", "Model hash", "Model",
            "VAE hash", "VAE", "Clip skip", "Variation seed", "Variation seed strength", "Seed resize from",
            "Face restoration", "Version"}
# txt2img's alone: not echoed in an img2img reply's parameters (A1111's img2img request has none of them)
TXT2IMG_ONLY = re.compile(r"enable_hr|hr_.*|firstphase_.*|firstpass_image")


def _typed(text):
    """An infotext value as A1111 keeps it in ``extra_generation_params``: numbers as numbers."""
    if not isinstance(text, str) or not re.fullmatch(r"-?\d+(\.\d+)?", text):
        return text
    return float(text) if "." in text else int(text)


def extra_generation_params(infotext: str, img2img: bool) -> dict:
    parsed = parse_generation_parameters(infotext, defaults=False)
    own = OWN_KEYS | ({"Denoising strength"} if img2img else set())
    extra = {}
    for key, value in parsed.items():
        if key.endswith("-2") and key[:-2] + "-1" in parsed:
            continue
        if key.endswith("-1") and key[:-2] + "-2" in parsed:          # a WxH value, as written
            key, value = key[:-2], f"{value}x{parsed[key[:-2] + '-2']}"
        if key not in own:
            extra[key] = _typed(value)
    return extra


def subseeds(req: Txt2ImgRequest, count: int) -> list[int]:
    """What A1111 reports without variation seeds (``subseed_strength`` 0, the only one this server
    takes: the subseed changes no pixel): the request's subseed, or a random one for -1, then + 1 an image."""
    first = req.subseed if req.subseed != -1 else random.randrange(MAX_SEED + 1 - count)
    return [first + k for k in range(count)]


def info_json(req: Txt2ImgRequest, params: GenerationParams, made: list, entry, vae, grid: bool,
              job_timestamp: str) -> dict:
    first = made[0] if made else None
    sampler, _ = resolve(params.sampler, params.schedule)     # "DPM++ 2M Karras" is DPM++ 2M, Karras
    img2img = params.init_image is not None
    all_subseeds = subseeds(req, max(len(made), 1))
    return {
        "prompt": req.prompt, "all_prompts": [m.prompt for m in made], "negative_prompt": req.negative_prompt,
        "all_negative_prompts": [m.negative_prompt for m in made], "seed": first.seed if first else req.seed,
        "all_seeds": [m.seed for m in made], "subseed": all_subseeds[0], "all_subseeds": all_subseeds[:len(made)],
        "subseed_strength": 0, "width": params.width or req.width, "height": params.height or req.height,
        "sampler_name": sampler.name, "cfg_scale": params.cfg_scale, "steps": params.steps,
        "batch_size": params.batch_size, "restore_faces": False, "face_restoration_model": None,
        "sd_model_name": entry.name, "sd_model_hash": entry.hash,
        "sd_vae_name": vae.name if vae else None, "sd_vae_hash": None,
        "seed_resize_from_w": -1, "seed_resize_from_h": -1,
        # the strength that made the image: img2img's, or the hires pass's
        "denoising_strength": params.strength if img2img or params.hires else None,
        "extra_generation_params": extra_generation_params(first.infotext, img2img) if first else {},
        "index_of_first_image": int(grid),
        "infotexts": [m.infotext for m in made[:1] if grid] + [m.infotext for m in made], "styles": [],
        "job_timestamp": job_timestamp, "clip_skip": params.clip_skip, "is_using_inpainting_conditioning": False,
        "version": "dreambooth",
    }


def echoed_parameters(req: Txt2ImgRequest) -> dict:
    """The request's fields as A1111 echoes them: an img2img reply has img2img's alone, and its images
    only when asked (``include_init_images``)."""
    parameters = req.model_dump()
    if isinstance(req, Img2ImgRequest):
        parameters = {k: v for k, v in parameters.items() if not TXT2IMG_ONLY.fullmatch(k)}
        if not req.include_init_images:
            parameters.update(init_images=None, mask=None)
    return parameters
