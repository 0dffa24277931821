"""The web UI's parts that need no browser: its messages, the settings it remembers, the Train form's
values and overrides, the numbers it reads, the Evaluate tab's checks (``test_ui.py`` and
``test_ui_tabs.py`` drive the page itself)."""
from __future__ import annotations

import pytest
from PIL import Image

from dreambooth.errors import UserError


def test_saved_settings_keep_their_size_only_under_a_model_of_that_size():
    from dreambooth.ui.app import REMEMBERED, restored
    width, height = REMEMBERED.index("width"), REMEMBERED.index("height")
    values = lambda updates: [u.get("value") if isinstance(u, dict) else None for u in updates]   # noqa: E731
    kept = values(restored({"width": 48, "height": 40, "model_size": 32}, 32))
    assert (kept[width], kept[height], kept[-2:]) == (48, 40, [32, 32])
    reset = values(restored({"width": 512, "height": 512, "model_size": 512}, 32))       # saved under SD: the toy's
    assert (reset[width], reset[height]) == (32, 32)
    assert values(restored(None, 64))[width] == 64


def test_messages_use_the_pages_labels():
    from dreambooth.ui.errors import in_ui_words
    assert in_ui_words("--width 33: must be a multiple of 8") == "Width 33: must be a multiple of 8"
    assert in_ui_words("--seed 5: too large; give a smaller --seed") == "Seed 5: too large; give a smaller Seed"
    assert in_ui_words("overrides.max_steps 0: at least 1") == "Steps (max_steps) 0: at least 1"
    assert in_ui_words("overrides.batch_size 0: at least 1") == "batch size 0: at least 1"   # as Advanced shows it
    assert in_ui_words("--x 'Foo: 1, 2': no such axis") == "X axis 'Foo: 1, 2': no such axis"
    assert in_ui_words("Image: not a readable image (UnidentifiedImageError)") == "Image: not a readable image"
    assert in_ui_words("photos[2] a.png: over 20 MB") == "Photos of the subject a.png: over 20 MB"
    assert in_ui_words("instance_prompt: empty") == "Instance prompt: empty"
    assert in_ui_words("--lora-dir x: no such folder") == "--lora-dir x: no such folder"      # no control: as it is
    assert in_ui_words("named: x") == "named: x"
    # every mention, not only the first word's: the library's example names the field too
    assert in_ui_words("instance_prompt is required, e.g. instance_prompt 'a photo of sks dog'") == \
        "Instance prompt is required, e.g. Instance prompt 'a photo of sks dog'"
    assert in_ui_words("batch_size (of the toy settings) 0: at least 1") == "batch size (of the toy settings) 0: at least 1"
    assert in_ui_words("no LoRA of that name; check the preset") == "no LoRA of that name; check the preset"   # words


def test_the_train_status_says_the_phase_and_how_to_use_the_model(tmp_path):
    from dreambooth.server.jobs import JobStore
    from dreambooth.ui.train_tab import status_text
    store = JobStore(tmp_path)
    request = {"instance_prompt": "a sks square", "class_prompt": "a square", "preset": "toy", "model_spec": "toy",
               "overrides": {"num_class_images": 2, "max_steps": 6}, "name": "sq"}
    job = store.add(request, "full", 6)
    (store.folder(job.id) / "photos").mkdir(parents=True)
    store.update(job.id, state="running")

    class Runner:
        phases = {job.id: {"task": "class images", "done": 1, "of": 2}}
    assert "making class images (1 of 2), then training" in status_text(store, store.get(job.id), Runner)
    Runner.phases = {}
    assert "loading the model" in status_text(store, store.get(job.id), Runner)
    store.update(job.id, state="done", step=6)
    assert "pick **sq** in the Stable Diffusion checkpoint list" in status_text(store, store.get(job.id), Runner)
    store.update(job.id, method="lora")
    assert "`<lora:sq:1>`" in status_text(store, store.get(job.id), Runner)


def test_the_img2img_tabs_inpainting_settings_reach_the_parameters():
    from dreambooth.ui.generate_tab import params_of
    base = ("a dog", "", "Euler a", "Automatic", 20, 7, 64, 64, 1, 1, 5)
    init, mask = Image.new("RGB", (64, 64)), Image.new("L", (64, 64), 255)
    params = params_of(*base, init=init, mask=mask, mask_blur=2, area="Only masked", padding=8, content="fill")
    assert (params.mask_blur, params.only_masked, params.masked_padding, params.masked_content) == (2, True, 8, "fill")
    plain = params_of(*base, init=init, area="Only masked", content="fill").check()    # img2img without a mask:
    assert (plain.only_masked, plain.masked_content) == (False, "original")            # the settings stay idle
    plain = params_of(*base)                                                                  # the WebUI's defaults
    assert (plain.mask_blur, plain.only_masked, plain.masked_padding, plain.masked_content) == (4, False, 32, "original")
    assert (plain.resize_mode, plain.invert_mask) == ("Just resize", False)
    turned = params_of(*base, init=init, mask=mask, resize_mode="Resize and fill", mask_mode="Inpaint not masked").check()
    assert (turned.resize_mode, turned.invert_mask) == ("Resize and fill", True)
    # "Only masked" keeps the init image's size whatever the resize mode, as in the WebUI; no mask: no inverting
    boxed = params_of(*base, init=init, mask=mask, area="Only masked", resize_mode="Crop and resize").check()
    assert boxed.resize_mode == "Just resize"
    assert not params_of(*base, init=init, mask_mode="Inpaint not masked").check().invert_mask
    # txt2img's Hires. fix: its settings only when it is on, as in the WebUI
    hires = params_of(*base, hires=True, hires_upscaler="Lanczos", hires_steps=5, hires_scale=1.5, strength=0.6).check()
    assert (hires.hires, hires.hires_upscaler, hires.hires_steps, hires.hires_scale, hires.strength) == \
        (True, "Lanczos", 5, 1.5, 0.6)
    off = params_of(*base, hires=False, hires_upscaler="Lanczos", hires_steps=5, hires_scale=1.5).check()
    assert (off.hires, off.hires_upscaler, off.hires_steps) == (False, "Latent", 0)


def form(**changed) -> list:
    """The Train form's values (``form_fields`` order) showing the toy model's own settings, changed."""
    from dreambooth.ui.train_form import NONE, base_values, form_fields, shown
    base = base_values(NONE, "toy")
    return [changed.get(f.name, shown(f, base[f.name])) for f in form_fields()]


def test_a_list_setting_that_is_not_numbers_is_one_line():
    from dreambooth.ui.train_form import NONE, base_values, overrides_of
    with pytest.raises(UserError, match="validation seeds: 'a, b': give int values separated by commas"):
        overrides_of(form(validation_seeds="a, b"), base_values(NONE, "toy"))


def test_the_train_form_sends_what_it_changed_from_what_the_job_trains_with():
    """The toy model with no preset trains with the toy's own settings (build_config's): the form
    shows them, and sends only what the user changed; an emptied box is said, not sent as null or 0."""
    from dreambooth.ui.train_form import NONE, base_values, overrides_of
    toy = base_values(NONE, "toy")
    assert (toy["method"], toy["max_steps"], toy["resolution"], toy["batch_size"]) == ("full", 1200, 32, 2)
    assert overrides_of(form(), toy) == {}                  # as shown: nothing to override (no resolution null)
    assert overrides_of(form(max_steps=6.0, batch_size=1.0), toy) == {"max_steps": 6, "batch_size": 1}
    with pytest.raises(UserError, match=r"^Steps: empty; give a value \(the toy model's: 1200\)$"):
        overrides_of(form(max_steps=None), toy, "the toy model's")
    with pytest.raises(UserError, match=r"^batch size 1.5: give a whole number$"):     # not rounded unsaid
        overrides_of(form(batch_size=1.5), toy)
    assert overrides_of(form(resolution=""), toy) == {}      # "(empty: the default)": the toy's 32, not null
    assert overrides_of(form(alpha="8"), toy) == {"alpha": 8.0}
    with pytest.raises(UserError, match=r"^alpha 'x': give a number \(empty: the default\)$"):
        overrides_of(form(alpha="x"), toy)


def test_the_train_form_follows_the_preset_and_model_but_keeps_what_the_user_changed():
    from dreambooth.ui.train_form import NONE, base_values, form_fields, refilled
    names = [f.name for f in form_fields()]
    toy, other = base_values(NONE, "toy"), base_values(NONE, "/models/mine")
    updates = refilled(other, toy, form(max_steps=6))         # the model switched: the defaults but Steps
    value = {name: u for name, u in zip(names, updates)}
    assert value["method"] == other["method"] == "lora" and value["resolution"] == ""      # the model's own size
    assert value["max_steps"] == {"__type__": "update"}      # the user's 6 stays
    lora = base_values(NONE, "toy", "lora")                   # LoRA chosen: the toy's full-only identifier lr is off
    assert (toy["identifier_lr"], lora["identifier_lr"]) == (0.01, 0.0)


def test_a_number_typed_past_a_slider_is_set_and_said():
    import gradio as gr

    from dreambooth.ui.numbers import fitted, seed_of
    steps = gr.Slider(1, 150, value=20, step=1, label="Sampling steps")
    assert fitted(steps, 500) == (150, "Sampling steps 500: from 1 to 150; set to 150")
    assert fitted(steps, 2.6) == (3, "Sampling steps 2.6: a whole number; set to 3")
    assert fitted(steps, 20) == (20, None)
    assert fitted(gr.Slider(0, 30, step=0.5, label="CFG Scale"), -1) == (0, "CFG Scale -1: from 0 to 30; set to 0")
    assert seed_of(-1.0) == -1 and seed_of(7) == 7
    with pytest.raises(UserError, match=r"^Seed 1.5: give a whole number"):    # gradio rounded it to 2, unsaid
        seed_of(1.5)
    with pytest.raises(UserError, match=r"^Seed: empty"):
        seed_of(None)


def test_the_clip_skip_is_remembered():
    from dreambooth.ui.app import REMEMBERED, restored
    assert restored({"clip_skip": 2, "model_size": 32}, 32)[REMEMBERED.index("clip_skip")]["value"] == 2


def test_evaluate_names_an_upload_by_its_own_name_and_the_models_in_the_pages_words(tmp_path, monkeypatch):
    from dreambooth.ui.evaluate_tab import check_evaluation_models, photo
    upload = tmp_path / "gradio" / "0f3a9c" / "notimage.png"      # gradio's copy keeps the user's file name
    upload.parent.mkdir(parents=True)
    upload.write_text("not an image")
    with pytest.raises(UserError) as caught:
        photo(str(upload))
    assert str(caught.value) == "Real photos of the subject: notimage.png: not a readable image"
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    assert photo(str(tmp_path / "ok.png")).size == (8, 8)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(UserError) as caught:
        check_evaluation_models()
    message = str(caught.value)
    assert "DINO (facebook/dino-vits16)" in message and "`hf download facebook/dino-vits16`" in message
    assert "operator" in message and "--dino-model" not in message and "HF_HUB_OFFLINE" not in message


def test_a_pasted_batch_image_gives_its_own_seed_its_batch_and_its_plot():
    """As A1111 pastes: the image's own seed (not its batch's first) and the batch's size, ours
    (``Batch: 2/2``) or A1111's (``Batch size: 2``), and an X/Y/Z plot's script and axes."""
    from dreambooth.ui.pnginfo_tab import pasted
    seed, batch, script, x, y = 8, 10, 11, 12, 13
    ours = pasted("a dog\nSteps: 3, Sampler: Euler a, CFG scale: 7, Seed: 8, Size: 32x32, Batch: 2/2")
    assert (ours[seed], ours[batch], ours[script]) == (8, 2, "None")
    theirs = pasted('a dog\nSteps: 3, Sampler: Euler a, CFG scale: 7, Seed: 8, Size: 32x32, Batch size: 2, '
                    'Batch pos: 1, Script: X/Y/Z plot, X Type: Sampler, X Values: "Euler a, DDIM"')
    assert (theirs[seed], theirs[batch], theirs[script], theirs[x], theirs[y]) == \
        (8, 2, "X/Y/Z plot", "Sampler: Euler a, DDIM", "")
    assert pasted("a dog\nSteps: 3, Seed: 8, Size: 32x32")[batch] == 1


def test_a_seed_past_64_bits_is_never_saved():
    from dreambooth.ui.app import REMEMBERED, restored
    from dreambooth.ui.numbers import seed_of, storable_seed
    assert not storable_seed(10**20) and storable_seed(5) and storable_seed(1.5) and storable_seed(None)
    with pytest.raises(UserError, match=r"^Seed 100000000000000000000: must be -1 \(random\) or from 0 to 4294967295$"):
        seed_of(10**20)
    assert restored({"seed": 10**20}, 32)[REMEMBERED.index("seed")] == {"__type__": "update"}


def test_a_job_without_validation_is_said_not_an_empty_chart(tmp_path):
    from dreambooth.server.jobs import JobStore
    from dreambooth.ui.evaluate_tab import validation_curve
    store = JobStore(tmp_path)
    job = store.add({"instance_prompt": "a sks square", "model_spec": "toy", "overrides": {}, "name": "sq"}, "full", 6)
    store.update(job.id, state="done")
    points, message = validation_curve(store, job.id)
    assert len(points) == 0 and "ran no validation" in message and "validate_every" in message
    assert validation_curve(store, None)[1] == ""           # no job picked: the line (an old error) cleared
