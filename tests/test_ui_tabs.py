"""The web UI in a real browser (as ``test_ui.py``): two tabs at once, grids, numbers typed past a
control, remembered settings, and the Train form against what a job trains with."""
from __future__ import annotations

import io
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from test_ui import browser, number, page, pytestmark, site, toast, ui_server  # noqa: F401 (fixtures, the skip)

LONG = dict(steps=50, size=128)      # a generation that runs for seconds on the toy (two CPUs: ~15 s)


def open_tab(browser, url: str):
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.goto(url + "/", wait_until="networkidle")
    return page


def fill(page, prompt: str, seed: int, steps: int, size: int) -> None:
    page.fill("#txt2img_prompt textarea", prompt)
    page.fill("#txt2img_seed input", str(seed))
    for field, value in (("#txt2img_steps", steps), ("#txt2img_width", size), ("#txt2img_height", size)):
        number(page, field, value)


def progress_text(page) -> str:
    return page.inner_text("#txt2img_progress")


def done(page, timeout: int = 120_000) -> None:
    page.wait_for_function("document.querySelector('#txt2img_progress').innerText.startsWith('done')", timeout=timeout)


def test_each_tab_sees_and_stops_its_own_generation(browser, site):
    import webuiapi
    app, url = site
    first, second = open_tab(browser, url), open_tab(browser, url)
    fill(first, "a red circle on a blue background", 5, **LONG)
    fill(second, "a yellow cross on a black background", 6, 4, 32)
    first.click("#txt2img_generate")
    first.wait_for_function("document.querySelector('#txt2img_progress').innerText.includes('ETA')", timeout=60_000)
    second.click("#txt2img_generate")
    for _ in range(4):        # the second tab waits: none of the first's progress, ETA or preview
        second.wait_for_timeout(500)
        assert progress_text(second).startswith("waiting"), progress_text(second)
        assert second.locator("#txt2img_preview img").count() == 0
    assert "ETA" in progress_text(first)
    second.click("#txt2img_interrupt")          # its own request, still waiting: cancelled, the first's runs on
    second.wait_for_function("document.querySelector('#txt2img_progress').innerText.includes('interrupted before it "
                             "started')", timeout=60_000)
    done(first)
    made = first.request.get(first.locator("#txt2img_gallery img").first.get_attribute("src")).body()
    port = int(url.rsplit(":", 1)[1])
    whole = webuiapi.WebUIApi(host="127.0.0.1", port=port).txt2img(          # all its steps: not interrupted
        prompt="a red circle on a blue background", seed=5, steps=LONG["steps"], width=LONG["size"], height=LONG["size"])
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(made))), np.asarray(whole.image))
    outputs = Path(app.state.store.root).parent / "outputs"
    assert not any("yellow cross" in Image.open(p).info["parameters"] for p in outputs.rglob("*.png"))
    first.context.close()
    second.context.close()


def test_several_images_and_plots_get_their_grid_among_the_grids(page, site):
    day = time.strftime("%Y-%m-%d")
    outputs = Path(site[0].state.store.root).parent / "outputs"
    grids, images = outputs / "txt2img-grids" / day, outputs / "txt2img-images" / day
    before = set(grids.glob("*.png")) if grids.is_dir() else set()
    fill(page, "a white circle", 3, 3, 32)
    number(page, "#txt2img_batch_count", 2)
    number(page, "#txt2img_batch_size", 2)
    page.click("#txt2img_generate")
    done(page)
    assert page.locator("#txt2img_gallery img").count() == 5              # the grid first, as A1111 and the API
    (grid,) = set(grids.glob("*.png")) - before
    assert grid.name.startswith("grid-") and Image.open(grid).size == (64, 64)
    first = page.request.get(page.locator("#txt2img_gallery img").first.get_attribute("src")).body()
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(first))), np.asarray(Image.open(grid)))
    number(page, "#txt2img_batch_count", 1)
    number(page, "#txt2img_batch_size", 1)
    xyz_plot(page, "Steps: 2, 3")
    assert len(set(grids.glob("grid-*.png")) - before) == 2                 # the plot's too, not among the images
    assert not list(images.glob("grid-*.png"))


def test_a_number_past_a_control_is_set_and_said_and_a_fractional_seed_refused(page):
    page.fill("#txt2img_prompt textarea", "a white circle")
    number(page, "#txt2img_steps", 500)
    toast(page, "Sampling steps 500: from 1 to 150; set to 150")
    page.wait_for_function("document.querySelector('#txt2img_steps input[type=number]').value === '150'",
                           timeout=10_000)                                  # what the run will use, shown
    number(page, "#txt2img_steps", 3)
    page.fill("#txt2img_seed input", "1.5")
    page.click("#txt2img_generate")
    toast(page, "Seed 1.5: give a whole number")                           # not 2, unsaid
    assert page.locator("#txt2img_gallery img").count() == 0


def test_the_clip_skip_survives_a_reload(page):
    number(page, "#txt2img_clip_skip", 2)
    page.wait_for_timeout(1500)                                            # (saved in the browser's storage)
    page.reload(wait_until="networkidle")
    page.wait_for_function("document.querySelector('#txt2img_clip_skip input[type=number]').value === '2'",
                           timeout=10_000)


def train_form(page) -> dict:
    return {"method": page.locator("#train_method input:checked").get_attribute("value"),
            "steps": page.input_value("#train_steps input")}


def test_train_with_no_preset_sends_what_the_form_changed(page, site, tmp_path):
    """The toy loaded, Preset left at (none): the form shows the toy's own settings, which a job
    trains with, and Train sends only what was changed (not every default as an override)."""
    from dreambooth.toy.demo import write_instance_images
    from dreambooth.toy.world import Subject
    photos = write_instance_images(Subject("cross", "white", "dots", "black"), tmp_path / "photos", ("red",) * 2)
    page.click("button[role=tab][data-tab-id='train']")
    assert train_form(page) == {"method": "full", "steps": "1200"}
    page.click("text=Advanced (every training setting)")
    assert page.input_value("#train_resolution textarea") == "32"          # not empty (which became null)
    assert page.input_value("#train_alpha textarea") == ""                 # empty, as its label says: not 0
    page.set_input_files("#train_photos input[type=file]", [str(p) for p in photos])
    page.fill("#train_instance textarea", "a sks cross")
    page.fill("#train_name textarea", "no_preset")
    page.fill("#train_steps input", "")
    page.click("#train_start")
    toast(page, "Steps: empty; give a value (the toy model's: 1200)")      # said empty, not 0
    page.fill("#train_steps input", "2")
    page.click("#train_start")
    page.wait_for_function("document.querySelector('#train_status').innerText.includes('queued') || "
                           "document.querySelector('#train_status').innerText.includes('running')", timeout=30_000)
    store = site[0].state.store
    job = store.all()[-1]
    site[0].state.runner.cancel(job.id)                                    # (what it sent is all this checks)
    assert job.request["overrides"] == {"max_steps": 2} and job.request["preset"] is None
    for _ in range(600):              # ended before the next test (loading a model meanwhile would race its setup)
        if store.get(job.id).state in ("cancelled", "done", "failed"):
            break
        time.sleep(0.1)


def test_a_switch_waits_for_the_generation_and_the_train_form_follows_the_model(browser, tmp_path, tiny_sd1):
    models = tmp_path / "models"
    shutil.copytree(tiny_sd1, models / "tiny-sd1")
    with ui_server(tmp_path / "data", models_dir=str(models)) as (_, port):
        url = f"http://127.0.0.1:{port}"
        generating, switching = open_tab(browser, url), open_tab(browser, url)
        switching.click("button[role=tab][data-tab-id='train']")
        switching.fill("#train_steps input", "7")                          # the user's own: it stays
        fill(generating, "a red circle on a blue background", 5, **LONG)
        generating.click("#txt2img_generate")
        generating.wait_for_function("document.querySelector('#txt2img_progress').innerText.includes('ETA')",
                                     timeout=60_000)
        switching.click("#checkpoint input")
        switching.click("[role=option]:has-text('tiny-sd1')")
        switching.wait_for_function("document.querySelector('#switching').innerText.includes('waiting for the "
                                    "generation under way to finish, then loading tiny-sd1')", timeout=30_000)
        assert "0.0%" not in switching.inner_text("#switching")
        switching.wait_for_function("document.querySelector('#switching').innerText.includes('loaded tiny-sd1')",
                                    timeout=120_000)
        assert train_form(switching) == {"method": "lora", "steps": "7"}     # the defaults for a model of its own
        generating.click("button[role=tab][data-tab-id='train']")          # the other tab's form follows too
        generating.wait_for_function("document.querySelector('#train_steps input').value === '400'", timeout=30_000)
        generating.context.close()
        switching.context.close()


def test_a_seed_past_64_bits_is_one_line_and_the_page_goes_on(page):
    """gradio cannot write such a number back to the page (the saved settings): its stream broke."""
    page.fill("#txt2img_prompt textarea", "a white circle")
    number(page, "#txt2img_steps", 2)
    number(page, "#txt2img_seed", "99999999999999999999")                # Enter: the saved settings too
    page.click("#txt2img_generate")
    toast(page, "must be -1 (random) or from 0 to 4294967295")
    assert page.input_value("#txt2img_seed input") == "99999999999999999999"     # as typed, not reset
    page.fill("#txt2img_seed input", "3")
    page.click("#txt2img_generate")
    done(page)


def test_a_closed_tab_stops_its_generation_and_an_other_tab_sees_and_interrupts_a_run(browser, site):
    app, url = site
    engine, day = app.state.engine, time.strftime("%Y-%m-%d")
    grids = Path(app.state.store.root).parent / "outputs" / "txt2img-grids" / day
    before = set(grids.glob("*.png")) if grids.is_dir() else set()
    first, second = open_tab(browser, url), open_tab(browser, url)
    fill(first, "a red circle on a blue background", 5, **LONG)
    number(first, "#txt2img_batch_size", 2)
    first.click("#txt2img_generate")
    first.wait_for_function("document.querySelector('#txt2img_progress').innerText.includes('ETA')", timeout=60_000)
    started = engine.state.started
    first.context.close()                                       # gone: its run ends at the next step
    for _ in range(100):
        if engine.state.started != started or not engine.state.job:
            break
        time.sleep(0.1)
    assert not engine.state.job or engine.state.started != started
    for _ in range(100):                                        # the grid of the images it made, as A1111
        if set(grids.glob("*.png")) - before:
            break
        time.sleep(0.1)
    assert len(set(grids.glob("*.png")) - before) == 1
    third = open_tab(browser, url)                              # (as a page reloaded mid-run) a run it did not send:
    fill(third, "a yellow cross on a black background", 6, **LONG)
    number(third, "#txt2img_batch_count", 3)                    # ~45 s unless stopped
    third.click("#txt2img_generate")
    third.wait_for_function("document.querySelector('#txt2img_progress').innerText.includes('ETA')", timeout=60_000)
    second.reload(wait_until="load")                            # (never idle: the run is streamed to it)
    second.wait_for_selector("#txt2img_progress", timeout=30_000)
    second.wait_for_function("document.querySelector('#txt2img_progress').innerText.includes('under way')",
                             timeout=30_000)                    # shown, and its Interrupt stops it
    second.click("#txt2img_interrupt")
    done(third, timeout=20_000)
    assert engine.state.job == ""
    second.context.close()
    third.context.close()


def test_the_selected_image_and_the_grid_send_their_own_settings(page):
    fill(page, "a white circle", 7, 2, 32)
    number(page, "#txt2img_batch_size", 2)
    page.click("#txt2img_generate")
    done(page)
    thumbnails = page.locator("#txt2img_gallery .thumbnail-item")
    info = lambda: page.input_value("#txt2img_info textarea")          # noqa: E731
    assert "Seed: 7," in info()                                          # the grid's (shown first)
    thumbnails.nth(2).click()                                            # the second image of the batch
    page.wait_for_function("document.querySelector('#txt2img_info textarea').value.includes('Seed: 8,')",
                           timeout=10_000)
    page.click("#txt2img_send")                                          # its own seed, with its batch's size
    page.wait_for_function("(document.querySelector('#img2img_seed input') || {}).value === '8'", timeout=30_000)
    assert page.input_value("#img2img_batch_size input[type=number]") == "2"
    page.click("button[role=tab][data-tab-id='txt2img']")
    thumbnails.nth(0).click()                                            # the grid: its own infotext
    page.wait_for_function("document.querySelector('#txt2img_info textarea').value.includes('Seed: 7,')",
                           timeout=10_000)
    page.click("#txt2img_reuse_seed")
    page.wait_for_function("document.querySelector('#txt2img_seed input').value === '7'", timeout=10_000)
    number(page, "#txt2img_batch_size", 1)
    xyz_plot(page, "Steps: 1, 2")
    assert "Script: X/Y/Z plot, X Type: Steps" in info()                 # the plot's grid, as on disk


def test_the_hires_fix_and_the_script_survive_a_reload(page):
    page.click("text=Hires. fix")
    page.check("#txt2img_enable_hr input")
    number(page, "#txt2img_hires_steps", 3)
    page.click("text=Script")
    page.click("#txt2img_script input")
    page.click("[role=option]:has-text('X/Y/Z plot')")
    page.fill("#txt2img_x textarea", "Steps: 1, 2")
    page.wait_for_timeout(1500)                                            # (saved in the browser's storage)
    page.reload(wait_until="networkidle")
    page.click("text=Hires. fix")
    page.click("text=Script")
    page.wait_for_function("(document.querySelector('#txt2img_x textarea') || {}).value === 'Steps: 1, 2'",
                           timeout=10_000)
    assert page.is_checked("#txt2img_enable_hr input")
    assert page.input_value("#txt2img_hires_steps input[type=number]") == "3"
    assert page.input_value("#txt2img_script input") == "X/Y/Z plot"


def test_the_clip_skip_sliders_labels_fit_in_its_box(page):
    inside = page.evaluate("""() => { const box = document.querySelector('#txt2img_clip_skip').getBoundingClientRect();
        const label = document.querySelector('#txt2img_clip_skip .max_value').getBoundingClientRect();
        return label.right <= box.right && label.left >= box.left; }""")
    assert inside


def xyz_plot(page, x_axis: str) -> None:
    """txt2img's X/Y/Z plot over ``x_axis``, made and waited for."""
    page.click("text=Script")
    page.click("#txt2img_script input")
    page.click("[role=option]:has-text('X/Y/Z plot')")
    page.fill("#txt2img_x textarea", x_axis)
    page.click("#txt2img_generate")
    done(page)


def test_the_prompt_boxes_count_their_tokens_as_the_webui_does(page, site):
    from dreambooth.generation.token_counter import counter_text
    tokenizer = site[0].state.engine.pipeline.pipe.tokenizer
    long = ", ".join(["a red square on a blue background"] * 12)
    for box, text, negative in (("txt2img_prompt", long + " <lora:x:0.5>", False), ("txt2img_negative", "blurry", True),
                                ("img2img_prompt", "a sks square AND a circle", False)):
        expected = counter_text(tokenizer, text, 20, negative)
        assert expected not in ("0/75", "")
        if box.startswith("img2img"):
            page.click("button[role=tab][data-tab-id='img2img']")
        page.fill(f"#{box} textarea", text)
        counter = box.replace("prompt", "token_counter").replace("negative", "negative_token_counter")
        page.wait_for_function(f"document.querySelector('#{counter}').innerText.trim() === '{expected}'", timeout=10_000)
    assert counter_text(tokenizer, long, 20).endswith("/150")
