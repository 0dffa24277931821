"""The web UI in a real browser: headless Chromium (Debian's ``chromium``, installed by .ci/run) driven
by Playwright, on the toy model. With ``DREAMBOOTH_UI_SCREENSHOTS=docs/ui`` the tests also save a
screenshot of each tab there (the README shows them)."""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from test_server import served

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# CI sets DREAMBOOTH_REQUIRE_BROWSER=1 so that a missing browser fails instead of skipping.
pytestmark = pytest.mark.skipif(CHROMIUM is None and not os.environ.get("DREAMBOOTH_REQUIRE_BROWSER"),
                                reason="Debian's chromium is not installed (apt-get install chromium)")
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
SHOTS = os.environ.get("DREAMBOOTH_UI_SCREENSHOTS")


@contextlib.contextmanager
def ui_server(data_dir: Path, **settings):
    from dreambooth.server.app import ServerSettings
    from dreambooth.ui.app import mount_ui
    with served(ServerSettings(model="toy", data_dir=data_dir, **settings), mount=mount_ui) as (app, port):
        yield app, port


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    with ui_server(tmp_path_factory.mktemp("ui") / "data") as (app, port):
        yield app, f"http://127.0.0.1:{port}"


@pytest.fixture
def page(browser, site):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.goto(site[1] + "/", wait_until="networkidle")
    yield page
    context.close()


def shot(page, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        # earlier checks' toasts hidden, not removed: gradio shows the next ones in the same place
        page.evaluate("document.querySelectorAll('.toast-wrap').forEach(e => e.style.display = 'none')")
        page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)
        page.evaluate("document.querySelectorAll('.toast-wrap').forEach(e => e.style.display = '')")


def toast(page, text: str) -> None:
    """Wait for an error toast holding ``text``; no traceback in any."""
    page.wait_for_function("t => Array.from(document.querySelectorAll('.toast-body')).some(e => e.textContent.includes(t))",
                           arg=text, timeout=30_000)
    shown = page.evaluate("Array.from(document.querySelectorAll('.toast-body')).map(e => e.textContent).join(' ')")
    assert "Traceback" not in shown and "preprocess" not in shown, shown


def number(page, selector: str, value) -> None:
    page.fill(f"{selector} input[type=number]", str(value))
    page.press(f"{selector} input[type=number]", "Enter")


def txt2img(page, prompt: str, seed: int, size: int = 32, steps: int = 20) -> Path:
    """Fill txt2img, generate with Ctrl+Enter, return the gallery image's bytes as downloaded."""
    page.click("button[role=tab][data-tab-id='txt2img']")
    page.fill("#txt2img_prompt textarea", prompt)
    page.fill("#txt2img_seed input", str(seed))
    number(page, "#txt2img_width", size)
    number(page, "#txt2img_height", size)
    number(page, "#txt2img_steps", steps)
    page.press("#txt2img_prompt textarea", "Control+Enter")             # A1111's shortcut
    page.wait_for_function(f"document.querySelectorAll('#txt2img_gallery img').length > 0 && "
                           f"document.querySelector('#txt2img_progress').innerText.startsWith('done')", timeout=120_000)
    src = page.locator("#txt2img_gallery img").first.get_attribute("src")
    return page.request.get(src).body()


def test_txt2img_equals_the_api_and_the_cli(page, site, tmp_path):
    import webuiapi
    assert page.input_value("#txt2img_width input[type=number]") == "32"      # the toy's own size, not 512
    assert "Drop Media" not in page.inner_text("#txt2img_gallery")             # an output, not an upload
    png = txt2img(page, "a red circle on a blue background", 7)
    saved = Path(site[0].state.store.root).parent / "outputs" / "txt2img-images" / time.strftime("%Y-%m-%d")
    assert any(Image.open(p).tobytes() == Image.open(io.BytesIO(png)).tobytes() for p in saved.glob("*.png"))
    image = Image.open(io.BytesIO(png))
    assert "a red circle on a blue background" in image.info["parameters"] and "Seed: 7," in image.info["parameters"]
    shot(page, "txt2img")
    port = int(site[1].rsplit(":", 1)[1])
    api = webuiapi.WebUIApi(host="127.0.0.1", port=port).txt2img(
        prompt="a red circle on a blue background", seed=7, steps=20, width=32, height=32)
    code, stdout, err = run_cli("generate", "--model", "toy", "--prompt", "a red circle on a blue background",
                                "--seed", "7", "--steps", "20", "--width", "32", "--height", "32", "--output", tmp_path)
    assert code == 0, err
    cli = np.asarray(Image.open(stdout.split()[-1]))
    assert np.array_equal(np.asarray(image), cli) and np.array_equal(np.asarray(api.image), cli)
    page.click("#txt2img_send")                    # as the WebUI: the image and its settings
    page.wait_for_function("(document.querySelector('#img2img_prompt textarea') || {value: ''}).value"
                           ".includes('a red circle')", timeout=30_000)
    assert page.input_value("#img2img_seed input") == "7" and page.input_value("#img2img_width input[type=number]") == "32"
    assert page.input_value("#img2img_steps input[type=number]") == "20"


def open_hires_fix(page) -> None:
    if not page.is_visible("#txt2img_enable_hr input[type=checkbox]"):
        page.click("#txt2img_hires_fix button:has-text('Hires. fix')")      # the accordion opens
    page.wait_for_selector("#txt2img_enable_hr input[type=checkbox]", state="visible")


def test_the_hires_fix_in_the_browser(page):
    page.click("button[role=tab][data-tab-id='txt2img']")
    open_hires_fix(page)
    page.check("#txt2img_enable_hr input[type=checkbox]")
    number(page, "#txt2img_hires_steps", 2)
    png = txt2img(page, "a white circle", 3, steps=4)
    page.uncheck("#txt2img_enable_hr input[type=checkbox]")                   # as the next test expects it
    image = Image.open(io.BytesIO(png))
    assert image.size == (64, 64)
    assert "Denoising strength: 0.7, Hires upscale: 2, Hires steps: 2, Hires upscaler: Latent" in image.info["parameters"]


def test_png_info_sends_parameters_to_txt2img(page, tmp_path):
    from dreambooth.images import write_png
    png = write_png(Image.new("RGB", (32, 32), (10, 200, 10)), tmp_path / "a.png",
                    "a purple cross\nNegative prompt: blurry\nSteps: 12, Sampler: DPM++ 2M Karras, CFG scale: 5, "
                    "Seed: 4242, Size: 32x32, Clip skip: 2, Denoising strength: 0.5, Hires upscale: 1.5, "
                    "Hires steps: 3, Hires upscaler: Lanczos")
    page.click("button[role=tab][data-tab-id='txt2img']")
    page.fill("#txt2img_prompt textarea", "my own prompt")
    page.click("button[role=tab][data-tab-id='pnginfo']")
    (tmp_path / "garbage.png").write_text("not an image at all")
    page.set_input_files("#pnginfo_image input[type=file]", str(tmp_path / "garbage.png"))
    toast(page, "Image: not a readable image")                      # one line, not gradio's preprocessing error
    bare = tmp_path / "bare.png"
    Image.new("RGB", (32, 32)).save(bare)                           # no parameters: nothing is sent
    page.set_input_files("#pnginfo_image input[type=file]", str(bare))
    page.wait_for_function("document.querySelector('#pnginfo_text textarea').value.includes('no generation')",
                           timeout=30_000)
    page.click("#pnginfo_send")
    toast(page, "no generation parameters to send")
    assert page.input_value("#txt2img_prompt textarea") == "my own prompt"
    page.set_input_files("#pnginfo_image input[type=file]", str(png))
    page.wait_for_function("document.querySelector('#pnginfo_text textarea').value.includes('purple')", timeout=30_000)
    shot(page, "pnginfo")
    page.click("#pnginfo_send")
    page.wait_for_function("document.querySelector('#txt2img_prompt textarea').value === 'a purple cross'",
                           timeout=30_000)
    assert page.input_value("#txt2img_negative textarea") == "blurry"
    assert page.input_value("#txt2img_seed input") == "4242"
    assert page.input_value("#txt2img_steps input[type=number]") == "12"
    assert page.input_value("#txt2img_clip_skip input[type=number]") == "2"
    open_hires_fix(page)
    assert page.is_checked("#txt2img_enable_hr input[type=checkbox]")            # the hires fix, as the image had it
    assert page.input_value("#txt2img_hires_steps input[type=number]") == "3"
    # generated as sent: the CLI's remake from the same infotext, pixel for pixel
    page.click("#txt2img_generate")
    page.wait_for_function("document.querySelectorAll('#txt2img_gallery img').length > 0 && "
                           "document.querySelector('#txt2img_progress').innerText.startsWith('done')", timeout=120_000)
    made = page.request.get(page.locator("#txt2img_gallery img").first.get_attribute("src")).body()
    code, stdout, err = run_cli("generate", "--from-image", png, "--model", "toy", "--output", tmp_path / "cli")
    assert code == 0, err
    page.uncheck("#txt2img_enable_hr input[type=checkbox]")                   # as the next test expects it
    assert "Clip skip: 2" in Image.open(io.BytesIO(made)).info["parameters"]
    assert Image.open(io.BytesIO(made)).size == (48, 48)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(made))), np.asarray(Image.open(stdout.split()[-1])))


def test_train_a_toy_subject_and_generate_it(page, site):
    from dreambooth.toy.demo import write_instance_images
    from dreambooth.toy.world import Subject
    photos = write_instance_images(Subject("square", "green", "checker", "white"),
                                   Path(site[0].state.store.root).parent / "photos", ("red", "blue", "red"))
    page.click("button[role=tab][data-tab-id='train']")
    page.click("#train_cancel")                           # no job yet: it says so
    toast(page, "Job: none selected")
    assert "3 to 20 work best" in page.inner_text("#train_photos")
    page.fill("#train_instance textarea", "a sks square")
    page.click("#train_start")                            # the real limits: 1 to 50 photos
    toast(page, "Photos of the subject: none given; upload 1 to 50")
    page.set_input_files("#train_photos input[type=file]", [str(p) for p in photos])
    page.fill("#train_instance textarea", "a sks square")
    page.fill("#train_class textarea", "a square")
    page.click("#train_preset input")
    page.click("[role=option]:has-text('toy')")
    # the form shows what the preset trains with (full, 1200 steps, batch 2), and sends only what is changed
    page.wait_for_function("document.querySelector('#train_steps input').value === '1200'", timeout=30_000)
    assert page.is_checked("#train_method input[value='full']")
    page.fill("#train_steps input", "6")
    page.fill("#train_name textarea", "ui_square")
    shot(page, "train")
    page.click("text=Advanced (every training setting)")
    assert page.input_value("#train_batch_size input") == "2"          # the preset's, not the default 1
    page.fill("#train_num_class_images input", "2")
    page.fill("#train_class_steps input", "2")
    page.fill("#train_validate_every input", "3")
    page.fill("#train_validation_steps input", "5")
    page.fill("#train_clip_skip input", "2")        # the toy's text encoder is SD1's CLIP, 3 layers
    page.click("#train_start")
    page.wait_for_function("document.querySelector('#train_status').innerText.includes('100%') && "
                           "document.querySelector('#train_status').innerText.includes('done')", timeout=120_000)
    page.wait_for_function("document.querySelectorAll('#train_validation img').length >= 2", timeout=30_000)
    assert "pick ui_square in the Stable Diffusion checkpoint list" in page.inner_text("#train_status")
    sent = site[0].state.store.all()[-1].request["overrides"]
    assert sent["max_steps"] == 6 and "method" not in sent and "batch_size" not in sent, sent   # the preset's stand
    page.click("text=Advanced (every training setting)")          # folded again for the screenshot
    shot(page, "train-done")
    (done,) = [j.id for j in site[0].state.store.all() if j.state == "done"]
    fresh = page.context.new_page()                 # a second tab: the trained model is listed, no Refresh
    fresh.goto(site[1] + "/", wait_until="networkidle")
    fresh.click("#checkpoint input")
    fresh.wait_for_selector("[role=option]:has-text('ui_square')", timeout=30_000)
    fresh.press("#checkpoint input", "Escape")
    fresh.click("button[role=tab][data-tab-id='train']")        # and the job, as the page left it
    fresh.wait_for_function(f"document.querySelector('#train_job textarea').value === '{done}'", timeout=30_000)
    fresh.wait_for_function("document.querySelector('#train_status').innerText.includes('ui_square')", timeout=30_000)
    fresh.click("#train_cancel")
    toast(fresh, "done; nothing to cancel")
    fresh.close()
    page.click("#checkpoint input")
    page.click("[role=option]:has-text('ui_square')")
    # loaded (not "loading ui_square", gradio's progress line), and it says at which clip skip the model trained
    page.wait_for_function("document.querySelector('#switching').innerText.includes('ui_square (trained at Clip skip 2)')",
                           timeout=60_000)
    png = txt2img(page, "a sks square on a yellow background", 3, steps=10)
    info = Image.open(io.BytesIO(png)).info["parameters"]
    assert "Model: ui_square" in info and "Clip skip: 2" in info     # the slider followed the model
    page.click("button[role=tab][data-tab-id='evaluate']")        # the model and the job are listed there too
    page.click("#eval_model input")
    page.wait_for_selector("[role=option]:has-text('ui_square')", timeout=30_000)
    page.click("#eval_job input")                                  # by its name, not its id
    page.wait_for_selector("[role=option]:has-text('ui_square (full, on toy)')", timeout=30_000)


def test_img2img_and_evaluate_tabs_render(page, tmp_path, monkeypatch):
    from dreambooth.toy.demo import write_instance_images
    from dreambooth.toy.world import Subject
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    photos = write_instance_images(Subject("circle", "red", "dots", "white"), tmp_path / "photos", ("blue",) * 3)
    page.click("button[role=tab][data-tab-id='img2img']")
    page.wait_for_selector("#img2img_generate")
    for control in ("#img2img_strength", "#img2img_mask_blur", "#img2img_masked_content", "#img2img_inpaint_area",
                    "#img2img_padding", "#img2img_resize_mode", "#img2img_mask_mode"):
        assert page.is_visible(control), control                 # the WebUI's inpainting settings
    shot(page, "img2img")
    assert page.input_value("#img2img_height input[type=number]") == "32"      # the model's own size
    assert page.locator("#img2img_image").bounding_box()["y"] < page.locator("#img2img_steps").bounding_box()["y"]
    page.click("button[role=tab][data-tab-id='evaluate']")
    page.wait_for_selector("#eval_run")
    page.click("#eval_run")                        # no photos: a one-line message, no traceback
    page.wait_for_function("document.querySelector('#eval_message').innerText.includes('photos')", timeout=30_000)
    assert "photos" in page.inner_text("#eval_message") and "Traceback" not in page.content()
    page.set_input_files("#eval_photos input[type=file]", [str(p) for p in photos])
    page.fill("#eval_class textarea", "circle")
    page.click("#eval_run")                        # the kind picks the paper's prompts: asked, not assumed
    page.wait_for_function("document.querySelector('#eval_message').innerText.includes('Kind')", timeout=30_000)
    page.click("#eval_kind label:has-text('object')")
    page.click("#eval_run")                        # no evaluation models cached here: the tab names the download
    page.wait_for_function("document.querySelector('#eval_message').innerText.includes('hf download')", timeout=30_000)
    toast(page, "not on this server; its operator provides")  # a toast, as the other tabs' errors
    assert "--dino-model" not in page.inner_text("#eval_message")     # the page's words, not the CLI's
    shot(page, "evaluate")


def test_errors_are_one_line(page, capfd):
    txt2img(page, "a white circle", 1, steps=4)
    number(page, "#txt2img_width", 33)
    page.click("#txt2img_generate")
    toast(page, "Width 33: must be a multiple of 8")          # the field's label, not the CLI's --width
    # the last run's image and info are gone: they are not this run's
    page.wait_for_function("document.querySelector('#txt2img_progress').innerText.includes('error')", timeout=30_000)
    assert page.locator("#txt2img_gallery img").count() == 0 and page.input_value("#txt2img_info textarea") == ""
    number(page, "#txt2img_width", 4096)        # past the slider (as typed): one line, no traceback in the log
    toast(page, "Width 4096: from 8 to 2048")
    assert "Traceback" not in capfd.readouterr().err
    page.fill("#txt2img_prompt textarea", "a dog <lora:nobody:1>")
    number(page, "#txt2img_width", 32)
    number(page, "#txt2img_height", 32)
    page.click("#txt2img_generate")
    page.wait_for_function("Array.from(document.querySelectorAll('.toast-body')).some("
                           "e => e.textContent.includes('<lora:nobody>'))", timeout=60_000)
    text = page.evaluate("Array.from(document.querySelectorAll('.toast-body')).map(e => e.textContent).join(' ')")
    assert "no LoRA of that name" in text and "Traceback" not in text
    assert "the LoRA list above" in text and "/sdapi" not in text


def test_a_fresh_page_shows_the_loaded_model_and_its_size(browser, tmp_path, tiny_sd1):
    models = tmp_path / "models"
    shutil.copytree(tiny_sd1, models / "tiny-sd1")                 # made for 64 px, the toy for 32
    with ui_server(tmp_path / "data", models_dir=str(models)) as (_, port):
        first = browser.new_context().new_page()
        first.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle")
        assert first.input_value("#txt2img_width input[type=number]") == "32"
        first.click("#checkpoint input")
        first.click("[role=option]:has-text('tiny-sd1')")
        first.wait_for_function("document.querySelector('#switching').innerText.includes('loaded tiny-sd1')",
                                timeout=60_000)
        for field in ("#txt2img_width", "#txt2img_height"):            # the size follows the model
            first.wait_for_function(f"(document.querySelector('{field} input[type=number]') || {{}}).value === '64'",
                                    timeout=30_000)
        first.click("button[role=tab][data-tab-id='img2img']")
        assert first.input_value("#img2img_width input[type=number]") == "64"
        second = browser.new_context().new_page()                  # a reload, a second tab: the server's model
        second.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle")
        for field, value in (("#checkpoint input", "tiny-sd1"), ("#txt2img_width input[type=number]", "64")):
            second.wait_for_function(f"(document.querySelector('{field}') || {{}}).value === '{value}'", timeout=30_000)
        second.click("button[role=tab][data-tab-id='evaluate']")
        second.wait_for_function("(document.querySelector('#eval_model input') || {}).value === 'tiny-sd1'",
                                 timeout=30_000)
        first.click("#checkpoint input")                         # switched in one tab: the other follows
        first.click("[role=option]:has-text('toy')")
        second.wait_for_function("(document.querySelector('#checkpoint input') || {}).value === 'toy'",
                                 timeout=30_000)
        first.context.close()
        second.context.close()


def test_login_when_auth_is_on(browser, tmp_path):
    with ui_server(tmp_path / "data", api_auth="ann:s3cret") as (_, port):
        anonymous = browser.new_context()
        assert anonymous.request.get(f"http://127.0.0.1:{port}/").status == 401       # the browser asks for a login
        with pytest.raises(Exception, match="AUTH"):
            anonymous.new_page().goto(f"http://127.0.0.1:{port}/")
        anonymous.close()
        context = browser.new_context(http_credentials={"username": "ann", "password": "s3cret"})
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle")
        png = txt2img(page, "a white circle", 1, steps=4)
        assert Image.open(io.BytesIO(png)).size == (32, 32)
        context.close()
