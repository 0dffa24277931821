"""What A1111's clients send, as strangers' scripts sent it: base64 wrapped at 76 columns, ``null`` for
a field not given, a hires pass naming the first pass's sampler, A1111-only routes they probe, a grid
with ``save_images``; and what one request must not do to the server (a prompt of megabytes)."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from test_server import RED_PNG, http, server  # noqa: F401  (the module's server fixture)

SMALL = {"steps": 2, "width": 32, "height": 32, "seed": 5}


def _pixels(reply, index: int = 0) -> np.ndarray:
    assert reply.status_code == 200, reply.text
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(reply.json()["images"][index]))))


def test_base64_wrapped_at_76_columns_is_read(server):
    port = server[1]
    wrapped = base64.encodebytes(base64.b64decode(RED_PNG)).decode()          # as `base64 FILE` writes it
    assert "\n" in wrapped
    plain = http(port, "POST", "/sdapi/v1/img2img", json={"prompt": "x", "init_images": [RED_PNG], **SMALL})
    reply = http(port, "POST", "/sdapi/v1/img2img", json={"prompt": "x", "init_images": [wrapped], "mask": wrapped,
                                                          **SMALL})
    assert reply.status_code == 200, reply.text
    assert np.array_equal(_pixels(http(port, "POST", "/sdapi/v1/img2img",
                                       json={"prompt": "x", "init_images": [wrapped], **SMALL})), _pixels(plain))
    made = http(port, "POST", "/sdapi/v1/txt2img", json={"prompt": "x", **SMALL}).json()["images"][0]
    info = http(port, "POST", "/sdapi/v1/png-info", json={"image": base64.encodebytes(base64.b64decode(made)).decode()})
    assert info.status_code == 200 and "Seed: 5" in info.json()["info"], info.text


def test_png_info_reads_the_infotext_a1111_writes_into_a_jpeg(server):
    image, exif = Image.new("RGB", (16, 16), "red"), Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + "a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 7".encode("utf-16-be")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    reply = http(server[1], "POST", "/sdapi/v1/png-info", json={"image": base64.b64encode(buffer.getvalue()).decode()})
    assert reply.status_code == 200, reply.text
    assert reply.json()["info"] == "a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 7" and reply.json()["parameters"]["Seed"] in (7, "7")


def test_null_is_a_field_not_given(server):
    port = server[1]
    given = http(port, "POST", "/sdapi/v1/txt2img", json={"prompt": "a red circle", **SMALL})
    nulls = {"styles": None, "override_settings": None, "subseed": None, "negative_prompt": None, "n_iter": None,
             "sampler_name": None, "scheduler": None, "restore_faces": None, "alwayson_scripts": None}
    reply = http(port, "POST", "/sdapi/v1/txt2img", json={"prompt": "a red circle", **SMALL, **nulls})
    assert np.array_equal(_pixels(reply), _pixels(given))


@pytest.mark.parametrize("body", [
    {"enable_hr": True, "hr_sampler_name": "Euler a"},                      # the first pass's, by default
    {"enable_hr": True, "sampler_index": "Euler", "hr_sampler_name": "euler"},
    {"enable_hr": True, "hr_scheduler": "Automatic"},
    {"enable_hr": True, "sampler_name": "DPM++ 2M Karras", "hr_sampler_name": "DPM++ 2M", "hr_scheduler": "karras"},
])
def test_a_hires_pass_naming_the_first_pass_sampler_runs(server, body):
    reply = http(server[1], "POST", "/sdapi/v1/txt2img", json={"prompt": "x", **SMALL, "width": 16, "height": 16,
                                                               "hr_scale": 2, **body})
    assert reply.status_code == 200, reply.text


def test_a_hires_pass_with_another_sampler_is_still_refused(server):
    reply = http(server[1], "POST", "/sdapi/v1/txt2img", json={"prompt": "x", **SMALL, "enable_hr": True,
                                                               "hr_sampler_name": "DDIM"})
    assert reply.status_code == 400 and reply.json()["detail"].startswith("hr_sampler_name: 'DDIM'"), reply.text


def test_forge_clients_fields_are_taken(server):
    """Forge's clients send its hires fields on every request (Forge Neo fails without
    ``hr_additional_modules``); outside a hires pass they change nothing, in one they must be the first pass's."""
    port, forge = server[1], {"hr_additional_modules": ["Use same choices"], "hr_cfg": 1.0, "hr_distilled_cfg": 3.5}
    plain = http(port, "POST", "/sdapi/v1/txt2img", json={"prompt": "x", **SMALL})
    assert np.array_equal(_pixels(http(port, "POST", "/sdapi/v1/txt2img", json={"prompt": "x", **SMALL, **forge})),
                          _pixels(plain))
    hires = {"prompt": "x", **SMALL, "width": 16, "height": 16, "enable_hr": True, "cfg_scale": 5, **forge}
    reply = http(port, "POST", "/sdapi/v1/txt2img", json=hires)
    assert reply.status_code == 400 and reply.json()["detail"] == \
        "hr_cfg: 1.0: this server's hires pass uses the first pass's CFG scale; send cfg_scale's value (5) or leave it out", reply.text
    assert http(port, "POST", "/sdapi/v1/txt2img", json={**hires, "hr_cfg": 5}).status_code == 200
    reply = http(port, "POST", "/sdapi/v1/txt2img", json={**hires, "hr_cfg": None, "hr_additional_modules": ["ae.safetensors"]})
    assert reply.status_code == 400 and reply.json()["detail"].startswith("hr_additional_modules: ['ae.safetensors']")


def test_every_unknown_field_is_named_at_once(server):
    reply = http(server[1], "POST", "/sdapi/v1/txt2img", json={"prompt": "x", "use_async": False, "hr_cfgs": 7})
    assert reply.status_code == 422, reply.text
    assert reply.json()["detail"] == "use_async, hr_cfgs: unknown fields"
    reply = http(server[1], "POST", "/sdapi/v1/txt2img", json={"prompt": "x", "steps": "abc", "foo": 1, "bar": 2})
    assert reply.status_code == 422 and reply.json()["detail"].startswith("steps: ") and \
        reply.json()["detail"].endswith("; and unknown fields: foo, bar"), reply.text
    reply = http(server[1], "POST", "/sdapi/v1/txt2img",
                 json={"prompt": "x", "override_settings": {"sd_model_checkpoint": "missing"}})
    assert reply.status_code == 400 and reply.json()["detail"].startswith("override_settings: sd_model_checkpoint:")


def test_routes_a1111_clients_probe(server):
    assert http(server[1], "GET", "/internal/ping").json() == {}
    assert http(server[1], "POST", "/sdapi/v1/refresh-embeddings").status_code == 200
    assert http(server[1], "POST", "/sdapi/v1/unload-checkpoint").status_code == 200
    assert http(server[1], "POST", "/sdapi/v1/txt2img", json={"prompt": "x", **SMALL}).status_code == 200
    assert http(server[1], "POST", "/sdapi/v1/reload-checkpoint").status_code == 200


def test_unload_parks_the_model_until_the_next_request(monkeypatch):
    """(On a GPU: there is no GPU here, so the device is pretended and the moves recorded.)"""
    import torch

    from dreambooth.server.engine import Engine
    moves = []

    class Pipeline:
        def to(self, device, medvram=False):
            moves.append(str(device))
            return self
    engine = Engine.__new__(Engine)
    Engine.__init__(engine, catalog=None, device="cpu")
    engine.device, engine.pipeline = torch.device("cuda"), Pipeline()
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: moves.append("freed"))
    engine.unload()
    engine.unload()                                   # once is enough
    engine.reload()
    engine.reload()
    assert moves == ["cpu", "freed", "cuda"] and not engine.parked


def test_save_images_returns_and_saves_a1111s_grid_first(server):
    outputs = server[0].state.store.root.parent / "outputs"
    reply = http(server[1], "POST", "/sdapi/v1/txt2img", json={"prompt": "x", **SMALL, "seed": 31, "batch_size": 3,
                                                               "save_images": True})
    images, info = reply.json()["images"], __import__("json").loads(reply.json()["info"])
    assert len(images) == 4 and info["index_of_first_image"] == 1 and len(info["infotexts"]) == 4
    assert info["all_seeds"] == [31, 32, 33]
    assert Image.open(io.BytesIO(base64.b64decode(images[0]))).size == (64, 64)     # 2 rows of 2, one empty
    cells = [_pixels(reply, i) for i in range(1, 4)]
    assert np.array_equal(_pixels(reply)[:32, 32:], cells[1]) and np.array_equal(_pixels(reply)[32:, :32], cells[2])
    assert len(list(outputs.glob("txt2img-grids/*/grid-*-31.png"))) == 1
    unsaved = http(server[1], "POST", "/sdapi/v1/txt2img", json={"prompt": "x", **SMALL, "batch_size": 3})
    assert len(unsaved.json()["images"]) == 3             # A1111 makes its grid only for saved images


def test_a_prompt_of_megabytes_is_refused_at_once(server, monkeypatch):
    port = server[1]
    reply = http(port, "POST", "/sdapi/v1/txt2img", json={"prompt": "a " * 1_000_000, **SMALL})
    assert reply.status_code == 400 and reply.json()["detail"].startswith("prompt: 2,000,000 characters; at most 20,000")
    reply = http(port, "POST", "/sdapi/v1/txt2img", json={"prompt": "x", "negative_prompt": "b" * 20_001, **SMALL})
    assert reply.status_code == 400 and reply.json()["detail"].startswith("negative_prompt: 20,001 characters")
    from dreambooth.server import app as app_module
    monkeypatch.setattr(app_module, "MAX_JSON_BODY", 1000)
    reply = http(port, "POST", "/sdapi/v1/txt2img", json={"prompt": "x" * 2000})
    assert reply.status_code == 413 and reply.json()["detail"].startswith("body: 2,"), reply.text

    def chunks():                                  # no Content-Length: counted as it arrives
        yield b'{"prompt": "'
        for _ in range(20):
            yield b"x" * 100
        yield b'"}'
    reply = http(port, "POST", "/sdapi/v1/txt2img", content=chunks(), headers={"content-type": "application/json"})
    assert reply.status_code == 413 and "at most 1,000" in reply.json()["detail"], reply.text
    assert http(port, "GET", "/sdapi/v1/sd-models").status_code == 200
