"""``dreambooth serve``: the real A1111 client (``webuiapi``) drives the server on the toy model, and
gets the CLI's pixels; auth on every route; every bad input is a 4xx naming the field, and the server
keeps serving."""
from __future__ import annotations

import base64
import contextlib
import io
import shutil
import socket
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_cli


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(settings, mount=None):
    """The app of ``settings`` (with ``mount(app)`` applied: the web UI) served by uvicorn in a thread."""
    import uvicorn

    from dreambooth.server.app import create_app
    app = create_app(settings)
    if mount is not None:
        mount(app)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield app, port
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd1):
    from dreambooth.server.app import ServerSettings
    root = tmp_path_factory.mktemp("serve")
    models = root / "models"
    models.mkdir()
    shutil.copytree(tiny_sd1, models / "tiny-sd1")
    with served(ServerSettings(model="toy", data_dir=root / "data", models_dir=str(models))) as (app, port):
        yield app, port


@pytest.fixture
def api(server):
    import webuiapi
    return webuiapi.WebUIApi(host="127.0.0.1", port=server[1])


def http(port, method, path, auth=None, **kwargs):
    import httpx
    return httpx.request(method, f"http://127.0.0.1:{port}{path}", auth=auth, timeout=120, **kwargs)


def cli_pixels(tmp_path, *args) -> np.ndarray:
    code, stdout, err = run_cli("generate", "--model", "toy", "--output", tmp_path, *args)
    assert code == 0, err
    return np.asarray(Image.open(stdout.split()[-1]))


def test_webuiapi_txt2img_equals_the_cli(api, tmp_path):
    from dreambooth.generation.infotext import parse_generation_parameters
    # The toy model's own size (webuiapi's default, 512 px, gives the same equality, minutes later on one thread)
    result = api.txt2img(prompt="a red circle on a blue background", seed=1, steps=20, width=32, height=32)
    assert result.image.size == (32, 32)
    cli = cli_pixels(tmp_path, "--prompt", "a red circle on a blue background", "--seed", "1", "--steps", "20",
                     "--width", "32", "--height", "32")
    assert np.array_equal(np.asarray(result.image), cli)
    info = result.info                                                  # webuiapi parsed it as JSON
    assert info["all_seeds"] == [1] and info["seed"] == 1 and info["sd_model_name"] == "toy"
    assert info["sampler_name"] == "Euler a" and info["steps"] == 20 and info["width"] == 32
    cli_info = parse_generation_parameters(Image.open(tmp_path / "00001-1.png").info["parameters"])
    for key in ("Model path", "Model config", "VAE path", "Lora paths"):     # the CLI's record of where its
        cli_info.pop(key, None)                                              # files are: no server's to share
    assert parse_generation_parameters(info["infotexts"][0]) == cli_info          # the CLI's infotext
    assert parse_generation_parameters(result.image.info["parameters"]) == cli_info


def test_info_says_what_the_infotext_says(api):
    """A combined name ("DPM++ 2M Karras") and a lower-case scheduler are reported as the infotext
    records them, and the model's hash is the infotext's, in the info and in ``/sd-models``."""
    from dreambooth.generation.infotext import parse_generation_parameters
    for fields in ({"sampler_name": "DPM++ 2M Karras"}, {"sampler_name": "DPM++ 2M", "scheduler": "karras"}):
        result = api.txt2img(prompt="a red circle", seed=1, steps=2, width=32, height=32, **fields)
        text = parse_generation_parameters(result.info["infotexts"][0])
        assert (text["Sampler"], text["Schedule type"]) == ("DPM++ 2M", "Karras")
        assert result.info["sampler_name"] == "DPM++ 2M"
        assert result.info["extra_generation_params"]["Schedule type"] == "Karras"
        assert result.info["sd_model_hash"] == text["Model hash"] and len(text["Model hash"]) == 10
    listed = {m["title"]: m["hash"] for m in api.get_sd_models()}
    assert listed["toy"] == text["Model hash"]


def test_clip_skip_from_options_and_override_settings_equals_the_cli(api, tmp_path):
    cli = cli_pixels(tmp_path, "--prompt", "a red circle", "--seed", "4", "--steps", "3", "--width", "32",
                     "--height", "32", "--clip-skip", "2")
    result = api.txt2img(prompt="a red circle", seed=4, steps=3, width=32, height=32,
                         override_settings={"CLIP_stop_at_last_layers": 2})
    assert np.array_equal(np.asarray(result.image), cli) and result.info["clip_skip"] == 2
    assert "Clip skip: 2" in result.info["infotexts"][0]
    assert api.get_options()["CLIP_stop_at_last_layers"] == 1               # for that request alone
    plain = api.txt2img(prompt="a red circle", seed=4, steps=3, width=32, height=32)
    assert not np.array_equal(np.asarray(plain.image), cli) and plain.info["clip_skip"] == 1
    api.set_options({"CLIP_stop_at_last_layers": 2})                        # for the requests after it
    try:
        again = api.txt2img(prompt="a red circle", seed=4, steps=3, width=32, height=32)
        assert np.array_equal(np.asarray(again.image), cli)
        api.set_options(api.get_options())                                  # a round trip changes nothing
        assert api.get_options()["CLIP_stop_at_last_layers"] == 2
    finally:
        api.set_options({"CLIP_stop_at_last_layers": 1.0})                  # a whole float is that number
    assert api.get_options()["CLIP_stop_at_last_layers"] == 1
    kept = api.txt2img(prompt="a red circle", seed=4, steps=3, width=32, height=32,     # not restored afterwards:
                       override_settings={"CLIP_stop_at_last_layers": 2}, override_settings_restore_afterwards=False)
    try:
        assert np.array_equal(np.asarray(kept.image), cli) and api.get_options()["CLIP_stop_at_last_layers"] == 2
    finally:
        api.set_options({"CLIP_stop_at_last_layers": 1})


def test_webuiapis_eta_is_ddims_as_in_the_cli(api, tmp_path):
    """webuiapi sends A1111's eta 1.0 with every request: DDIM draws with it, as ``--eta 1``."""
    cli = cli_pixels(tmp_path, "--prompt", "a red circle", "--seed", "4", "--steps", "3", "--width", "32",
                     "--height", "32", "--sampler", "DDIM", "--eta", "1")
    result = api.txt2img(prompt="a red circle", seed=4, steps=3, width=32, height=32, sampler_name="DDIM")
    assert np.array_equal(np.asarray(result.image), cli) and "Eta DDIM: 1," in result.info["infotexts"][0]


def test_batches_loras_in_prompts_and_img2img(api, tmp_path):
    result = api.txt2img(prompt="a green square", seed=5, steps=4, width=32, height=32, batch_size=2, n_iter=2)
    assert len(result.images) == 4 and result.info["all_seeds"] == [5, 6, 7, 8]
    init = Image.new("RGB", (32, 32), (200, 30, 30))
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (0, 0, 16, 32))
    out = api.img2img(images=[init], mask_image=mask, prompt="a blue circle", seed=3, steps=4, width=32, height=32,
                      denoising_strength=0.75, inpainting_fill=1)
    pixels = np.asarray(out.image)
    # webuiapi sends A1111's mask_blur 4: beyond the mask and its feather (10 px), untouched
    assert np.array_equal(pixels[:, 26:], np.asarray(init)[:, 26:])
    assert not np.array_equal(pixels[:, 16:26], np.asarray(init)[:, 16:26])
    assert "Mask blur: 4" in out.info["infotexts"][0]
    hard = api.img2img(images=[init], mask_image=mask, prompt="a blue circle", seed=3, steps=4, width=32, height=32,
                       denoising_strength=0.75, inpainting_fill=1, mask_blur=0)
    assert np.array_equal(np.asarray(hard.image)[:, 16:], np.asarray(init)[:, 16:])
    info = api.png_info(out.image)
    assert info.info.startswith("a blue circle") and info.parameters["Seed"] == "3"


def init_and_mask(folder, seed: int, size: tuple[int, int], box: tuple[int, int, int, int]):
    """A noise init image of ``size`` and a mask white over ``box``, saved as init.png and mask.png."""
    w, h = size
    init = Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    init.save(folder / "init.png")
    mask.save(folder / "mask.png")
    return init, mask


def test_inpainting_as_a1111s_api_defaults_equals_the_cli(api, tmp_path):
    """A1111's API inpaints "Only masked" unless told otherwise (``inpaint_full_res``, webuiapi's default
    too), with a 4 px mask blur, from the masked area filled (``inpainting_fill`` 0): the image keeps the
    init image's size, as ``--only-masked --masked-content fill``."""
    init, mask = init_and_mask(tmp_path, 1, (64, 48), (40, 8, 48, 16))
    out = api.img2img(images=[init], mask_image=mask, prompt="a blue circle", seed=3, steps=4, width=32, height=32)
    assert out.image.size == (64, 48)
    assert "Inpaint area: Only masked, Masked area padding: 0, Masked content: fill" in out.info["infotexts"][0]
    cli = cli_pixels(tmp_path / "cli", "--prompt", "a blue circle", "--seed", "3", "--steps", "4", "--width", "32",
                     "--height", "32", "--init-image", tmp_path / "init.png", "--mask", tmp_path / "mask.png",
                     "--only-masked", "--masked-padding", "0", "--masked-content", "fill")
    assert np.array_equal(np.asarray(out.image), cli)


def test_resize_mode_mask_mode_and_latent_fills_as_the_cli(api, tmp_path):
    """A1111's ``resize_mode`` (1: Crop and resize), ``inpainting_mask_invert`` (Inpaint not masked) and
    ``inpainting_fill`` 2 (latent noise) are the CLI's ``--resize-mode``, ``--invert-mask`` and
    ``--masked-content``, pixel for pixel."""
    init, mask = init_and_mask(tmp_path, 2, (64, 32), (32, 0, 64, 32))
    common = ("--prompt", "a blue circle", "--seed", "3", "--steps", "4", "--width", "32", "--height", "32",
              "--init-image", tmp_path / "init.png")
    out = api.img2img(images=[init], prompt="a blue circle", seed=3, steps=4, width=32, height=32, resize_mode=1)
    assert "Resize mode: Crop and resize" in out.info["infotexts"][0]
    assert np.array_equal(np.asarray(out.image), cli_pixels(tmp_path / "crop", *common, "--resize-mode", "crop and resize"))
    out = api.img2img(images=[init], mask_image=mask, prompt="a blue circle", seed=3, steps=4, width=32, height=32,
                      inpaint_full_res=False, inpainting_mask_invert=1, inpainting_fill=2)
    assert {"Mask mode: Inpaint not masked", "Masked content: latent noise"} < set(out.info["infotexts"][0].split(", "))
    assert np.array_equal(np.asarray(out.image), cli_pixels(tmp_path / "invert", *common, "--mask", tmp_path / "mask.png",
                                                            "--invert-mask", "--masked-content", "latent noise"))


def test_the_hires_fix_as_the_cli(api, server, tmp_path):
    """A1111's ``enable_hr`` with its upscaler, scale and steps (webuiapi's defaults: Latent, 2, and the
    denoising strength it always sends) is the CLI's ``--hires``, pixel for pixel; a second pass with
    its own sampler is refused, not ignored."""
    import webuiapi
    out = api.txt2img(prompt="a red circle", seed=6, steps=3, width=32, height=32, enable_hr=True,
                      denoising_strength=0.6, hr_second_pass_steps=2, hr_upscaler=webuiapi.HiResUpscaler.LatentNearest)
    assert out.image.size == (64, 64)
    assert "Hires upscale: 2, Hires steps: 2, Hires upscaler: Latent (nearest)" in out.info["infotexts"][0]
    cli = cli_pixels(tmp_path / "cli", "--prompt", "a red circle", "--seed", "6", "--steps", "3", "--width", "32",
                     "--height", "32", "--hires", "--strength", "0.6", "--hires-steps", "2", "--hires-upscaler",
                     "latent (nearest)")
    assert np.array_equal(np.asarray(out.image), cli)
    reply = http(server[1], "POST", "/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2, "enable_hr": True,
                                                               "hr_sampler_name": "DDIM", "sampler_name": "Euler a"})
    assert reply.status_code == 400 and "hr_sampler_name: 'DDIM'" in reply.json()["detail"]


def test_save_images_writes_them_and_init_images_are_echoed_when_asked(api, server):
    """``save_images`` writes each PNG, with its infotext, under the data folder as A1111 lays out its
    outputs; ``include_init_images`` echoes the init image in ``parameters`` (``null`` otherwise)."""
    outputs = server[0].state.store.root.parent / "outputs"
    result = api.txt2img(prompt="a red circle", seed=11, steps=2, width=32, height=32, save_images=True)
    saved = sorted(outputs.glob("txt2img-images/*/*-11.png"))
    assert len(saved) == 1 and Image.open(saved[0]).info["parameters"] == result.info["infotexts"][0]
    assert np.array_equal(np.asarray(Image.open(saved[0]).convert("RGB")), np.asarray(result.image.convert("RGB")))
    api.txt2img(prompt="a red circle", seed=12, steps=2, width=32, height=32)           # not asked: nothing written
    assert not list(outputs.glob("*/*/*-12.png"))
    port = server[1]
    for include in (False, True):
        reply = http(port, "POST", "/sdapi/v1/img2img", json={
            "prompt": "x", "init_images": [RED_PNG], "steps": 2, "width": 32, "height": 32,
            "include_init_images": include}).json()
        assert reply["parameters"]["init_images"] == ([RED_PNG] if include else None)


def test_models_options_and_switching(api, server):
    titles = [m["title"] for m in api.get_sd_models()]
    assert "toy" in titles and "tiny-sd1" in titles
    assert api.util_get_current_model() == "toy"
    api.util_set_model("tiny-sd1")
    assert api.get_options()["sd_model_checkpoint"] == "tiny-sd1"
    result = api.txt2img(prompt="a dog", seed=2, steps=2, width=32, height=32)
    assert result.info["sd_model_name"] == "tiny-sd1"
    # a request may switch the model for itself alone (A1111's override_settings)
    result = api.txt2img(prompt="a dog", seed=2, steps=2, width=32, height=32,
                         override_settings={"sd_model_checkpoint": "toy"})
    assert result.info["sd_model_name"] == "toy" and api.get_options()["sd_model_checkpoint"] == "tiny-sd1"
    api.util_set_model("toy")
    names = [s["name"] for s in api.get_samplers()]
    assert "Euler a" in names and "DPM++ 2M" in names
    assert {s["label"] for s in api.get_schedulers()} >= {"Automatic", "Karras"}
    assert api.get_face_restorers() == [] and api.get_scripts() == {"txt2img": [], "img2img": []}
    assert [u["name"] for u in api.get_upscalers()] == ["None", "Lanczos", "Nearest"]       # the hires fix's
    assert [m["name"] for m in api.get_latent_upscale_modes()][:2] == ["Latent", "Latent (antialiased)"]
    assert "ram" in api.get_memory() and api.get_cmd_flags() is not None
    assert api.refresh_checkpoints() is None


def test_progress_preview_and_interrupt(api, server):
    seen = []
    done = {}

    def run():
        done["result"] = api.txt2img(prompt="a yellow cross", seed=9, steps=400, width=64, height=64)
    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.time() + 60
    while time.time() < deadline and len(seen) < 3:
        p = api.get_progress()
        if p["state"]["job"] and p["progress"] > 0 and p["current_image"]:
            seen.append(p)
        time.sleep(0.2)
    api.interrupt()
    thread.join(60)
    assert seen and 0 < seen[-1]["progress"] < 1 and seen[-1]["state"]["sampling_steps"] == 400
    Image.open(io.BytesIO(base64.b64decode(seen[-1]["current_image"])))          # a live preview
    assert len(done["result"].images) == 1                   # interrupted: what was made so far
    assert api.get_progress()["state"]["job"] == ""


def test_a_skip_moves_progress_to_the_next_batch(tiny_sd1):
    """As in the WebUI, a job of ``/progress`` is a batch (``job_count`` is ``n_iter``), and after
    ``/skip`` ends a batch early the next one's sampling steps count from 0."""
    from dreambooth import progress
    from dreambooth.generation.params import GenerationParams
    from dreambooth.generation.pipeline import load_generation_pipeline
    from dreambooth.generation.sampling import Controls, generate
    from dreambooth.server.engine import Progress
    pipeline = load_generation_pipeline(str(tiny_sd1), dtype=torch.float32)
    state = Progress(job="txt2img", job_count=2, per_job=2, sampling_steps=10)
    asked, seen = [], []

    def stop():                     # skip once the third step is done (asked within the fourth, at its first block)
        if state.job_no == 0 and state.sampling_step == 3 and not asked:
            asked.append(1)
            return "skip"
        return None

    def record(event):
        state(event)
        seen.append((state.job_no, state.sampling_step))
    with progress.subscribed(record):
        made = generate(pipeline, GenerationParams("a dog", steps=10, width=32, height=32, seed=1, batch_size=2,
                                                   batch_count=2), controls=Controls(stop=stop))
    assert len(made) == 4                                     # the skipped batch's images too, as the WebUI's
    assert seen[seen.index((0, 3)) + 1:][:2] == [(1, 0), (1, 1)], seen
    assert max(seen) == (2, 0) and all(step < 4 for job, step in seen if job == 0), seen


def test_live_previews_cost_nothing_unless_watched(api, server):
    """An API client that only waits for its images gets no preview decoded; one that polls gets
    them, by the method and period that ``/sdapi/v1/options`` sets, as the WebUI's options do."""
    engine = server[0].state.engine
    decoded = []
    hook = engine.pipeline.pipe.vae.decoder.register_forward_hook(lambda *args: decoded.append(1))
    before = api.get_options()
    try:
        api.set_options({"show_progress_every_n_steps": 1})
        api.txt2img(prompt="a red ball", seed=3, steps=12, width=32, height=32)
        assert len(decoded) == 1                                 # the image itself, no preview
        seen = []
        done = threading.Event()
        cheap = {"show_progress_type": "Approx cheap", "show_progress_grid": True}     # for this request alone
        thread = threading.Thread(target=lambda: (api.txt2img(prompt="a red ball", seed=3, steps=300, width=32, height=32,
                                                                batch_size=2, override_settings=cheap), done.set()))
        thread.start()
        while not done.is_set() and len(seen) < 2:
            image = api.get_progress()["current_image"]
            if image:
                seen.append(Image.open(io.BytesIO(base64.b64decode(image))))
            time.sleep(0.1)
        api.interrupt()
        thread.join(60)
        assert seen and seen[-1].size == (32, 16)                # the toy's latents, two side by side: no decode
        assert len(decoded) == 3                                 # the two images themselves
        assert api.get_options()["show_progress_type"] == "Full"
        api.set_options({"live_previews_enable": False})
        assert engine._tracked(lambda controls: controls.preview, 1, 1) is None
        assert engine._tracked(lambda controls: controls.preview, 1, 1, {"live_previews_enable": True}) is not None
    finally:
        hook.remove()
        api.set_options({k: before[k] for k in ("live_previews_enable", "show_progress_every_n_steps",
                                                "show_progress_type")})


def test_a_failed_preview_costs_the_request_nothing(server, monkeypatch):
    from dreambooth.server import engine as engine_module
    engine = server[0].state.engine

    def fail(*args):
        raise RuntimeError("out of memory")
    monkeypatch.setattr(engine_module, "preview_image", fail)
    engine.state.watched, engine.state.preview = True, None
    engine._preview(torch.zeros(1, 4, 4, 4))                     # no exception: the sampling goes on
    assert engine.state.preview is None


# ----- bad input ---------------------------------------------------------------------------------

def _png64(colour) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


RED_PNG = _png64((200, 30, 30))
BAD = [
    ("/sdapi/v1/txt2img", {"prompt": "x", "width": 100000}, 400, "width"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "steps": 10**6}, 400, "steps"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "batch_size": -1}, 400, "batch_size"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "sampler_name": "Foo"}, 400, "sampler_name"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "cfg_scale": "nan"}, 400, "cfg_scale"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "seed": -7}, 400, "seed"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "colour": "red"}, 422, "colour"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "enable_hr": True, "hr_checkpoint_name": "other"}, 400, "hr_checkpoint_name"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "enable_hr": True, "hr_upscaler": "ESRGAN_4x"}, 400, "hr_upscaler"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "styles": ["s"]}, 400, "styles"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "s_noise": 0.5}, 400, "s_noise"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "sampler_name": "Euler a", "eta": 0.5}, 400, "eta 0.5: Euler a draws"),
    ("/sdapi/v1/txt2img", {"prompt": "x <lora:nobody:1>", "steps": 1}, 400, "<lora:nobody>: no LoRA of that name; "
     "this server's are listed by GET /sdapi/v1/loras"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "override_settings": {"sd_model_checkpoint": "../../etc/passwd"}}, 400,
     "sd_model_checkpoint"),
    ("/sdapi/v1/img2img", {"prompt": "x", "init_images": ["!!!not base64!!!"]}, 400, "init_images[0]"),
    ("/sdapi/v1/img2img", {"prompt": "x", "init_images": [base64.b64encode(b"not an image").decode()]}, 400,
     "init_images[0]"),
    ("/sdapi/v1/img2img", {"prompt": "x", "init_images": ["http://127.0.0.1:1/cat.png"]}, 400, "URLs are not fetched"),
    ("/sdapi/v1/img2img", {"prompt": "x"}, 400, "init_images"),
    ("/sdapi/v1/img2img", {"prompt": "x", "init_images": [RED_PNG], "mask": RED_PNG, "mask_blur": 65}, 400,
     "mask_blur 65: must be from 0 to 64"),
    ("/sdapi/v1/img2img", {"prompt": "x", "init_images": [RED_PNG], "mask": RED_PNG, "mask_blur_x": 2}, 400,
     "mask_blur_x 2, mask_blur_y 4"),
    ("/sdapi/v1/img2img", {"prompt": "x", "init_images": [RED_PNG], "mask_round": False}, 400, "mask_round"),
    ("/sdapi/v1/img2img", {"prompt": "x", "init_images": [RED_PNG], "mask": RED_PNG, "inpainting_fill": 4}, 400,
     "inpainting_fill: 4 is not supported by this server (only 0, 1, 2, 3)"),
    ("/sdapi/v1/img2img", {"prompt": "x", "init_images": [RED_PNG], "resize_mode": 3}, 400,
     "resize_mode: 3 is not supported by this server (only 0, 1, 2)"),
    ("/sdapi/v1/options", {"sd_model_checkpoint": "../../etc/passwd"}, 400, "sd_model_checkpoint"),
    ("/sdapi/v1/options", {"sd_vae": "/etc/passwd"}, 400, "sd_vae"),
    ("/sdapi/v1/options", {"no_such_option": 1}, 400, "no_such_option"),
    ("/sdapi/v1/options", {"show_progress_type": "TAESD"}, 400, "show_progress_type"),
    ("/sdapi/v1/options", {"show_progress_every_n_steps": -5}, 400, "show_progress_every_n_steps"),
    ("/sdapi/v1/options", {"show_progress_every_n_steps": "10"}, 400, "show_progress_every_n_steps"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "override_settings": {"show_progress_type": "TAESD"}}, 400, "show_progress_type"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "override_settings": {"live_previews_enable": "yes"}}, 400,
     "live_previews_enable"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "override_settings": {"show_progress_grid": 1}}, 400, "show_progress_grid"),
    # options the server has at one value: refused at another, not stored and ignored
    ("/sdapi/v1/options", {"samples_format": "jpg"}, 400, "samples_format"),
    # Clip skip: 1 to 12, as the WebUI's slider
    ("/sdapi/v1/options", {"CLIP_stop_at_last_layers": 13}, 400, "CLIP_stop_at_last_layers 13: must be from 1 to 12"),
    ("/sdapi/v1/options", {"CLIP_stop_at_last_layers": "2"}, 400, "CLIP_stop_at_last_layers"),
    ("/sdapi/v1/options", {"CLIP_stop_at_last_layers": 2.5}, 400, "CLIP_stop_at_last_layers"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "override_settings": {"CLIP_stop_at_last_layers": 0}}, 400,
     "override_settings: CLIP_stop_at_last_layers 0"),
    ("/sdapi/v1/png-info", {"image": "%%%"}, 400, "image"),
    # what strangers sent: each named as it is
    ("/sdapi/v1/txt2img", {"prompt": "x", "restore_faces": True}, 400, "restore_faces: true is not supported by this "
     "server (only null, false)"),
    ("/sdapi/v1/options", {"sd_model_checkpoint": None}, 400, "sd_model_checkpoint: None names no model"),
    ("/sdapi/v1/options", {"sd_model_checkpoint": "toy [0123456789]"}, 400, "hash is ["),
]


@pytest.mark.parametrize("path, body, status, needle", BAD)
def test_bad_input_is_a_4xx_naming_the_field(server, path, body, status, needle):
    port = server[1]
    reply = http(port, "POST", path, json=body)
    assert reply.status_code == status, reply.text
    detail = reply.json()["detail"]
    assert needle in detail and "\n" not in detail and "Traceback" not in detail, detail
    assert http(port, "GET", "/sdapi/v1/sd-models").status_code == 200          # still serving


def test_a_decompression_bomb_is_refused(server):
    from test_nothing_lost import _png_header
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        from pathlib import Path
        bomb = base64.b64encode(_png_header(Path(tmp) / "b.png", 20_000, 20_000).read_bytes()).decode()
    reply = http(server[1], "POST", "/sdapi/v1/img2img", json={"prompt": "x", "init_images": [bomb]})
    assert reply.status_code == 400 and "init_images[0]: over" in reply.json()["detail"], reply.text
    reply = http(server[1], "POST", "/sdapi/v1/png-info", json={"image": bomb})
    assert reply.status_code == 400 and "image: over" in reply.json()["detail"], reply.text


def test_bodies_of_the_wrong_kind_say_what_to_send(server):
    reply = http(server[1], "POST", "/sdapi/v1/txt2img", content=b'{"prompt": "x",,}',
                 headers={"content-type": "application/json"})
    assert reply.status_code == 422 and reply.json()["detail"].startswith("body: not valid JSON"), reply.text
    reply = http(server[1], "POST", "/sdapi/v1/txt2img", data={"prompt": "x"})
    assert reply.status_code == 422 and "application/json" in reply.json()["detail"], reply.text
    reply = http(server[1], "POST", "/sdapi/v1/txt2img", json=[{"prompt": "x"}])        # JSON, but a list
    assert reply.json()["detail"] == "body: a JSON object of fields ({...}), not a list or a single value", reply.text
    reply = http(server[1], "POST", "/dreambooth/v1/jobs", json={"instance_prompt": "a sks dog"})
    assert reply.status_code == 422 and "multipart form" in reply.json()["detail"], reply.text
    deep = ("[" * 100_000 + "]" * 100_000).encode()
    reply = http(server[1], "POST", "/sdapi/v1/options", content=deep, headers={"content-type": "application/json"})
    assert reply.status_code == 400 and "nested too deeply" in reply.json()["detail"], reply.text


# ----- security ----------------------------------------------------------------------------------

def test_every_route_needs_auth_when_it_is_on(tmp_path):
    import httpx
    import webuiapi

    from dreambooth.server.app import ServerSettings
    with served(ServerSettings(model="toy", data_dir=tmp_path / "data", api_auth="ann:s3cret,bob:hunter2")) as (app, port):
        routes = sorted({p for p in app.openapi()["paths"] if "{" not in p} | {"/docs", "/openapi.json", "/redoc"})
        assert "/sdapi/v1/loras" in routes and "/dreambooth/v1/jobs" in routes and "/docs" in routes
        for path in routes:
            for auth in (None, ("ann", "wrong"), ("eve", "s3cret")):
                assert http(port, "GET", path, auth=auth).status_code == 401, (path, auth)
        assert http(port, "GET", "/sdapi/v1/loras", auth=("bob", "hunter2")).status_code == 200
        assert http(port, "GET", "/dreambooth/v1/jobs", auth=("ann", "s3cret")).status_code == 200
        client = webuiapi.WebUIApi(host="127.0.0.1", port=port, username="ann", password="s3cret")
        assert client.txt2img(prompt="a dog", steps=1, width=32, height=32).image.size == (32, 32)
        assert httpx.post(f"http://127.0.0.1:{port}/sdapi/v1/txt2img", json={"prompt": "x"}).status_code == 401


def test_listen_without_auth_refuses_to_start(tmp_path):
    code, _, err = run_cli("serve", "--listen", "--data-dir", tmp_path)
    assert code == 2 and "--api-auth" in err and err.count("\n") == 1
    code, _, err = run_cli("serve", "--api-auth", "nocolon", "--data-dir", tmp_path)
    assert code == 2 and "--api-auth" in err


def test_cors_is_off_unless_asked(server):
    reply = http(server[1], "OPTIONS", "/sdapi/v1/txt2img",
                 headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in {k.lower() for k in reply.headers}


def test_control_routes_answer_while_generations_wait_for_the_device(server):
    """Generations waiting for the device each hold a worker thread (40 in all), and a model switch
    waits for it too: ping, progress, interrupt and the job list answer at once all the same (they
    waited for the queue to drain, and a switch froze every route)."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    app, port = server
    url, engine = f"http://127.0.0.1:{port}", app.state.engine
    body = {"prompt": "a dog", "steps": 1, "width": 32, "height": 32}
    with ThreadPoolExecutor(50) as pool:
        with engine.gate.request():                # the device busy
            waiting = [pool.submit(httpx.post, f"{url}/sdapi/v1/txt2img", json=body, timeout=120) for _ in range(45)]
            switch = pool.submit(httpx.post, f"{url}/sdapi/v1/options", json={"sd_model_checkpoint": "toy"}, timeout=120)
            time.sleep(1.5)
            for method, path in (("GET", "/internal/ping"), ("GET", "/sdapi/v1/progress"),
                                 ("POST", "/sdapi/v1/interrupt"), ("GET", "/dreambooth/v1/jobs")):
                start = time.monotonic()
                reply = httpx.request(method, url + path, timeout=20)
                assert reply.status_code == 200 and time.monotonic() - start < 3, (path, time.monotonic() - start)
        assert [f.result().status_code for f in waiting] == [200] * 45 and switch.result().status_code == 200


def test_a_request_interrupted_before_its_first_image_is_an_empty_reply(server, monkeypatch):
    """Interrupted within its first step, a batch makes no image: the reply has none (it was a 500)."""
    import json

    import httpx
    app, port = server
    engine = app.state.engine
    monkeypatch.setattr(engine, "generate", lambda *args, **kwargs: ([], (engine.entry, engine.vae)))
    reply = httpx.post(f"http://127.0.0.1:{port}/sdapi/v1/txt2img", timeout=60,
                       json={"prompt": "a dog", "steps": 5, "width": 32, "height": 32, "batch_size": 2, "save_images": True})
    assert reply.status_code == 200, reply.text
    assert reply.json()["images"] == [] and json.loads(reply.json()["info"])["infotexts"] == []
