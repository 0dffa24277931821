"""Prompt matrix and X/Y/Z plots: prompts, axes, saved images and labelled grids."""
import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from dreambooth.errors import UserError
from dreambooth.generation.params import GenerationParams
from dreambooth.generation.pipeline import load_generation_pipeline
from dreambooth.grid import annotated_grid
from dreambooth.generation.xyz import (apply_axis, parse_axis, prompt_matrix_prompts, run_prompt_matrix,
                              run_xyz)
from dreambooth.generation.infotext import parse_generation_parameters, read_infotext


@pytest.fixture(scope="module")
def sd1(tiny_sd1):
    return load_generation_pipeline(str(tiny_sd1))


def test_prompt_matrix_prompts():
    prompts, parts = prompt_matrix_prompts("a dog|in the snow|oil painting")
    assert parts == ["in the snow", "oil painting"]
    assert prompts == ["a dog", "a dog, in the snow", "a dog, oil painting", "a dog, in the snow, oil painting"]
    assert len(prompt_matrix_prompts("a|b|c|d|e")[0]) == 16


@pytest.mark.parametrize("text, label, values", [
    ("Sampler: Euler a, DDIM", "Sampler", ["Euler a", "DDIM"]),
    ("sampler: dpm++ 2m karras", "Sampler", ["DPM++ 2M Karras"]),     # an old combined name keeps its schedule
    ("sampler: dpm++ 2m", "Sampler", ["DPM++ 2M"]),
    ("CFG scale: 3, 7, 11", "CFG scale", [3.0, 7.0, 11.0]),
    ("Steps: 10, 20", "Steps", [10, 20]),
    ("Steps: 10-30 (+10)", "Steps", [10, 20, 30]),
    ("Steps: 1-3", "Steps", [1, 2, 3]),
    ("Steps: 10-20 [3]", "Steps", [10, 15, 20]),
    ("CFG scale: 1-2 (+0.5)", "CFG scale", [1.0, 1.5, 2.0]),
    ("CFG scale: 1-2 [3]", "CFG scale", [1.0, 1.5, 2.0]),
    ("Seed: -1, 5", "Seed", [-1, 5]),
    ("Prompt S/R: dog, cat, \"red, fox\"", "Prompt S/R", ["dog", "cat", "red, fox"]),
    ("Schedule type: karras, sgm_uniform", "Schedule type", ["Karras", "SGM Uniform"]),
    ("Size: 16x16, 24x16", "Size", ["16x16", "24x16"]),
    ("Hires steps: 0-10 (+5)", "Hires steps", [0, 5, 10]),
    ("Hires upscaler: latent, Latent (nearest-exact), lanczos", "Hires upscaler",
     ["Latent", "Latent (nearest-exact)", "Lanczos"]),
])
def test_parse_axis(text, label, values):
    axis = parse_axis(text)
    assert axis.type.label == label and axis.values == values


@pytest.mark.parametrize("text, message", [
    ("Colour: red", "expected 'Name: v1, v2, ...'"),
    ("Steps", "expected 'Name: v1, v2, ...'"),
    ("Steps: ten", "'ten' is not an integer"),
    ("Steps: 10-1 (+1)", "never reaches"),
    ("Sampler: Foo", "--y Sampler: 'Foo' unknown"),
    ("Size: 16", "WIDTHxHEIGHT"),
    ("CFG scale:", "no values"),
    ("Hires upscaler: ESRGAN_4x", "Hires upscaler: 'ESRGAN_4x' unknown; valid: Latent"),
])
def test_bad_axes(text, message):
    with pytest.raises(UserError) as err:
        parse_axis(text, "--y")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_label_wider_than_its_cell_is_broken_to_fit():
    """A word wider than a small cell ("Automatic" over 64 px) is broken, not cut at the grid's edge."""
    from PIL import ImageDraw

    from dreambooth.grid import _font, _wrap
    draw, font = ImageDraw.Draw(Image.new("RGB", (1, 1))), _font(12)
    lines = _wrap(draw, "Schedule type: Automatic-Uniform-Karras", font, 40)
    assert all(draw.textlength(line, font=font) <= 40 for line in lines)
    assert "".join(lines).replace(" ", "") == "Scheduletype:Automatic-Uniform-Karras"


def test_row_labels_of_small_cells_stay_in_their_rows():
    """At 32 px a row label wrapped to the usual width ("Steps: 20" in three lines) ran into the next
    row's; the label column widens instead, so no text crosses the line between two rows."""
    cells = [Image.new("RGB", (32, 32), "white") for _ in range(4)]
    grid = annotated_grid(cells, 2, row_labels=[[("Steps: 20", True)], [("Steps: 40", True)]])
    left = grid.width - 64
    dark_rows = np.where((np.asarray(grid)[:, :left] < 128).all(axis=-1).any(axis=1))[0]
    assert dark_rows.size and not ((dark_rows >= 30) & (dark_rows <= 33)).any(), dark_rows
    long = "a photo of zwx dog wearing a red hat, sitting on a wooden bench in a park at sunset, " * 3
    grid = annotated_grid(cells, 2, row_labels=[[(long, True)], [("b", True)]])      # wider than the cap allows
    left = grid.width - 64
    dark_rows = np.where((np.asarray(grid)[:, :left] < 128).all(axis=-1).any(axis=1))[0]
    assert dark_rows.min() > 0 and not ((dark_rows >= 31) & (dark_rows <= 32)).any(), dark_rows   # cut, not run over


def test_prompt_sr_replaces_in_both_prompts():
    axis = parse_axis("Prompt S/R: dog, cat")
    p = apply_axis(GenerationParams("a dog", negative_prompt="dog hair"), axis, "cat")
    assert (p.prompt, p.negative_prompt) == ("a cat", "cat hair")
    with pytest.raises(UserError, match="Prompt S/R: 'dog' is not in the prompt"):
        apply_axis(GenerationParams("a bird"), axis, "cat")


def test_annotated_grid_layout():
    cells = [Image.new("RGB", (20, 10), c) for c in ("red", "green", "blue", "white")]
    plain = annotated_grid(cells, 2)
    assert plain.size == (40, 20)
    labelled = annotated_grid(cells, 2, [[("x1", True)], [("x2", False)]], [[("row one", True)], [("row two", True)]])
    assert labelled.width > 40 and labelled.height > 20
    px = np.asarray(labelled)
    assert (px == 255).all(axis=-1).any() and (px < 100).all(axis=-1).any()     # white margins, dark text


def test_prompt_matrix_run(sd1, tmp_path):
    params = GenerationParams("a dog|in the snow|oil painting", steps=1, width=16, height=16, seed=9)
    result = run_prompt_matrix(sd1, params, tmp_path)
    assert [r.prompt for r in result.images] == prompt_matrix_prompts(params.prompt)[0]
    assert {r.seed for r in result.images} == {9}                               # one seed for all
    assert [r.path.name for r in result.images] == [f"0000{k}-9.png" for k in range(1, 5)]
    assert result.grid_path.name == "grid-00001-9.png"
    grid = Image.open(result.grid_path)
    assert grid.width > 2 * 16 and grid.height > 2 * 16                         # 2x2 cells plus labels
    assert parse_generation_parameters(read_infotext(result.grid_path))["Prompt"] == "a dog"
    with pytest.raises(UserError, match="no '\\|'"):
        run_prompt_matrix(sd1, GenerationParams("a dog"), None)


def test_xyz_run(sd1, tmp_path):
    params = GenerationParams("a dog", steps=1, width=16, height=16, seed=4)
    result = run_xyz(sd1, params, x="Sampler: Euler a, DDIM", y="CFG scale: 3, 7", z="Prompt S/R: dog, cat",
                     output_dir=tmp_path)
    assert len(result.images) == 8
    infos = [parse_generation_parameters(r.infotext) for r in result.images]
    assert [(i["Prompt"], i["CFG scale"], i["Sampler"]) for i in infos[:4]] == [
        ("a dog", "3", "Euler a"), ("a dog", "3", "DDIM"), ("a dog", "7", "Euler a"), ("a dog", "7", "DDIM")]
    assert {i["Prompt"] for i in infos[4:]} == {"a cat"} and {i["Seed"] for i in infos} == {"4"}
    grid = Image.open(result.grid_path)
    assert grid.width > 4 * 16 and grid.height > 2 * 16
    assert len(list(tmp_path.glob("0000*-4.png"))) == 8
    for x, message in (("CFG scale: 5, nan", "--x CFG scale: nan: "), ("Size: 16x16, 12x12", "--x Size: 12x12: ")):
        with pytest.raises(UserError) as err:        # the axis value named, before anything is made
            run_xyz(sd1, params, x=x, output_dir=tmp_path / "bad")
        assert str(err.value).startswith(message) and not (tmp_path / "bad").exists(), str(err.value)


def test_a_hires_plot(sd1, tmp_path):
    """The hires fix's steps and upscaler as axes; without --hires they are refused before any image."""
    params = GenerationParams("a dog", steps=2, width=16, height=16, seed=4, hires=True, strength=0.5)
    result = run_xyz(sd1, params, x="Hires upscaler: Latent, Lanczos", y="Hires steps: 1, 2", output_dir=tmp_path)
    infos = [parse_generation_parameters(r.infotext) for r in result.images]
    assert [(i["Hires upscaler"], i.get("Hires steps")) for i in infos] == [
        ("Latent", "1"), ("Lanczos", "1"), ("Latent", "2"), ("Lanczos", "2")]
    assert {r.image.size for r in result.images} == {(32, 32)}
    with pytest.raises(UserError, match="--x Hires steps: 1: --hires-steps is for the hires fix: give --hires too"):
        run_xyz(sd1, params.replace(hires=False), x="Hires steps: 1, 2", output_dir=tmp_path / "no")
    assert not (tmp_path / "no").exists()


def test_an_interrupt_stops_a_plot_and_a_matrix(sd1, tmp_path):
    """A server's Interrupt (``Controls``) reaches the scripts: what was made is kept, no more cells, no grid."""
    from dreambooth.generation.sampling import Controls
    params = GenerationParams("a dog|red|big", steps=2, width=16, height=16, seed=4)
    for cells, run in ((6, lambda c: run_xyz(sd1, params, x="Seed: 1, 2, 3, 4, 5, 6", output_dir=tmp_path / "xyz",
                                              controls=c)),
                       (4, lambda c: run_prompt_matrix(sd1, params, tmp_path / "matrix", controls=c))):
        asked = []

        def count():              # (asked before each cell, each step, and within steps at each block)
            asked.append(1)
        run(Controls(stop=count))
        per_cell, asked[:] = len(asked) / cells, []

        def stop():
            asked.append(1)
            return "interrupt" if len(asked) > 1.5 * per_cell else None     # the second cell's second step
        result = run(Controls(stop=stop))
        assert len(result.images) == 2 and result.grid is None and result.grid_path is None


def test_xyz_seed_axis_and_cli(tiny_sd1, tmp_path):
    code, out, err = run_cli("generate", "--model", tiny_sd1, "--prompt", "a dog", "--steps", "1", "--width", "16",
                             "--height", "16", "--seed", "1", "--x", "Seed: 1-3", "--output", tmp_path)
    assert code == 0, err
    files = out.split()
    assert [f.rsplit("/", 1)[-1] for f in files] == ["00001-1.png", "00002-2.png", "00003-3.png", "grid-00001-1.png"]
    code, out, err = run_cli("generate", "--model", tiny_sd1, "--prompt", "a cat|red", "--prompt-matrix",
                             "--steps", "1", "--width", "16", "--height", "16", "--seed", "2", "--output", tmp_path)
    assert code == 0, err
    assert out.split()[-1].endswith("grid-00002-2.png")


def test_what_a_plot_cell_says_is_what_it_was_made_with(sd1, tmp_path):
    params = GenerationParams("a dog", steps=2, width=16, height=16, seed=3)
    result = run_xyz(sd1, params, x="Sampler: LMS Karras, Euler", y="Seed: -1, 4", output_dir=tmp_path)
    info = [parse_generation_parameters(read_infotext(r.path)) for r in result.images]
    assert [(i["Sampler"], i["Schedule type"]) for i in info] == [("LMS", "Karras"), ("Euler", "Automatic")] * 2
    drawn = str(info[0]["Seed"])                     # -1 drawn once, before any cell, and labelled as drawn
    assert drawn != "-1" and str(info[1]["Seed"]) == drawn and str(info[2]["Seed"]) == "4"
    assert parse_axis("Sampler: LMS Karras").label_for("LMS Karras") == "Sampler: LMS Karras"
    with pytest.raises(UserError, match="--y Steps: sets what --x Steps sets"):
        run_xyz(sd1, params, x="Steps: 2, 3", y="Steps: 4")
    with pytest.raises(UserError, match="--y Width: sets what --x Size sets"):
        run_xyz(sd1, params, x="Size: 16x16", y="Width: 16, 24")
    with pytest.raises(UserError, match="megapixels; at most 200"):
        run_xyz(sd1, params.replace(width=1024, height=1024), x="Seed: 1-20", y="Steps: 1-20")
    with pytest.raises(UserError, match="--x Sampler: 'Nonesuch' unknown"):
        parse_axis("Sampler: Euler, Nonesuch")
    with pytest.raises(UserError, match="every cell would be the same"):
        run_xyz(sd1, params, x="Denoising: 0.2, 0.9")


def test_a_replay_names_textual_inversions_and_an_a1111_vae():
    from dreambooth.generation.infotext import not_made_here
    info = parse_generation_parameters('a dog, easyneg\nSteps: 20, Sampler: Euler, Seed: 1, Size: 64x64, RNG: CPU, '
                                       'VAE: vae-ft-mse.safetensors, TI hashes: "easyneg: 0123abcd"', defaults=False)
    assert not_made_here(info) == ["TI hashes", "VAE vae-ft-mse.safetensors (give --vae for it)"]


def test_a_replayed_batch_image_under_a_seed_or_batch_axis_is_the_image_alone(sd1, tmp_path):
    replay = GenerationParams("a dog", steps=2, width=16, height=16, seed=12, batch_size=2, keep=1)   # "Batch: 2/2"
    for axis, want in (("Seed: 100, 200", ["100", "200"]), ("Batch size: 1, 2", ["13", "13"])):
        result = run_xyz(sd1, replay, x=axis, output_dir=tmp_path / axis[:4])
        seeds = [str(parse_generation_parameters(read_infotext(r.path))["Seed"]) for r in result.images]
        assert seeds[0] == want[0] and want[1] in seeds, (axis, seeds)        # the labels' seeds, from 13 alone


def test_the_grid_limit_counts_a_hires_target_and_the_largest_cell():
    from dreambooth.generation.xyz import check_grid_pixels
    base = GenerationParams("a dog", width=512, height=512)
    check_grid_pixels(20, 20, [base.replace(hires=True, hires_width=600, hires_height=600)], "--x")   # 144 MP
    with pytest.raises(UserError, match="megapixels"):
        check_grid_pixels(10, 10, [base.replace(hires=True, hires_width=2048)], "--x")              # 419 MP
    with pytest.raises(UserError, match="megapixels"):
        check_grid_pixels(20, 20, [base, base.replace(width=1024, height=1024)], "--x")             # 419 MP
