"""One sampling path: every PNG the project saves carries an infotext from which
``dreambooth generate --from-image`` makes it again, bit for bit: generate, an X/Y/Z cell, DreamBench,
validation images during training, class images, and the demo."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from dreambooth.generation.infotext import parse_generation_parameters, read_infotext


def recreated(png, tmp_path, *extra) -> np.ndarray:
    out = tmp_path / f"again-{png.stem}"
    code, stdout, err = run_cli("generate", "--from-image", png, "--output", out, *extra)
    assert code == 0 and "will differ" not in err, err            # a bit-for-bit replay is not warned of
    (made,) = stdout.split()
    return np.asarray(Image.open(made))


def same(png, tmp_path, *extra) -> bool:
    return np.array_equal(np.asarray(Image.open(png)), recreated(png, tmp_path, *extra))


def test_generate_and_an_xyz_cell(tiny_sd1, tmp_path):
    common = ["--model", tiny_sd1, "--prompt", "a (dog:1.1) [in the snow:on a beach:1]", "--steps", "3",
              "--width", "32", "--height", "32", "--seed", "21"]
    code, stdout, err = run_cli("generate", *common, "--batch-size", "2", "--sampler", "DPM++ 2M",
                                "--output", tmp_path / "g")
    assert code == 0, err
    assert same(tmp_path / "g" / "00002-22.png", tmp_path)
    code, stdout, err = run_cli("generate", *common, "--x", "CFG scale: 3, 9", "--y", "Sampler: Euler a, DDIM",
                                "--output", tmp_path / "xyz")
    assert code == 0, err
    cells = [p for p in stdout.split() if "grid-" not in p]
    assert len(cells) == 4
    info = parse_generation_parameters(read_infotext(cells[3]))
    assert (info["CFG scale"], info["Sampler"]) == ("9", "DDIM")
    assert same(tmp_path / "xyz" / cells[3].rsplit("/", 1)[-1], tmp_path)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_remade_in_the_precision_it_was_made_in(dtype, tiny_sd1, tmp_path):
    # the default precision depends on the machine (bf16 on a CPU that has it in hardware): the PNG
    # records what it was made in, and a remake with the default uses that, not this machine's default
    code, stdout, err = run_cli("generate", "--model", tiny_sd1, "--prompt", "a dog", "--steps", "2", "--width", "32",
                                "--height", "32", "--seed", "3", "--dtype", dtype, "--output", tmp_path / "g")
    assert code == 0, err
    (png,) = stdout.split()
    assert parse_generation_parameters(read_infotext(png))["Precision"] == dtype
    assert same(Path(png), tmp_path)
    other = "bf16" if dtype == "fp32" else "fp32"          # asked for explicitly, the other precision differs
    assert not np.array_equal(np.asarray(Image.open(png)), recreated(Path(png), tmp_path / "other", "--dtype", other))


def test_the_default_precision(tiny_sd1, tmp_path):
    import torch
    from dreambooth.devices import cpu_has_native_bf16, generation_dtype
    assert generation_dtype(torch.device("cuda")) == torch.float16
    code, stdout, err = run_cli("generate", "--model", tiny_sd1, "--prompt", "a dog", "--steps", "2", "--width", "32",
                                "--height", "32", "--output", tmp_path, "--device", "cpu")
    assert code == 0, err
    expected = "bf16" if cpu_has_native_bf16() else "fp32"
    assert parse_generation_parameters(read_infotext(stdout.split()[0]))["Precision"] == expected


def test_a_dreambench_image(tiny_sd1, dog_photos, tmp_path):
    from dreambooth.testing.eval_models import save_tiny_eval_models
    dino, clip = save_tiny_eval_models(tmp_path / "eval")
    out = tmp_path / "bench"
    code, _, err = run_cli("bench", "--model", tiny_sd1, "--real", dog_photos, "--subject", "dog", "--images-per-prompt",
                           "2", "--steps", "2", "--size", "32", "--sampler", "DDIM", "--dino-model", dino,
                           "--clip-model", clip, "--output", out)
    assert code == 0, err
    png = next((out / "images").glob("03-*/00002-1.png"))
    assert parse_generation_parameters(read_infotext(png))["Sampler"] == "DDIM"
    assert same(png, tmp_path)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_validation_and_class_images(method, tiny_sd1, dog_photos, tmp_path):
    out = tmp_path / f"run-{method}"
    # full: its text encoder trained at clip skip 2, so class and validation images are made at clip skip 2
    extra = ["--train-text-encoder", "--clip-skip", "2"] if method == "full" else []
    code, _, err = run_cli(
        "train", "--model", tiny_sd1, "--instance-dir", dog_photos, "--instance-prompt", "a photo of sks dog",
        "--class-prompt", "a photo of dog", "--num-class-images", "2", "--class-steps", "2", "--method", method,
        "--resolution", "32", "--max-steps", "2", "--learning-rate", "1e-3", "--validate-every", "2",
        "--validation-seeds", "5", "--validation-steps", "2", "--validation-prompts", "a sks dog [on a beach:2]",
        "--output", out, *extra)          # the default evaluation models are not cached here: grids only
    assert code == 0, err
    class_image = out / "class_images" / "class-00001.png"
    info = parse_generation_parameters(read_infotext(class_image))
    assert info["Seed"] == "1" and info["Model path"] == str(tiny_sd1.resolve())      # made by the base model
    assert info["Clip skip"] == ("2" if extra else "1")
    assert same(class_image, tmp_path)
    final = out / "validation" / "step-000002" / "00001-5.png"
    info = parse_generation_parameters(read_infotext(final))
    assert info["Clip skip"] == ("2" if extra else "1")
    if method == "lora":        # the base model with the trained LoRA, as A1111 would write it
        assert info["Prompt"] == f"a sks dog [on a beach:2] <lora:{out.name}:1>" and out.name in info["Lora hashes"]
        code, _, err = run_cli("generate", "--from-image", out / "validation" / "step-000000" / "00001-5.png",
                               "--output", tmp_path / "step0")      # no Lora hashes: the LoRA was not written
        assert code == 0 and f"made while LoRA {out.name} trained, before its file was written" in err, err
    else:
        from dreambooth.models.hashes import model_hash
        assert info["Model path"] == str(out.resolve())
        assert info["Model hash"] == model_hash(out)          # the final step's images: the output, written
        first = parse_generation_parameters(read_infotext(out / "validation" / "step-000000" / "00001-5.png"))
        assert "Model hash" not in first                      # before it was: no hash (it was an empty folder's)
        code, _, err = run_cli("generate", "--from-image", out / "validation" / "step-000000" / "00001-5.png",
                               "--output", tmp_path / "step0")
        assert code == 0 and "made during training, before its output was written" in err, err
    assert same(final, tmp_path)


def test_a_demo_sample(tmp_path):
    from dreambooth.toy.demo import DEMO_MARK, run_demo
    out = tmp_path / "demo"
    (out / "model" / ".previous").mkdir(parents=True)        # an earlier demo killed while it replaced its model
    (out / "model" / ".previous" / "model_index.json").write_text("{}")
    (out / DEMO_MARK).touch()                                   # (a demo writes its mark first)
    run_demo(out, max_steps=2, num_class_images=2, log=lambda *_: None)
    after = out / "samples" / "after" / "00008-1.png"            # the second prompt, seed 1
    info = parse_generation_parameters(read_infotext(after))
    assert info["Sampler"] == "DDIM" and info["Model path"] == str((out / "model").resolve())
    assert same(after, tmp_path)
    assert same(out / "samples" / "before" / "00003-2.png", tmp_path)


def test_an_img2img_image_is_made_again_only_from_its_init_image(tiny_sd1, tmp_path):
    """Its infotext cannot hold the init image (nor an inpainting's mask): without them a replay is a
    one-line error naming the flags, not a txt2img image under the same name. With them, bit for bit."""
    init, mask = tmp_path / "init.png", tmp_path / "mask.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(init)
    Image.new("L", (32, 32), 255).save(mask)
    common = ["--model", tiny_sd1, "--prompt", "a dog", "--steps", "2", "--seed", "5", "--init-image", init]
    for name, extra, flags in (("img2img", [], "give its --init-image to make it again"),
                               ("inpainted", ["--mask", mask], "give its --init-image and --mask to make it again")):
        code, stdout, err = run_cli("generate", *common, *extra, "--output", tmp_path / name)
        assert code == 0, err
        (png,) = stdout.split()
        code, _, err = run_cli("generate", "--from-image", png, "--output", tmp_path / f"{name}-again")
        assert code != 0 and f"an {name} image (Denoising strength 0.75): {flags}" in err and "Traceback" not in err
        assert same(Path(png), tmp_path, "--init-image", init, *extra)


def test_a1111_settings_a_replay_cannot_make_are_named(tiny_sd1, tmp_path):
    """An A1111 image made with its hires fix (made here too), a variation seed and its GPU noise: the
    replay says what it leaves out."""
    from PIL.PngImagePlugin import PngInfo
    meta = PngInfo()
    meta.add_text("parameters", "a dog\nSteps: 2, Sampler: Euler a, CFG scale: 7, Seed: 3, Size: 32x32, "
                                "Denoising strength: 0.7, Hires upscale: 2, Hires upscaler: Latent, Variation seed: 9, "
                                "Variation seed strength: 0.3")
    png = tmp_path / "a1111.png"
    Image.new("RGB", (64, 64)).save(png, pnginfo=meta)
    code, _, err = run_cli("generate", "--from-image", png, "--model", tiny_sd1, "--output", tmp_path / "out")
    assert code == 0, err
    assert "made with Variation seed, RNG GPU, which this project does not make" in err
    made = parse_generation_parameters(read_infotext(next((tmp_path / "out").glob("*.png"))))
    assert made["RNG"] == "CPU" and "Variation seed" not in made                 # what it is, said truly
    assert (made["Hires upscale"], made["Size-1"]) == ("2", "32")
    assert Image.open(next((tmp_path / "out").glob("*.png"))).size == (64, 64)   # the hires fix, made
    code, _, err = run_cli("generate", "--from-image", next((tmp_path / "out").glob("*.png")), "--output", tmp_path / "o2")
    assert code == 0 and "does not make" not in err                              # our own image: nothing left out


def test_a_replay_loads_the_vae_and_model_config_it_was_made_with(tiny_sd1, tmp_path):
    """A single-file model needs its --model-config, and a --vae changes every pixel: the infotext
    records both (``Model config``, ``VAE path``), so --from-image needs neither again."""
    import torch
    from diffusers import AutoencoderKL

    from dreambooth.models.single_file import export_single_file
    single = export_single_file(tiny_sd1, tmp_path / "model.safetensors", "sd1", dtype=torch.float32)
    vae = AutoencoderKL.from_pretrained(tiny_sd1 / "vae")
    with torch.no_grad():
        vae.decoder.conv_out.weight.mul_(0.5)                 # another VAE: other pixels
    vae.save_pretrained(tmp_path / "other-vae")
    code, stdout, err = run_cli("generate", "--model", single, "--model-config", tiny_sd1, "--vae", tmp_path / "other-vae",
                                "--prompt", "a dog", "--steps", "2", "--width", "32", "--height", "32", "--seed", "9",
                                "--output", tmp_path / "made")
    assert code == 0, err
    (png,) = stdout.split()
    info = parse_generation_parameters(read_infotext(png))
    assert (info["Model config"], info["VAE path"]) == (str(tiny_sd1.resolve()), str((tmp_path / "other-vae").resolve()))
    assert same(Path(png), tmp_path)
