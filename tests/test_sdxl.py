"""SDXL through the same loop: both text encoders, micro-conditioning, kohya LoRA export (issue 'SDXL')."""
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import run_cli
from dreambooth.training.config import build_config
from dreambooth.training.trainer import Trainer

COMMON = ["--instance-prompt", "a photo of sks dog", "--class-prompt", "a photo of dog", "--num-class-images", "2",
          "--class-steps", "2", "--train-text-encoder", "--resolution", "64", "--max-steps", "4"]


def _xl(path):
    from diffusers import StableDiffusionXLPipeline
    pipe = StableDiffusionXLPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _image(pipe):
    return pipe("a photo of sks dog", num_inference_steps=3, height=64, width=64, output_type="np",
                generator=torch.Generator().manual_seed(0)).images[0]


@pytest.fixture(scope="module")
def sdxl_lora(tiny_sdxl, dog_photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("xl") / "xl-lora"
    code, _, err = run_cli("train", "--model", tiny_sdxl, "--instance-dir", dog_photos, *COMMON, "--method", "lora",
                           "--rank", "4", "--alpha", "8", "--learning-rate", "1e-2", "--output", out)
    assert code == 0, err
    return out


def test_sdxl_lora_loads_and_changes_output(tiny_sdxl, sdxl_lora):
    keys = load_file(str(sdxl_lora / "pytorch_lora_weights.safetensors")).keys()
    assert {k.split(".")[0] for k in keys} == {"unet", "text_encoder", "text_encoder_2"}
    pipe = _xl(tiny_sdxl)
    before = _image(pipe)
    pipe.load_lora_weights(sdxl_lora)
    assert np.abs(_image(pipe) - before).max() > 1e-3


@pytest.mark.parametrize("family", ["sdxl", "sd1"])
def test_kohya_file_round_trips_through_diffusers(family, tiny_sdxl, tiny_sd1, sdxl_lora, dog_photos, tmp_path):
    base, out = tiny_sdxl, sdxl_lora
    if family == "sd1":
        base, out = tiny_sd1, tmp_path / "sd1-lora"
        code, _, err = run_cli("train", "--model", tiny_sd1, "--instance-dir", dog_photos, *COMMON, "--method", "lora",
                               "--rank", "4", "--alpha", "2", "--learning-rate", "1e-2", "--output", out)
        assert code == 0, err
    kohya = load_file(str(out / f"{out.name}.safetensors"))
    prefixes = {k.split("_")[0] + "_" + k.split("_")[1] for k in kohya}
    assert prefixes == ({"lora_unet", "lora_te1", "lora_te2"} if family == "sdxl" else {"lora_unet", "lora_te"})
    downs = [k for k in kohya if k.endswith(".lora_down.weight")]
    assert downs and all(k.replace(".lora_down.weight", ".alpha") in kohya for k in downs)
    assert all(k.replace(".lora_down.weight", ".lora_up.weight") in kohya for k in downs)
    # kohya's SD1/SD2 UNet (sd-scripts' original_unet.py) keeps diffusers' module names; SDXL's is SGM's
    blocks = ("input_blocks", "middle_block", "output_blocks") if family == "sdxl" else ("down_blocks", "mid_block", "up_blocks")
    assert all(k.startswith(tuple(f"lora_unet_{b}_" for b in blocks)) for k in downs if k.startswith("lora_unet_"))
    te_keys = [k for k in downs if k.startswith("lora_te")]
    assert te_keys and all("_text_model_encoder_layers_" in k for k in te_keys)   # A1111/kohya module names
    pipe = _xl(base) if family == "sdxl" else __import__("test_train")._pipe(base)
    before = _image(pipe)
    pipe.load_lora_weights(out)
    via_diffusers = _image(pipe)
    pipe.unload_lora_weights()
    pipe.load_lora_weights(str(out / f"{out.name}.safetensors"))
    via_kohya = _image(pipe)
    assert np.abs(via_diffusers - before).max() > 1e-3
    np.testing.assert_allclose(via_kohya, via_diffusers, atol=1e-5)


def test_sdxl_kohya_file_names_the_unet_as_kohya_does(tiny_sdxl, sdxl_lora):
    """kohya names an SDXL LoRA's layers after Stability's original UNet (sd-scripts' sdxl_original_unet.py;
    its sdxl_merge_lora.py looks them up as they are). Checked against diffusers' own SGM -> diffusers
    mapping of kohya names, not ours: each name must lead to the diffusers layer holding those weights."""
    from types import SimpleNamespace

    from diffusers import UNet2DConditionModel
    from diffusers.loaders.lora_conversion_utils import _maybe_map_sgm_blocks_to_diffusers
    kohya = load_file(str(sdxl_lora / f"{sdxl_lora.name}.safetensors"))
    unet = {k: v for k, v in kohya.items() if k.startswith("lora_unet_")}
    assert not [k for k in unet if any(p in k for p in ("down_blocks", "mid_block", "up_blocks"))]
    # as in kohya's SDXL files (the tiny model has SDXL's block layout: 3 levels, 2 layers, none at the top)
    assert {"lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight",
            "lora_unet_middle_block_1_transformer_blocks_0_attn2_to_k.alpha",
            "lora_unet_output_blocks_0_1_transformer_blocks_0_attn1_to_out_0.lora_up.weight"} <= set(unet)
    config = SimpleNamespace(**UNet2DConditionModel.load_config(tiny_sdxl / "unet"))
    mapped = _maybe_map_sgm_blocks_to_diffusers(dict(unet), config)
    trained = load_file(str(sdxl_lora / "pytorch_lora_weights.safetensors"))      # diffusers names, ".lora.down.weight"
    expected = {"lora_unet_" + k.removeprefix("unet.").removesuffix(".lora.down.weight").replace(".", "_"): v
                for k, v in trained.items() if k.startswith("unet.") and k.endswith(".lora.down.weight")}
    # (diffusers renumbers the blocks there, and renames input_blocks/middle_block/output_blocks next)
    renames = {"_input_blocks_": "_down_blocks_", "_middle_block_": "_mid_block_", "_output_blocks_": "_up_blocks_"}
    downs = {}
    for key, value in mapped.items():
        if key.endswith(".lora_down.weight"):
            for old, new in renames.items():
                key = key.replace(old, new)
            downs[key.removesuffix(".lora_down.weight")] = value
    assert downs.keys() == expected.keys()
    assert all(torch.equal(downs[k], expected[k]) for k in expected)


def test_sdxl_full_with_both_text_encoders(tiny_sdxl, dog_photos, tmp_path):
    out = tmp_path / "xl-full"
    code, _, err = run_cli("train", "--model", tiny_sdxl, "--instance-dir", dog_photos, *COMMON, "--method", "full",
                           "--learning-rate", "1e-3", "--output", out)
    assert code == 0, err
    base, trained = _xl(tiny_sdxl), _xl(out)
    for name in ("unet", "text_encoder", "text_encoder_2"):
        a, b = getattr(base, name).state_dict(), getattr(trained, name).state_dict()
        assert any(not torch.equal(a[k], b[k]) for k in a), name
    assert np.abs(_image(trained) - _image(base)).max() > 1e-3


def test_micro_conditioning_of_a_rotated_non_square_photo(tiny_sdxl, tmp_path):
    """A photo stored 60 wide x 40 high with EXIF orientation 6 is 40 wide x 60 high when shown.
    At 32 px with a centre crop: resized to 32 x 48 (w x h), cropped 8 px from the top. So SDXL's
    add_time_ids are (original h, w, crop top, left, target h, w) = (60, 40, 8, 0, 32, 32)."""
    photos = tmp_path / "p"
    photos.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (60, 40), (200, 30, 30)).save(photos / "a.jpg", exif=exif.tobytes())
    cfg = build_config(None, dict(model=str(tiny_sdxl), instance_dir=str(photos), instance_prompt="a sks dog",
                                  resolution=32, center_crop=True, max_steps=1, output=str(tmp_path / "o")))
    trainer = Trainer(cfg, []).setup()
    seen = []
    real_forward = trainer.unet.forward

    def spy(*args, added_cond_kwargs=None, **kwargs):
        seen.append(added_cond_kwargs["time_ids"].clone())
        return real_forward(*args, added_cond_kwargs=added_cond_kwargs, **kwargs)

    trainer.unet.forward = spy
    trainer.fit()
    assert seen[0].tolist() == [[60.0, 40.0, 8.0, 0.0, 32.0, 32.0]]
    # random crops: the offset is recorded wherever the crop falls
    trainer2 = Trainer(cfg.replace(center_crop=False, output=str(tmp_path / "o2")), []).setup()
    crops = {trainer2.stream.next_batch().crop_top_left[0] for _ in range(12)}
    assert all(left == 0 and 0 <= top <= 16 for top, left in crops) and len(crops) > 1
