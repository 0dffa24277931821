"""Request and response bodies of the A1111 API, with A1111's field names (``modules/api/models.py``
and the parameters of its processing classes), as pydantic models.

Every field A1111 takes is accepted, so its clients (``webuiapi``, plug-ins, bots) work unchanged; a
field this server cannot honour is accepted at A1111's neutral default and refused (a 400 naming the
field) otherwise; ``null`` is a field not given. A field neither A1111 nor Forge knows is a 422 naming it. Numbers are checked where the
library checks them (``GenerationParams.check``), so the limits are the CLI's."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    @model_validator(mode="before")
    @classmethod
    def _null_is_unset(cls, data: Any) -> Any:
        """A1111 takes ``null`` for any field (its fields are all Optional) as "not given": its default."""
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


class Txt2ImgRequest(Strict):
    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] = Field(default_factory=list)
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = None
    sampler_index: str | None = None          # A1111's deprecated name of sampler_name
    scheduler: str | None = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    distilled_cfg_scale: float | None = None
    width: int = 512
    height: int = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = None
    denoising_strength: float | None = None
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] = Field(default_factory=dict)
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool = False
    firstpass_image: str | None = None
    comments: dict[str, Any] | None = None
    enable_hr: bool = False
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    # Forge's (stable-diffusion-webui-forge) fields, which its clients send on every request
    hr_additional_modules: list[str] | None = None
    hr_cfg: float | None = None
    hr_distilled_cfg: float | None = None
    force_task_id: str | None = None
    script_name: str | None = None
    script_args: list[Any] = Field(default_factory=list)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    infotext: str | None = None


class Img2ImgRequest(Txt2ImgRequest):
    init_images: list[str] | None = None
    resize_mode: int = 0
    image_cfg_scale: float | None = None
    mask: str | None = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int | None = None
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool | int = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    include_init_images: bool = False
    denoising_strength: float | None = 0.75


# A1111 features this server does not have: accepted at these values (what a client sends when it does
# not use them), refused otherwise.
NEUTRAL = {
    "styles": [], "subseed_strength": 0.0, "restore_faces": (None, False), "tiling": (None, False),
    "refiner_checkpoint": (None, "", "None"), "script_name": (None, "", "None"),
    "alwayson_scripts": {}, "firstpass_image": None, "resize_mode": (0, 1, 2), "latent_mask": None,
    "inpainting_mask_invert": (0, 1), "inpainting_fill": (0, 1, 2, 3), "disable_extra_networks": False,
    "mask_round": True, "seed_resize_from_h": (-1, 0),
    # the samplers' noise settings at their WebUI defaults (webuiapi sends these); eta is honoured (params.eta)
    "s_churn": (None, 0.0), "s_noise": (None, 1.0), "s_min_uncond": (None, 0.0), "initial_noise_multiplier": (None, 1.0), "seed_resize_from_w": (-1, 0), "infotext": (None, ""),
}

# A1111 options that steer generation: the WebUI's default and the GenerationParams field each sets (its
# range is the field's, ``params.RANGES``): "Clip skip".
GENERATION_OPTIONS = {"CLIP_stop_at_last_layers": (1, "clip_skip")}


class ImagesResponse(BaseModel):
    images: list[str] | None = None
    parameters: dict
    info: str


class PNGInfoRequest(Strict):
    image: str


class PNGInfoResponse(BaseModel):
    info: str
    items: dict
    parameters: dict


class ProgressResponse(BaseModel):
    progress: float
    eta_relative: float
    state: dict
    current_image: str | None = None
    textinfo: str | None = None


class SDModelItem(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    title: str
    model_name: str
    hash: str | None = None
    sha256: str | None = None
    filename: str
    config: str | None = None


class SDVaeItem(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    model_name: str
    filename: str


class LoraItem(BaseModel):
    name: str
    alias: str
    path: str
    metadata: dict = Field(default_factory=dict)


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, Any]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float | None = None
    need_inner_model: bool | None = None
