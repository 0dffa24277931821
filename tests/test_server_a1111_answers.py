"""What an A1111 API user reads in this server's answers: the options A1111 has (its UI's and saving's
taken, a picture-changing one only at its default), the info JSON of a reply as A1111 fills it, and
the Extras routes resizing with the upscalers the server lists."""
from __future__ import annotations

import base64
import io
import json
import shutil

import pytest
from PIL import Image

from test_server import http, served

TINY = {"prompt": "a red circle", "steps": 2, "width": 32, "height": 32, "seed": 1}


@pytest.fixture(scope="module")
def port(tmp_path_factory, tiny_sd1):
    from dreambooth.server.app import ServerSettings
    root = tmp_path_factory.mktemp("answers")
    shutil.copytree(tiny_sd1, root / "models" / "tiny-sd1")
    with served(ServerSettings(model="toy", data_dir=root / "data", models_dir=str(root / "models"))) as (app, port):
        yield port


def png(width: int, height: int, text: str | None = None) -> str:
    from PIL.PngImagePlugin import PngInfo
    meta = PngInfo()
    if text:
        meta.add_text("parameters", text)
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, format="PNG", pnginfo=meta)
    return base64.b64encode(buffer.getvalue()).decode()


def opened(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data)))


def test_a1111s_own_options_are_taken_and_a_picture_changing_one_only_at_its_default(port):
    """``samples_save`` (A1111's saving) once cancelled the model switch sent with it; ENSD 0 (A1111's
    neutral value) was refused."""
    reply = http(port, "POST", "/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-sd1", "samples_save": False,
                                                          "eta_noise_seed_delta": 0, "s_noise": 1})
    assert reply.status_code == 200, reply.text
    options = http(port, "GET", "/sdapi/v1/options").json()
    assert options["sd_model_checkpoint"].startswith("tiny-sd1") and options["samples_save"] is False
    assert options["eta_noise_seed_delta"] == 0 and options["jpeg_quality"] == 80     # A1111's, listed
    refused = http(port, "POST", "/sdapi/v1/options", json={"sd_model_checkpoint": "toy", "eta_noise_seed_delta": 31337})
    assert refused.status_code == 400, refused.text
    assert refused.json()["detail"] == "eta_noise_seed_delta: 31337 is not supported by this server (only 0)"
    assert http(port, "GET", "/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("tiny-sd1")   # all or nothing
    assert http(port, "POST", "/sdapi/v1/options", json={"sd_model_checkpoint": "toy"}).status_code == 200
    made = http(port, "POST", "/sdapi/v1/txt2img", json={**TINY, "override_settings": {
        "eta_noise_seed_delta": 0, "samples_save": True, "live_previews_image_format": "jpeg"}})
    assert made.status_code == 200, made.text
    wrong = http(port, "POST", "/sdapi/v1/txt2img", json={**TINY, "override_settings": {"samples_save": "yes"},
                                                          "override_settings_restore_afterwards": False})
    assert wrong.status_code == 400 and wrong.json()["detail"] == "override_settings: samples_save: expected bool"
    assert http(port, "GET", "/sdapi/v1/options").json()["samples_save"] is False      # not stored
    assert http(port, "POST", "/sdapi/v1/options", json={"samples_save": True}).status_code == 200
    unknown = http(port, "POST", "/sdapi/v1/txt2img", json={**TINY, "override_settings": {"no_such_option": 1}})
    assert unknown.status_code == 400 and "not an option of this server" in unknown.json()["detail"]


def test_a_hires_replys_info_holds_its_strength_and_its_extra_infotext_keys(port):
    body = {**TINY, "enable_hr": True, "hr_scale": 2, "hr_upscaler": "Lanczos", "denoising_strength": 0.5, "subseed": 7}
    info = json.loads(http(port, "POST", "/sdapi/v1/txt2img", json=body).json()["info"])
    assert info["denoising_strength"] == 0.5
    extra = info["extra_generation_params"]
    assert extra["Denoising strength"] == 0.5 and extra["Hires upscale"] == 2 and extra["Hires upscaler"] == "Lanczos"
    assert extra["Schedule type"] == "Automatic" and "Steps" not in extra and "Seed" not in extra
    assert (info["subseed"], info["all_subseeds"]) == (7, [7])
    resolved = json.loads(http(port, "POST", "/sdapi/v1/txt2img", json={**TINY, "batch_size": 2}).json()["info"])
    first = resolved["subseed"]          # -1 resolved, as A1111 does (its strength 0: no pixel depends on it)
    assert first >= 0 and resolved["all_subseeds"] == [first, first + 1]
    assert "Variation seed" not in resolved["infotexts"][0]
    assert resolved["denoising_strength"] is None


def test_an_inpaint_replys_info_and_parameters_are_img2imgs(port):
    mask = png(32, 32)
    reply = http(port, "POST", "/sdapi/v1/img2img", json={**TINY, "init_images": [png(32, 32)], "mask": mask,
                                                           "denoising_strength": 0.6, "inpaint_full_res": 0})
    assert reply.status_code == 200, reply.text
    info, parameters = json.loads(reply.json()["info"]), reply.json()["parameters"]
    assert info["denoising_strength"] == 0.6 and "Denoising strength" not in info["extra_generation_params"]
    assert info["extra_generation_params"]["Mask blur"] == 4
    assert not [k for k in parameters if k == "enable_hr" or k.startswith(("hr_", "firstphase_"))], parameters
    assert parameters["denoising_strength"] == 0.6 and parameters["init_images"] is None


def test_extras_resize_with_the_listed_upscalers(port):
    reply = http(port, "POST", "/sdapi/v1/extra-single-image", json={"image": png(30, 20, "a cat\nSteps: 2, Seed: 1, Size: 30x20"),
                                                                      "upscaler_1": "Lanczos", "upscaling_resize": 2})
    assert reply.status_code == 200, reply.text
    image = opened(reply.json()["image"])
    assert image.size == (56, 40) and image.info["parameters"].startswith("a cat")    # A1111's multiples of 8; kept
    assert "Postprocess upscaler: Lanczos" in reply.json()["html_info"]
    to = {"resize_mode": 1, "upscaling_resize_w": 64, "upscaling_resize_h": 64, "upscaler_1": "Nearest",
          "upscaler_2": "Lanczos", "extras_upscaler_2_visibility": 0.5}
    batch = http(port, "POST", "/sdapi/v1/extra-batch-images",
                 json={**to, "imageList": [{"data": png(32, 16), "name": "a.png"}, {"data": png(16, 16), "name": "b.png"}]})
    assert batch.status_code == 200, batch.text
    assert [opened(i).size for i in batch.json()["images"]] == [(64, 64), (64, 64)]
    uncropped = http(port, "POST", "/sdapi/v1/extra-single-image", json={**to, "upscaling_crop": False,
                                                                          "image": png(32, 16)})
    assert uncropped.status_code == 200 and opened(uncropped.json()["image"]).size == (128, 64), uncropped.text
    unchanged = http(port, "POST", "/sdapi/v1/extra-single-image", json={"image": png(30, 20)})    # upscaler_1 "None"
    assert opened(unchanged.json()["image"]).size == (30, 20)
    for body, needle in (({"image": "not base64!"}, "image: not valid base64"),
                         ({"image": png(8, 8), "gfpgan_visibility": 0.5}, "gfpgan_visibility: 0.5: this server has no face restorers"),
                         ({"image": png(8, 8), "upscaler_1": "R-ESRGAN 4x+"}, "upscaler_1 'R-ESRGAN 4x+': this server's upscalers are")):
        refused = http(port, "POST", "/sdapi/v1/extra-single-image", json=body)
        assert refused.status_code == 400 and refused.json()["detail"].startswith(needle), refused.text
    bad = http(port, "POST", "/sdapi/v1/extra-batch-images", json={"imageList": [{"data": "x!", "name": "a"}]})
    assert bad.status_code == 400 and bad.json()["detail"].startswith("imageList[0].data: not valid base64"), bad.text
