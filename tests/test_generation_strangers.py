"""What an A1111 user probing `dreambooth generate` found: AND, hires prompt editing, comma wrapping,
infotext keys a replay cannot make, paths in PNGs, X/Y/Z grid infotext, init image sizes, errors."""
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from dreambooth.errors import UserError
from dreambooth.generation.composable import split_and
from dreambooth.generation.infotext import not_made_here, parse_generation_parameters, read_infotext
from dreambooth.generation.params import GenerationParams
from dreambooth.generation.pipeline import load_generation_pipeline
from dreambooth.generation.sampling import generate, resolve_params

SMALL = dict(steps=3, width=16, height=16, seed=3, sampler="Euler")


@pytest.fixture(scope="module")
def sd1(tiny_sd1):
    return load_generation_pipeline(str(tiny_sd1))


def pixels(pipe, prompt, **kw):
    return np.asarray(generate(pipe, GenerationParams(prompt, **{**SMALL, **kw}))[0].image, dtype=np.int16)


# ---- 1. AND: composable diffusion ------------------------------------------------------------------------------

def test_and_splits_into_weighted_parts_as_the_webui():
    assert split_and("a red circle AND a blue background:0.8") == [("a red circle", 1.0), (" a blue background", 0.8)]
    assert split_and("a dog:1.5") == [("a dog", 1.5)]          # a weight at the end, even with no AND
    assert split_and("a dog and a cat") == [("a dog and a cat", 1.0)]
    assert split_and("ANDROID") == [("ANDROID", 1.0)]
    assert split_and("masterpiece,\na cat:1.2") == [("masterpiece,\na cat", 1.2)]     # a part over lines keeps its weight


def test_and_combines_one_prediction_per_part(sd1, monkeypatch):
    assert (pixels(sd1, "a red circle AND a blue background") != pixels(sd1, "a red circle and a blue background")).any()
    # uncond + cfg * (0.5 (c - u) + 0.5 (c - u)) is the plain prompt's prediction
    assert np.abs(pixels(sd1, "a dog:0.5 AND a dog:0.5") - pixels(sd1, "a dog")).max() <= 1
    # one part of weight 2 at CFG 3 is CFG 6
    assert np.abs(pixels(sd1, "a dog:2", cfg_scale=3) - pixels(sd1, "a dog", cfg_scale=6)).max() <= 3
    batches = []
    forward = type(sd1.pipe.unet).forward
    monkeypatch.setattr(type(sd1.pipe.unet), "forward", lambda self, sample, *a, **k: (batches.append(sample.shape[0]),
                                                                                       forward(self, sample, *a, **k))[1])
    made = generate(sd1, GenerationParams("a [cat:dog:1] AND a ball:0.7 AND sky", **{**SMALL, "batch_size": 2}))
    assert batches == [2 * 4] * 3            # the negative and three parts, in one batch a step
    assert made[0].infotext.startswith("a [cat:dog:1] AND a ball:0.7 AND sky\n")     # recorded as written


# ---- 2. the hires pass's prompt editing -------------------------------------------------------------------------

def test_the_hires_pass_schedules_prompt_editing_after_the_first_pass(sd1, monkeypatch):
    from dreambooth.generation import conditioning
    from dreambooth.generation.grammar import prompt_schedule
    assert prompt_schedule("a [b:c:5]", 10, after=10) == [[10, "a c"]]
    assert prompt_schedule("a [b:c:0.5]", 10, after=10) == [[10, "a c"]]
    assert prompt_schedule("a [b:.5] c", 10, after=10) == [[10, "a b c"]]
    assert prompt_schedule("a [b:1.5] c", 4, after=10) == [[2, "a  c"], [4, "a b c"]]
    assert prompt_schedule("a [b:12] c", 4, after=10) == [[2, "a  c"], [4, "a b c"]]
    seen = []
    real = conditioning.prompt_schedule
    monkeypatch.setattr(conditioning, "prompt_schedule", lambda p, steps, after=0: seen.append((p, steps, after))
                        or real(p, steps, after))
    generate(sd1, GenerationParams("a [red:blue:0.5] circle", hires=True, strength=0.5, hires_steps=2,
                                   **{**SMALL, "steps": 4}))
    assert ("a [red:blue:0.5] circle", 4, 0) in seen and ("a [red:blue:0.5] circle", 2, 4) in seen


# ---- 3. a chunk ends after its last comma --------------------------------------------------------------------------

def test_a_full_chunk_ends_after_a_comma_in_its_last_20_tokens(sd1):
    from dreambooth.generation.conditioning import tokenize_weighted
    tok = sd1.pipe.tokenizer
    comma = tok.get_vocab()[",</w>"]
    one = next(t for t, i in tok.get_vocab().items() if t.endswith("</w>") and t[:-4].isalpha()
               and tok(t[:-4], add_special_tokens=False).input_ids == [i])[:-4]     # a word of one token
    near = " ".join([one] * 60) + ", " + " ".join([one] * 20)        # comma is token 61: moved on with 14 after it
    assert [len(c.tokens) for c in tokenize_weighted(tok, near)] == [61, 20]
    assert tokenize_weighted(tok, near)[0].tokens[-1] == comma
    far = " ".join([one] * 50) + ", " + " ".join([one] * 30)         # comma is token 51: too far back, cut at 75
    assert [len(c.tokens) for c in tokenize_weighted(tok, far)] == [75, 6]
    broken = " ".join([one] * 60) + ", " + " ".join([one] * 20) + " BREAK " + one
    assert [len(c.tokens) for c in tokenize_weighted(tok, broken)] == [61, 20, 1]
    short = " ".join([one] * 60) + ", " + " ".join([one] * 14)       # fits: nothing moves
    assert [len(c.tokens) for c in tokenize_weighted(tok, short)] == [75]


# ---- 4. A1111 settings a replay here cannot make --------------------------------------------------------------------

def test_a1111_settings_that_change_pixels_are_named_unless_at_their_default():
    changed = parse_generation_parameters("a\nSteps: 2, Seed: 1, Sampler: Euler, RNG: CPU, Emphasis: No norm, "
                                          "Skip Early CFG: 0.2, Discard penultimate sigma: True, "
                                          "Downcast alphas_cumprod: True, SGM noise multiplier: True", defaults=False)
    assert not_made_here(changed) == ["Emphasis No norm", "Skip Early CFG 0.2", "Discard penultimate sigma True",
                                      "Downcast alphas_cumprod True", "SGM noise multiplier True"]
    default = parse_generation_parameters("a\nSteps: 2, Seed: 1, Sampler: Euler, RNG: CPU, Emphasis: Original, "
                                          "Skip Early CFG: 0, Discard penultimate sigma: False, "
                                          "Downcast alphas_cumprod: False, Version: v1.10.1", defaults=False)
    assert not_made_here(default) == []
    old = parse_generation_parameters("a [b:c:3]\nSteps: 2, Seed: 1, Sampler: Euler, RNG: CPU, Version: v1.5.2",
                                      defaults=False)
    assert not_made_here(old) == ["Old prompt editing timelines (its Version)", "Downcast alphas_cumprod (its Version)"]


# ---- 5. paths in the PNG -----------------------------------------------------------------------------------------

def test_a_model_in_the_working_folder_is_recorded_relative_and_replayed(tiny_sd1, tmp_path, monkeypatch):
    shutil.copytree(tiny_sd1, tmp_path / "models" / "mine")
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli("generate", "--model", "models/mine", "--prompt", "a dog", "--steps", "2", "--width", "16",
                             "--height", "16", "--seed", "4", "--output", "made")
    assert code == 0, err
    text = read_infotext(out.split()[0])
    assert "Model path: models/mine," in text and str(tmp_path) not in text
    code, out2, err = run_cli("generate", "--from-image", out.split()[0], "--output", "again")
    assert code == 0, err
    assert np.array_equal(np.asarray(Image.open(out.split()[0])), np.asarray(Image.open(out2.split()[0])))
    # from another folder: the path is found from the image's folder up (it was made in one above it)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    code, out3, err = run_cli("generate", "--from-image", str(tmp_path / out.split()[0]), "--output", "again")
    assert code == 0, err
    assert np.array_equal(np.asarray(Image.open(tmp_path / out.split()[0])),
                          np.asarray(Image.open(out3.split()[0])))
    # and where it is nowhere to be found, the message says where it was
    moved = tmp_path.parent / f"{tmp_path.name}-image.png"
    shutil.copy(tmp_path / out.split()[0], moved)
    code, _, err = run_cli("generate", "--from-image", str(moved), "--output", "again")
    assert code == 2 and "at models/mine (from the folder it was made in), not found here; pass --model" in err, err


# ---- 6. X/Y/Z grids ----------------------------------------------------------------------------------------------

def test_an_xyz_grid_records_its_plot_and_is_made_again_from_it(tiny_sd1, tmp_path):
    code, out, err = run_cli("generate", "--model", tiny_sd1, "--prompt", "a dog", "--steps", "1", "--width", "16",
                             "--height", "16", "--seed", "2", "--x", "Steps: 1, 2", "--y", "CFG scale: 3, 7",
                             "--output", tmp_path / "plot")
    assert code == 0, err
    grid = out.split()[-1]
    info = parse_generation_parameters(read_infotext(grid))
    assert (info["Script"], info["X Type"], info["X Values"], info["Y Type"], info["Y Values"]) == \
        ("X/Y/Z plot", "Steps", "1, 2", "CFG Scale", "3, 7")
    code, out2, err = run_cli("generate", "--from-image", grid, "--model", tiny_sd1, "--output", tmp_path / "again")
    assert code == 0, err
    assert len(out2.split()) == 5 and "grid-" in out2.split()[-1]
    assert np.array_equal(np.asarray(Image.open(grid)), np.asarray(Image.open(out2.split()[-1])))


# ---- 7, 8. the init image's size ---------------------------------------------------------------------------------

def test_img2img_takes_the_init_images_size_to_the_nearest_multiple_of_8_and_says_so(sd1, capfd):
    params, _, _ = resolve_params(sd1, GenerationParams("a dog", init_image=Image.new("RGB", (50, 30))))
    assert (params.width, params.height) == (48, 32)
    assert "--init-image: 50x30, sampled at 48x32" in capfd.readouterr().err
    params, _, _ = resolve_params(sd1, GenerationParams("a dog", init_image=Image.new("RGB", (48, 32))))
    assert (params.width, params.height) == (48, 32) and "sampled at" not in capfd.readouterr().err


def test_an_init_image_past_the_models_size_names_it_and_the_flags(sd1, tmp_path):
    big = tmp_path / "big.png"
    Image.new("RGB", (2100, 1600)).save(big)
    with pytest.raises(UserError, match=r"^--init-image .*big.png: 2100x1600, past this model's 2048 px a side; "
                                        r"give --width/--height"):
        resolve_params(sd1, GenerationParams("a dog", init_image=big))


# ---- 9 - 12. errors ----------------------------------------------------------------------------------------------

def test_bad_flags_are_named_as_the_user_gave_them(tiny_sd1, tmp_path):
    (tmp_path / "lora1").mkdir()
    (tmp_path / "photos").mkdir()
    base = ["generate", "--model", tiny_sd1, "--prompt", "x", "--steps", "1", "--output", tmp_path / "out"]
    for extra, message in [(["--lora", f"{tmp_path / 'lora1'}:abc"], "the weight 'abc' is not a number"),
                           (["--init-image", tmp_path / "photos"], "photos: a folder; give an image file in it"),
                           (["--width", "4104"], "--width 4104: must be from 8 to 2048 (4096 for SDXL)"),
                           (["--width", "4096"], "--width 4096: must be from 8 to 2048 (4096 for SDXL)"),
                           (["--strength", "0.5"], "--strength is for img2img and the hires fix: give --init-image "
                                                   "or --hires")]:
        code, out, err = run_cli(*base, *extra)
        assert code == 2 and message in err and err.count("\n") == 1, (extra, err)


# ---- img2img below one denoising step: as the WebUI, one step at the least noisy timestep -----------------------

def test_img2img_under_one_step_takes_the_last_step_as_the_webui(sd1):
    rng = np.random.default_rng(0)
    init = Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    made = {s: pixels(sd1, "a dog", init_image=init, strength=s, steps=10) for s in (0.0, 0.05, 0.1, 0.5)}
    assert np.array_equal(made[0.0], made[0.05]) and np.array_equal(made[0.0], made[0.1])   # 1 step: the last
    assert not np.array_equal(made[0.0], made[0.5])
    assert np.abs(made[0.0] - np.asarray(init, dtype=np.int16)).mean() < np.abs(made[0.5] - np.asarray(init, dtype=np.int16)).mean()
    (r,) = generate(sd1, GenerationParams("a dog", init_image=init, strength=0.0, **{**SMALL, "steps": 10}))
    assert "Denoising strength: 0" in r.infotext          # the user's strength, recorded as given
