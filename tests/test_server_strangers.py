"""What a stranger probing the server as an A1111 API user found: text that is no text, JSON sent
without a Content-Type, megabytes echoed in errors, the API's paths under the web UI, a stopping
server, CORS as A1111 takes it, clients that leave, the answers of control routes, the server's paths
in infotexts, an empty form field, unreadable bodies, and a model hash that came and went."""
from __future__ import annotations

import base64
import json
import time

import httpx
import pytest

from test_server import RED_PNG, free_port, http, served

TINY = {"prompt": "a red circle", "steps": 1, "width": 32, "height": 32, "seed": 1}
BIG_BASE64 = base64.b64encode(b"\x89PNG" + bytes(300_000)).decode()


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from dreambooth.server.app import ServerSettings
    root = tmp_path_factory.mktemp("strangers")
    with served(ServerSettings(model="toy", data_dir=root / "data")) as (app, port):
        yield app, port


def _json(port, path, text: str, **headers):
    """``text`` sent as it stands (``json.dumps``' escapes kept: ``"\\udcff"``), no Content-Type unless given."""
    return http(port, "POST", path, content=text.encode(), headers=headers)


@pytest.mark.parametrize("path, body, needle", [
    ("/sdapi/v1/txt2img", '{"prompt": "a \\ud83d square", "steps": 1}', "prompt: \\ud83d (at character 2) is not a valid"),
    ("/sdapi/v1/txt2img", '{"negative_prompt": "\\udcff"}', "negative_prompt: \\udcff"),
    ("/sdapi/v1/txt2img", '{"sampler_name": "\\udcff"}', "sampler_name: \\udcff"),
    ("/sdapi/v1/txt2img", '{"override_settings": {"\\udcff": 1}}', "override_settings: the key"),
    ("/sdapi/v1/img2img", '{"init_images": ["\\udcff"]}', "init_images[0]: \\udcff"),
    ("/sdapi/v1/options", '{"sd_vae": "\\udcff"}', "sd_vae: \\udcff"),
    ("/sdapi/v1/png-info", '{"image": "\\udcff"}', "image: \\udcff"),
])
def test_half_surrogate_pairs_are_a_422_naming_the_field(toy, path, body, needle):
    reply = _json(toy[1], path, body, **{"content-type": "application/json"})
    assert reply.status_code == 422 and needle in reply.json()["detail"], reply.text
    assert "surrogate" in reply.json()["detail"]


def test_a_job_with_such_text_is_refused_and_one_stored_before_still_lists(toy, tmp_path):
    from test_server_jobs import TOY_JOB, photos
    app, port = toy
    files = [("photos", (p.name, p.read_bytes(), "image/png")) for p in photos(tmp_path / "photos")]
    form = {**TOY_JOB, "overrides": '{"max_steps": 2, "validation_prompts": ["\\udcff"]}'}
    reply = httpx.post(f"http://127.0.0.1:{port}/dreambooth/v1/jobs", data=form, files=files, timeout=60)
    assert reply.status_code == 422, reply.text
    assert reply.json()["detail"].startswith("overrides.validation_prompts[0]: \\udcff"), reply.text
    assert http(port, "GET", "/dreambooth/v1/jobs").json() == []             # nothing stored
    # rows an earlier version stored: one with such text, one whose request is no object at all
    store = app.state.store
    odd = store.add({**TOY_JOB, "overrides": {"validation_prompts": ["\udcff"]}}, "lora", 2)
    broken = store.add({}, "lora", 2)
    store.update(odd.id, state="failed")
    store.update(broken.id, state="failed", request=["not", "a", "request"])
    try:
        listed = http(port, "GET", "/dreambooth/v1/jobs")
        assert listed.status_code == 200, listed.text
        by_id = {j["id"]: j for j in listed.json()}
        assert by_id[odd.id]["overrides"] == {"validation_prompts": ["\\udcff"]}
        assert "cannot be read" in by_id[broken.id]["error"]
        assert http(port, "GET", f"/dreambooth/v1/jobs/{odd.id}").status_code == 200
    finally:
        store.delete(odd.id), store.delete(broken.id)


def test_json_without_a_content_type_is_read_as_json(toy):
    port = toy[1]
    reply = _json(port, "/sdapi/v1/txt2img", json.dumps(TINY))      # requests.post(url, data=json.dumps(...))
    assert reply.status_code == 200 and len(reply.json()["images"]) == 1, reply.text
    assert _json(port, "/sdapi/v1/options", json.dumps({"CLIP_stop_at_last_layers": 1})).status_code == 200
    reply = _json(port, "/sdapi/v1/txt2img", json.dumps(TINY), **{"content-type": "text/plain"})
    assert reply.status_code == 422 and reply.json()["detail"].endswith("not text/plain"), reply.text
    reply = _json(port, "/dreambooth/v1/jobs", json.dumps({"instance_prompt": "a sks dog"}))
    assert reply.json()["detail"].endswith("not a body without a Content-Type"), reply.text


@pytest.mark.parametrize("body, needle", [
    ({"alwayson_scripts": {"ControlNet": {"args": [{"image": BIG_BASE64}]}}},
     "alwayson_scripts: ControlNet is not supported by this server"),
    ({"init_images": [RED_PNG], "latent_mask": BIG_BASE64}, "latent_mask: \"iVBOR"),
    ({"firstpass_image": BIG_BASE64}, "firstpass_image: \"iVBOR"),
    ({"override_settings": {"sd_model_checkpoint": BIG_BASE64}}, "sd_model_checkpoint: no model named"),
    ({"sampler_name": BIG_BASE64}, "sampler_name"),
])
def test_a_refused_value_is_not_echoed_whole(toy, body, needle):
    path = "/sdapi/v1/img2img" if "init_images" in body else "/sdapi/v1/txt2img"
    reply = http(toy[1], "POST", path, json={**TINY, **body})
    assert reply.status_code == 400 and needle in reply.json()["detail"], reply.text[:500]
    assert len(reply.content) < 1000 and "…" in reply.json()["detail"] or "ControlNet" in reply.text, reply.text[:500]


def test_the_apis_paths_answer_alike_under_a_ui_at_the_root(tmp_path):
    from starlette.responses import PlainTextResponse

    from dreambooth.server.app import ServerSettings

    async def ui(scope, receive, send):         # the web UI's mount: everything no route takes whole
        await PlainTextResponse("the UI", 404 if scope["path"] != "/" else 200)(scope, receive, send)
    with served(ServerSettings(model="toy", data_dir=tmp_path / "data"), mount=lambda app: app.mount("/", ui)) \
            as (app, port):
        wrong = http(port, "GET", "/sdapi/v1/txt2img")
        assert wrong.status_code == 405 and wrong.headers["allow"] == "POST", wrong.text
        assert wrong.json() == {"detail": "Method Not Allowed"}
        assert http(port, "DELETE", "/sdapi/v1/options").status_code == 405
        assert http(port, "PUT", "/dreambooth/v1/jobs").status_code == 405
        slash = http(port, "POST", "/sdapi/v1/txt2img/", json=TINY)
        assert slash.status_code == 307 and slash.headers["location"].endswith("/sdapi/v1/txt2img"), slash.text
        assert http(port, "GET", "/sdapi/v1/sd-models/").status_code == 307
        missing = http(port, "GET", "/sdapi/v1/no-such-route")
        assert missing.status_code == 404 and missing.json() == {"detail": "Not Found"}, missing.text
        assert http(port, "GET", "/").text == "the UI"


def test_a_stopping_server_is_a_503_with_retry_after(toy, monkeypatch):
    monkeypatch.setattr(toy[0].state.engine.gate, "closed", True)
    reply = http(toy[1], "POST", "/sdapi/v1/txt2img", json=TINY)
    assert reply.status_code == 503 and reply.json()["detail"].startswith("the server is stopping"), reply.text
    assert reply.headers["retry-after"].isdigit()


def test_cors_takes_a1111s_comma_lists_and_regex_with_credentials(tmp_path):
    from dreambooth.server.app import ServerSettings
    settings = ServerSettings(model="toy", data_dir=tmp_path / "data", cors_origins=["http://a.com,http://b.com"],
                              cors_origin_regex=r"https://.*\.example\.org")
    with served(settings) as (app, port):
        for origin, allowed in (("http://a.com", True), ("http://b.com", True), ("https://x.example.org", True),
                                ("http://evil.com", False)):
            reply = http(port, "OPTIONS", "/sdapi/v1/txt2img",
                         headers={"Origin": origin, "Access-Control-Request-Method": "POST"})
            assert (reply.status_code == 200) == allowed, (origin, reply.status_code, reply.text)
            if allowed:
                assert reply.headers["access-control-allow-origin"] == origin
                assert reply.headers["access-control-allow-credentials"] == "true"


def test_the_cli_takes_a1111s_cors_flags():
    from conftest import run_cli
    code, _, err = run_cli("serve", "--cors-allow-origins", "http://a.com,http://b.com", "--cors-allow-origins-regex",
                           "(", "--port", str(free_port()))
    assert code == 2 and "--cors-allow-origins-regex (: not a regular expression" in err, err


def _abandoned_then_served(port: int, auth=None) -> None:
    with pytest.raises(httpx.TimeoutException):              # minutes of sampling, abandoned after a second
        httpx.post(f"http://127.0.0.1:{port}/sdapi/v1/txt2img", json={**TINY, "steps": 1000, "n_iter": 50},
                   timeout=1.0, auth=auth)
    started = time.monotonic()
    reply = httpx.post(f"http://127.0.0.1:{port}/sdapi/v1/txt2img", json=TINY, timeout=120, auth=auth)
    assert reply.status_code == 200 and time.monotonic() - started < 15, time.monotonic() - started


def test_a_client_that_leaves_stops_its_generation(toy, tmp_path):
    _abandoned_then_served(toy[1])
    # behind --api-auth too (a BaseHTTPMiddleware for it hid every disconnect from the route)
    from dreambooth.server.app import ServerSettings
    with served(ServerSettings(model="toy", data_dir=tmp_path / "data", api_auth="u:p")) as (_, port):
        assert httpx.get(f"http://127.0.0.1:{port}/sdapi/v1/options").status_code == 401
        _abandoned_then_served(port, auth=("u", "p"))


def test_control_routes_answer_as_a1111s(toy):
    port = toy[1]
    for path in ("interrupt", "unload-checkpoint", "reload-checkpoint"):
        reply = http(port, "POST", f"/sdapi/v1/{path}")
        assert reply.status_code == 200 and reply.json() == {}, (path, reply.text)
    assert http(port, "POST", "/sdapi/v1/skip").json() is None               # A1111's skip returns nothing


def test_infotexts_carry_no_path_of_the_server(toy):
    from dataclasses import replace
    from pathlib import Path
    from types import SimpleNamespace

    from PIL import Image

    from dreambooth.generation.loras import LoraFile
    from dreambooth.generation.params import GenerationParams
    from dreambooth.generation.recorded import infotext_params
    app, port = toy
    reply = http(port, "POST", "/sdapi/v1/txt2img", json={**TINY, "save_images": True})
    text = json.loads(reply.json()["info"])["infotexts"][0]
    assert "Model: toy" in text and "Model hash" in text and "RNG: CPU" in text, text
    saved = [Image.open(p).info["parameters"] for p in (app.state.store.root.parent / "outputs").rglob("*.png")]
    assert saved and all("path" not in t and "Model config" not in t for t in [text, *saved]), (text, saved)
    # the server's model records no path: a LoRA's neither, in every image it makes (the UI's X/Y/Z too)
    info = app.state.engine.pipeline.info
    assert info.share_paths is False
    lora = LoraFile("x", Path("/srv/loras/x.safetensors"), Path("/srv/loras/x.safetensors"), "/srv/loras/x.safetensors")
    keys = ("Model path", "Model config", "VAE path", "Lora paths")
    for shared in (False, True):
        pipeline = SimpleNamespace(info=replace(info, spec="/srv/models/m", config="/srv/c", vae_spec="/srv/v",
                                                share_paths=shared))
        recorded = infotext_params(GenerationParams("a dog", steps=2, width=8, height=8), 1, pipeline, [(lora, 1.0)], False)
        assert [k for k in keys if recorded[k] is not None] == (list(keys) if shared else []), (shared, recorded)


def test_an_empty_instance_prompt_says_it_is_empty(toy, tmp_path):
    from test_server_jobs import TOY_JOB, photos
    files = [("photos", (p.name, p.read_bytes(), "image/png")) for p in photos(tmp_path / "photos")]
    reply = httpx.post(f"http://127.0.0.1:{toy[1]}/dreambooth/v1/jobs", data={**TOY_JOB, "instance_prompt": ""},
                       files=files, timeout=60)
    assert reply.status_code == 400 and reply.json()["detail"].startswith("instance_prompt: empty; give"), reply.text


@pytest.mark.parametrize("content, needle, status", [
    (b'{"prompt": "caf\xe9"}', "body: not valid UTF-8 (byte 0xe9 at byte 15)", 422),
    (b"[" * 5000 + b"]" * 5000, "body: nested too deeply to read", 400),
    (b'{"prompt": "x",}', "body: not valid JSON (", 422),
])
@pytest.mark.parametrize("path", ["/sdapi/v1/txt2img", "/sdapi/v1/options"])
def test_unreadable_bodies_say_why(toy, path, content, needle, status):
    reply = http(toy[1], "POST", path, content=content, headers={"content-type": "application/json"})
    assert reply.status_code == status and reply.json()["detail"].startswith(needle), reply.text


def test_a_models_hash_once_computed_stays_listed(toy):
    from dreambooth.server.catalog import Catalog
    port = toy[1]
    made = json.loads(http(port, "POST", "/sdapi/v1/txt2img", json=TINY).json()["info"])["sd_model_hash"]
    listed = lambda: {m["title"]: m["hash"] for m in http(port, "GET", "/sdapi/v1/sd-models").json()}["toy"]  # noqa: E731
    assert made and listed() == made
    for path in ("refresh-checkpoints", "unload-checkpoint"):
        http(port, "POST", f"/sdapi/v1/{path}")
        assert listed() == made, path
    assert Catalog("toy").models()[0].known_hash == made            # a server started again
