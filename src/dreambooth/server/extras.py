"""``/sdapi/v1/extra-single-image`` and ``extra-batch-images``: A1111's Extras tab, with the upscalers
this server lists (``None``, ``Lanczos``, ``Nearest``: PIL's filters). Face restoration is refused
(none here); an image's infotext stays in its PNG, as A1111 keeps it."""
from __future__ import annotations

import html
from typing import Literal

from fastapi import APIRouter
from PIL import Image
from pydantic import BaseModel, Field

from ..errors import UserError
from ..generation.hires import IMAGE_MODES
from ..generation.infotext import image_infotext
from ..images import MAX_PIXELS, to_rgb
from .base64_images import decode_base64, encode_png, open_image
from .json_bodies import JsonRoute, shortened
from .schemas import Strict


class ExtrasRequest(Strict):
    """A1111's ``ExtrasBaseRequest``, its ranges too."""
    resize_mode: Literal[0, 1] = 0                 # 0: scale by upscaling_resize; 1: to upscaling_resize_w x _h
    show_extras_results: bool = True
    gfpgan_visibility: float = Field(0.0, ge=0, le=1)
    codeformer_visibility: float = Field(0.0, ge=0, le=1)
    codeformer_weight: float = Field(0.0, ge=0, le=1)
    upscaling_resize: float = Field(2.0, ge=1, le=8)
    upscaling_resize_w: int = Field(512, ge=1)
    upscaling_resize_h: int = Field(512, ge=1)
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = Field(0.0, ge=0, le=1)
    upscale_first: bool = False


class SingleImageRequest(ExtrasRequest):
    image: str = ""


class FileData(BaseModel):
    data: str
    name: str = ""


class BatchImagesRequest(ExtrasRequest):
    imageList: list[FileData] = Field(default_factory=list)


def _upscaler(name: str, field: str) -> str | None:
    """A listed upscaler's name; None for "None" (A1111 then leaves the image as it is)."""
    found = {u.lower(): u for u in IMAGE_MODES}.get(str(name).lower())
    if found is None:
        raise UserError(f"{field} {shortened(repr(name))}: this server's upscalers are {', '.join(IMAGE_MODES)} "
                        "(GET /sdapi/v1/upscalers)")
    return None if found == "None" else found


def target_size(width: int, height: int, req: ExtrasRequest) -> tuple[tuple[int, int], tuple[int, int] | None]:
    """(the upscaled size, the crop to it or None): as A1111 sizes it, each side floored to a multiple
    of 8; resize_mode 1 scales by the larger ratio, then crops the middle to the size asked."""
    scale = req.upscaling_resize
    crop = None
    if req.resize_mode == 1:
        scale = max(req.upscaling_resize_w / width, req.upscaling_resize_h / height)
        crop = (req.upscaling_resize_w, req.upscaling_resize_h) if req.upscaling_crop else None
    size = (int(width * scale) // 8 * 8, int(height * scale) // 8 * 8)
    if size[0] < 1 or size[1] < 1 or size[0] * size[1] > MAX_PIXELS:
        what = "upscaling_resize_w, upscaling_resize_h" if req.resize_mode == 1 else "upscaling_resize"
        raise UserError(f"{what}: a {width}x{height} image would become {size[0]}x{size[1]}; at least 8 pixels a "
                        f"side and at most {MAX_PIXELS:,} pixels on this server")
    return size, crop


def postprocess(image: Image.Image, req: ExtrasRequest) -> tuple[Image.Image, dict]:
    """``image`` upscaled as ``req`` asks, and what was done (A1111's "Postprocess ..." infotext keys)."""
    first = _upscaler(req.upscaler_1, "upscaler_1")
    second = _upscaler(req.upscaler_2, "upscaler_2") if req.extras_upscaler_2_visibility > 0 else None
    if first is None:
        return image, {}
    size, crop = target_size(image.width, image.height, req)
    info = {"Postprocess upscale to": f"{req.upscaling_resize_w}x{req.upscaling_resize_h}"} if req.resize_mode == 1 \
        else {"Postprocess upscale by": req.upscaling_resize}
    result = image.resize(size, resample=IMAGE_MODES[first])
    info["Postprocess upscaler"] = first
    if second is not None:         # the two upscalers' images blended, the second's share its visibility
        result = Image.blend(result, image.resize(size, resample=IMAGE_MODES[second]), req.extras_upscaler_2_visibility)
        info["Postprocess upscaler 2"] = second
    if crop is not None:           # the middle of the scaled image, on black where it falls short
        framed = Image.new("RGB", crop)
        framed.paste(result, ((crop[0] - result.width) // 2, (crop[1] - result.height) // 2))
        result = framed
    return result, info


def _refuse_face_restoration(req: ExtrasRequest) -> None:
    for field in ("gfpgan_visibility", "codeformer_visibility"):
        if getattr(req, field):
            raise UserError(f"{field}: {getattr(req, field):g}: this server has no face restorers (GET "
                            "/sdapi/v1/face-restorers); send 0")


def _one(data: str, field: str, req: ExtrasRequest) -> tuple[str, str]:
    """(the base64 PNG made of ``data``, its postprocessing line)."""
    with open_image(decode_base64(data, field), field) as opened:
        try:
            opened.load()
            infotext, image = image_infotext(opened), to_rgb(opened)
        except Exception as exc:
            raise UserError(f"{field}: not a readable image ({type(exc).__name__})") from None
    image, info = postprocess(image, req)
    line = ", ".join(f"{k}: {v:g}" if isinstance(v, float) else f"{k}: {v}" for k, v in info.items())
    return encode_png(image, infotext), line


def _html(lines: list[str]) -> str:
    return "".join(f"<p>{html.escape(line)}</p>" for line in dict.fromkeys(lines) if line)


def router() -> APIRouter:
    api = APIRouter(prefix="/sdapi/v1", route_class=JsonRoute, strict_content_type=False)

    @api.post("/extra-single-image")
    def extra_single_image(req: SingleImageRequest):
        _refuse_face_restoration(req)
        _upscaler(req.upscaler_2, "upscaler_2")
        image, line = _one(req.image, "image", req)
        return {"image": image, "html_info": _html([line])}

    @api.post("/extra-batch-images")
    def extra_batch_images(req: BatchImagesRequest):
        _refuse_face_restoration(req)
        _upscaler(req.upscaler_2, "upscaler_2")
        made = [_one(item.data, f"imageList[{k}].data", req) for k, item in enumerate(req.imageList)]
        return {"images": [image for image, _ in made], "html_info": _html([line for _, line in made])}

    return api
