"""A1111's request fields in the library's terms: the hires fix, the sampler, the mask blur, options
(``override_settings`` and ``/sdapi/v1/options``), and the fields of features this server lacks, refused
unless at their neutral value."""
from __future__ import annotations

import json

from ..checks import check_value
from ..errors import UserError
from ..generation.hires import HIRES_UPSCALERS, upscaler_named
from ..generation.params import RANGES
from ..generation.samplers import resolve
from .engine import check_preview_option
from .json_bodies import shortened, shown
from .a1111_options import FIXED_OPTIONS
from .schemas import GENERATION_OPTIONS, NEUTRAL, Img2ImgRequest, Txt2ImgRequest


def refuse_unsupported(req: Txt2ImgRequest) -> None:
    for name, neutral in NEUTRAL.items():
        if not hasattr(req, name):
            continue
        value = getattr(req, name)
        allowed = neutral if isinstance(neutral, tuple) else (neutral,)
        if value in allowed:
            continue
        only = ", ".join(dict.fromkeys(json.dumps(v) for v in allowed))     # as the client writes them
        if name == "alwayson_scripts" and isinstance(value, dict):           # the scripts, not their megabytes of args
            names = ", ".join(shown(k, 40).strip('"') for k in list(value)[:5]) + (", ..." if len(value) > 5 else "")
            raise UserError(f"alwayson_scripts: {names} {'is' if len(value) == 1 else 'are'} not supported by this "
                            f"server (it runs no scripts; only {only})")
        raise UserError(f"{name}: {shown(value)} is not supported by this server (only {only})")


def hires_fix(req: Txt2ImgRequest) -> dict:
    """A1111's ``enable_hr`` and its fields as GenerationParams' hires settings; a second pass with its
    own checkpoint, sampler or prompts is refused (this server runs the first pass's)."""
    same = {"hr_checkpoint_name": (None, "", "Use same checkpoint"), "hr_sampler_name": (None, "", "Use same sampler"),
            "hr_scheduler": (None, "", "Use same scheduler"), "hr_prompt": ("", req.prompt),
            "hr_negative_prompt": ("", req.negative_prompt), "hr_cfg": (None, req.cfg_scale),
            "hr_additional_modules": (None, [], ["Use same choices"])}
    first = _resolved(*first_pass_sampler(req))         # the hires pass may name it, in any of its names
    given = {name: getattr(req, name) not in same[name] for name in ("hr_sampler_name", "hr_scheduler")}
    sampler = req.hr_sampler_name if given["hr_sampler_name"] else first[0] if first else None
    second = _resolved(sampler, req.hr_scheduler if given["hr_scheduler"] else first[1]) if first else None
    if first is not None and second == first:
        same.pop("hr_sampler_name"), same.pop("hr_scheduler")
    elif given["hr_sampler_name"] and second is not None and second[0] == first[0]:
        same.pop("hr_sampler_name")                       # the sampler is the same: the schedule is not
    for name, allowed in same.items():
        value = getattr(req, name)
        if value not in allowed:
            what = {"hr_cfg": "CFG scale", "hr_additional_modules": "VAE and text encoders"}.get(
                name, name.removeprefix('hr_').replace('_name', ''))
            same_as = f"send cfg_scale's value ({req.cfg_scale:g}) or " if name == "hr_cfg" else ""
            raise UserError(f"{name}: {shortened(repr(value))}: this server's hires pass uses the first pass's {what}; {same_as}leave it out")
    upscaler = upscaler_named(req.hr_upscaler or "Latent")
    if upscaler is None:
        raise UserError(f"hr_upscaler {shortened(repr(req.hr_upscaler))}: this server has {', '.join(HIRES_UPSCALERS)}")
    return dict(hires=True, hires_scale=req.hr_scale, hires_width=req.hr_resize_x, hires_height=req.hr_resize_y,
                hires_steps=req.hr_second_pass_steps, hires_upscaler=upscaler,
                strength=req.denoising_strength if req.denoising_strength is not None else 0.75)


def first_pass_sampler(req: Txt2ImgRequest) -> tuple[str, str]:
    """The sampler and schedule a request's (first) pass runs: A1111's defaults where it names none."""
    return req.sampler_name or req.sampler_index or "Euler a", req.scheduler or "Automatic"


def _resolved(sampler, schedule) -> tuple[str, str] | None:
    try:
        row, label = resolve(sampler, schedule)
    except UserError:
        return None
    return row.name, label


def mask_blur(req: Img2ImgRequest) -> int:
    """A1111's ``mask_blur`` sets both ways; without it, ``mask_blur_x`` and ``mask_blur_y`` (4 and 4)."""
    if req.mask_blur is not None:
        return req.mask_blur
    if req.mask_blur_x != req.mask_blur_y:
        raise UserError(f"mask_blur_x {req.mask_blur_x}, mask_blur_y {req.mask_blur_y}: this server feathers a mask "
                        "alike both ways; give one mask_blur")
    return req.mask_blur_x


def option_value(key: str, value, options: dict):
    """A whole number sent as a float (``2.0``: JSON from a client that has only floats) for an option
    that holds whole numbers is that number; one sent as ``0`` for an option that holds floats, that float."""
    held = options.get(key)
    if isinstance(held, int) and not isinstance(held, bool) and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(held, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def not_options(names: list[str]) -> str:
    return "not an option of this server" if len(names) == 1 else "not options of this server"


def check_option(key: str, value, where: str = "") -> None:
    """A UserError naming ``key`` where the server cannot do what ``value`` asks: a value out of a
    GENERATION_OPTIONS range, or other than a FIXED_OPTIONS one."""
    check_preview_option(key, value)
    if key in GENERATION_OPTIONS:
        check_value(f"{where}{key}", value, int, *RANGES[GENERATION_OPTIONS[key][1]])
    if key in FIXED_OPTIONS and value != FIXED_OPTIONS[key]:
        raise UserError(f"{where}{key}: {shown(value)} is not supported by this server (only {shown(FIXED_OPTIONS[key])})")
