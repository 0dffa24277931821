"""Single-file export: diffusers folder -> one original-layout (LDM/SGM) .safetensors checkpoint.

The criterion is the round trip through diffusers' own single-file loader: every UNet, VAE and
text-encoder weight comes back bit-equal, and diffusers' ``infer_diffusers_model_type`` (which
``dreambooth.models.load_pipeline`` uses to pick the pipeline class) names the right family.

Two limits come from size alone, not from the export, so the tests build slightly wider/deeper
variants (real classes, configs changed with ``from_config``) where they bite:

* diffusers detects SD2 by ``input_blocks.2.1...attn2.to_k.weight`` being 1024 wide and SDXL by the
  presence of ``conditioner.embedders.1.model.transformer.resblocks.9`` (a 10th OpenCLIP layer); the
  tiny SD2 (cross-attention 32, one layer per level) and tiny SDXL (2-layer encoders) files are
  therefore reported as 'v1' (SD1 is detected as 'v1' fine).
* diffusers tells SDXL's two text encoders apart in a single file by their widths (768 vs 1280 in
  the real model); the tiny SDXL's are both 32 wide, so its loader fills ``text_encoder_2`` from the
  CLIP-L slot. The tiny SDXL round trip therefore checks UNet, VAE and text_encoder only, and the
  variant (second encoder 48 wide, 10 layers) checks all four components, detection and
  ``load_pipeline``.

Full-size layouts (SD1.5, SD2.1, SDXL base) are checked without weights on the meta device: the
exported keys are converted back by diffusers' own converters and detected as 'v1'/'v2'/'xl_base'.
"""
import pytest
import torch
from diffusers import (AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline,
                       UNet2DConditionModel)
from diffusers.loaders import single_file_utils as sfu
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from dreambooth.models.single_file import (_apply_prefixes, _convert_vae, clip_to_original, export_single_file,
                                    open_clip_to_original, unet_key_map)

COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


def _load_folder(directory, xl):
    if xl:
        return StableDiffusionXLPipeline.from_pretrained(directory)
    return StableDiffusionPipeline.from_pretrained(directory, safety_checker=None, requires_safety_checker=False)


def _load_file(path, directory, xl):
    cls = StableDiffusionXLPipeline if xl else StableDiffusionPipeline
    extra = {} if xl else {"safety_checker": None, "requires_safety_checker": False}
    return cls.from_single_file(str(path), config=str(directory), local_files_only=True, **extra)


def _assert_equal(reference, loaded, names=COMPONENTS):
    checked = 0
    for name in names:
        ref = getattr(reference, name, None)
        if ref is None:
            continue
        want, got = ref.state_dict(), getattr(loaded, name).state_dict()
        assert set(got) == set(want), f"{name}: keys differ {sorted(set(got) ^ set(want))[:5]}"
        for key, value in want.items():
            assert got[key].dtype == value.dtype and torch.equal(got[key], value), f"{name}.{key} differs"
        checked += 1
    return checked


def _model_type(path):
    return sfu.infer_diffusers_model_type(sfu.load_single_file_checkpoint(str(path)))


# ----- variants that diffusers can detect (see the module docstring) --------------------------------

@pytest.fixture(scope="module")
def wide_sd2(tmp_path_factory):
    """Tiny SD2 with what diffusers' SD2 detection keys on: two layers per level (so
    ``input_blocks.2.1`` is an attention block) and a 1024-wide text encoder/cross-attention."""
    from dreambooth.testing.tiny import build_sd_pipeline
    pipe = build_sd_pipeline(2)
    torch.manual_seed(5)
    pipe.unet = UNet2DConditionModel.from_config({**pipe.unet.config, "layers_per_block": 2, "cross_attention_dim": 1024})
    config = pipe.text_encoder.config.to_dict()
    config.update(hidden_size=1024, intermediate_size=64, num_hidden_layers=1)
    pipe.text_encoder = CLIPTextModel(CLIPTextConfig(**config))
    directory = tmp_path_factory.mktemp("wide-sd2")
    pipe.save_pretrained(directory, safe_serialization=True)
    return directory


@pytest.fixture(scope="module")
def wide_sdxl(tmp_path_factory):
    """Tiny SDXL whose second encoder is wider than the first (48 vs 32, as bigG vs CLIP-L) and
    has ten layers (SDXL detection looks for ``resblocks.9``)."""
    from dreambooth.testing.tiny import build_sdxl_pipeline
    pipe = build_sdxl_pipeline()
    config = pipe.text_encoder_2.config.to_dict()
    config.update(hidden_size=48, intermediate_size=96, num_hidden_layers=10, projection_dim=48)
    torch.manual_seed(6)
    pipe.text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**config))
    time_dim = pipe.unet.config.addition_time_embed_dim
    pipe.unet = UNet2DConditionModel.from_config({**pipe.unet.config, "cross_attention_dim": 32 + 48,
                                                 "projection_class_embeddings_input_dim": 6 * time_dim + 48})
    directory = tmp_path_factory.mktemp("wide-sdxl")
    pipe.save_pretrained(directory, safe_serialization=True)
    return directory


# ----- round trips --------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_round_trip_sd(family, request, tmp_path):
    directory = request.getfixturevalue(f"tiny_{family}")
    path = export_single_file(directory, tmp_path / "model.safetensors", family, dtype=torch.float32)
    assert _assert_equal(_load_folder(directory, False), _load_file(path, directory, False)) == 3
    assert _model_type(path) == "v1"  # tiny SD2 too: too narrow for diffusers' SD2 detection


def test_round_trip_tiny_sdxl(tiny_sdxl, tmp_path):
    path = export_single_file(tiny_sdxl, tmp_path / "model.safetensors", "sdxl", dtype=torch.float32)
    reference = _load_folder(tiny_sdxl, True)
    loaded = _load_file(path, tiny_sdxl, True)
    assert _assert_equal(reference, loaded, ("unet", "vae", "text_encoder")) == 3
    # The second encoder is in the file, in OpenCLIP layout (its loading is the width limit above).
    state = load_file(str(path))
    te2 = reference.text_encoder_2.state_dict()
    q, k, v = (te2[f"text_model.encoder.layers.1.self_attn.{n}_proj.weight"] for n in "qkv")
    assert torch.equal(state["conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight"], torch.cat([q, k, v]))
    assert torch.equal(state["conditioner.embedders.1.model.text_projection"], te2["text_projection.weight"].T)


@pytest.mark.parametrize("family,kind", [("sd2", "v2"), ("sdxl", "xl_base")])
def test_round_trip_detection_and_load_pipeline(family, kind, request, tmp_path):
    from dreambooth.models import load_pipeline
    directory = request.getfixturevalue(f"wide_{family}")
    xl = family == "sdxl"
    path = export_single_file(directory, tmp_path / "model.safetensors", family, dtype=torch.float32)
    assert _model_type(path) == kind
    reference = _load_folder(directory, xl)
    # load_pipeline picks the class from the detected type, then runs diffusers' from_single_file
    # with the folder as config (what _load_file does).
    pipe = load_pipeline(str(path), model_config=str(directory))
    assert type(pipe) is type(reference)
    assert _assert_equal(reference, pipe) == (4 if xl else 3)


def test_load_pipeline_sd1_and_default_fp16(tiny_sd1, tmp_path):
    from dreambooth.models import load_pipeline
    path = export_single_file(tiny_sd1, tmp_path / "sub" / "model.safetensors", "sd1")
    state = load_file(str(path))
    assert {v.dtype for v in state.values()} == {torch.float16}
    assert all(k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model."))
               for k in state)
    assert state["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4  # 1x1 conv, as the original
    with safe_open(str(path), "pt") as handle:
        assert handle.metadata()["modelspec.architecture"] == "stable-diffusion-v1"
    reference = _load_folder(tiny_sd1, False)
    pipe = load_pipeline(str(path), model_config=str(tiny_sd1))
    assert isinstance(pipe, StableDiffusionPipeline)
    # parts stay in the file's fp16 (the trainer casts each as it places it), not upcast at loading;
    # cast up afterwards, or loaded as fp32 when asked, they hold the same values
    upcast = load_pipeline(str(path), model_config=str(tiny_sd1), dtype=torch.float32)
    for name in ("unet", "vae", "text_encoder"):
        part, wide = getattr(pipe, name), getattr(upcast, name)
        assert part.dtype == torch.float16 and wide.dtype == torch.float32
        wide_state = wide.state_dict()
        for key, value in part.state_dict().items():
            assert torch.equal(value.to(wide_state[key].dtype), wide_state[key]), f"{name}.{key}"
    for key, value in reference.unet.state_dict().items():
        assert torch.equal(upcast.unet.state_dict()[key], value.half().float()), key


def test_sd2_layout_and_v_prediction_marker(tiny_sd2, tmp_path):
    state = load_file(str(export_single_file(tiny_sd2, tmp_path / "m.safetensors", "sd2", dtype=torch.float32)))
    prefix = "cond_stage_model.model."
    for key in ("token_embedding.weight", "positional_embedding", "ln_final.weight", "text_projection",
                "transformer.resblocks.0.attn.in_proj_weight", "transformer.resblocks.0.attn.in_proj_bias",
                "transformer.resblocks.0.attn.out_proj.weight", "transformer.resblocks.0.mlp.c_fc.weight",
                "transformer.resblocks.0.mlp.c_proj.weight", "transformer.resblocks.0.ln_1.weight"):
        assert prefix + key in state, key
    assert not any(k.startswith("cond_stage_model.transformer.") for k in state)
    assert "v_pred" in state  # tiny SD2 is v-prediction; ComfyUI reads this marker


def test_a_v_prediction_file_is_v_prediction_whatever_its_config_says(tiny_sd2, tiny_sd1, tmp_path):
    """An SD 2.1 (768, v) file given the config of its epsilon sibling (2.1-base) sampled and trained
    with the wrong target, silently; its v_pred marker decides, as in A1111 and ComfyUI. A config of
    another family is named in the error, with what the file is."""
    import json
    import shutil

    from dreambooth.errors import UserError
    from dreambooth.models.loading import load_pipeline
    single = export_single_file(tiny_sd2, tmp_path / "v.safetensors", "sd2", dtype=torch.float32)
    epsilon = tmp_path / "sd2-base"
    shutil.copytree(tiny_sd2, epsilon)
    config = json.loads((epsilon / "scheduler" / "scheduler_config.json").read_text())
    (epsilon / "scheduler" / "scheduler_config.json").write_text(json.dumps({**config, "prediction_type": "epsilon"}))
    pipe = load_pipeline(str(single), model_config=str(epsilon))
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    # (diffusers tells SD 2.x files by their 24 text layers: the tiny one passes for SD 1.x)
    with pytest.raises(UserError, match=rf"cannot load it with --model-config {tiny_sd1} .*the file is an SD 1.x "
                                        "checkpoint: give a diffusers folder"):
        load_pipeline(str(single), model_config=str(tiny_sd1))


def test_unknown_family_and_unmappable_weight(tiny_sd1, tmp_path):
    with pytest.raises(ValueError, match="family"):
        export_single_file(tiny_sd1, tmp_path / "x.safetensors", "sd3")
    unet = UNet2DConditionModel.load_config(tiny_sd1, subfolder="unet")
    with pytest.raises(ValueError, match="no original-layout name"):
        _apply_prefixes({"encoder_hid_proj.weight": torch.zeros(1)}, unet_key_map(unet), "UNet")


# ----- full-size layouts, without weights --------------------------------------------------------------

_SD_BLOCKS = dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                  down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                  up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
FULL = {
    "v1": (dict(**_SD_BLOCKS, cross_attention_dim=768, attention_head_dim=8),
           [("cond_stage_model.transformer.", CLIPTextModel, dict(hidden_size=768, num_hidden_layers=12,
                                                                   num_attention_heads=12, intermediate_size=3072))]),
    "v2": (dict(**_SD_BLOCKS, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True),
           [("cond_stage_model.model.", CLIPTextModel, dict(hidden_size=1024, num_hidden_layers=23,
                                                            num_attention_heads=16, intermediate_size=4096))]),
    "xl_base": (dict(block_out_channels=(320, 640, 1280), layers_per_block=2,
                     down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                     up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                     attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048,
                     use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                     projection_class_embeddings_input_dim=2816),
                [("conditioner.embedders.0.transformer.", CLIPTextModel,
                  dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)),
                 ("conditioner.embedders.1.model.", CLIPTextModelWithProjection,
                  dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=20, intermediate_size=5120,
                       projection_dim=1280))]),
}


@pytest.mark.parametrize("kind", list(FULL))
def test_full_size_layout_is_what_diffusers_reads(kind):
    unet_kwargs, encoders = FULL[kind]
    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_kwargs)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
        texts = [(prefix, cls(CLIPTextConfig(**kw))) for prefix, cls, kw in encoders]
    ckpt = _apply_prefixes(unet.state_dict(), unet_key_map(unet.config), "UNet")
    ckpt.update(_convert_vae(vae.state_dict(), vae.config))
    for prefix, model in texts:
        if prefix.endswith(".model."):
            ckpt.update(open_clip_to_original(model.state_dict(), prefix, model.config.hidden_size))
        else:
            ckpt.update(clip_to_original(model.state_dict(), prefix))
    assert sfu.infer_diffusers_model_type(ckpt) == kind
    assert sum(k.startswith("model.diffusion_model.") for k in ckpt) == {"v1": 686, "v2": 686, "xl_base": 1680}[kind]
    # diffusers' own converters read every weight back, under the same name, with the same shape.
    for back, model in ((sfu.convert_ldm_unet_checkpoint(ckpt, unet.config), unet),
                        (sfu.convert_ldm_vae_checkpoint(ckpt, vae.config), vae)):
        want = model.state_dict()
        assert set(back) == set(want)
        assert all(back[k].shape == want[k].shape for k in want)
    for prefix, model in texts:
        if prefix.endswith(".model."):
            back = sfu.convert_open_clip_checkpoint(model, ckpt, prefix=prefix)
        else:
            back = sfu.convert_ldm_clip_checkpoint(ckpt)
        want = {k.removeprefix("text_model."): v for k, v in model.state_dict().items()}
        back = {k.removeprefix("text_model."): v for k, v in back.items()}
        assert set(back) == set(want), sorted(set(back) ^ set(want))[:5]
        assert all(back[k].shape == want[k].shape for k in want)


def test_training_from_an_fp16_file_matches_training_from_it_upcast(tiny_sd1, dog_photos, tmp_path, monkeypatch):
    """A single fp16 file loads as fp16 and the trainer casts each part where it places it (bf16 for the
    frozen VAE, fp32 for the trained UNet and text encoder): the run is the one that upcast everything
    while loading, bit for bit, without holding every part in fp32 at once."""
    import json

    from conftest import run_cli, saved_weights
    from dreambooth.models import loading
    path = export_single_file(tiny_sd1, tmp_path / "model.safetensors", "sd1")      # fp16
    args = ["train", "--model", path, "--model-config", tiny_sd1, "--instance-dir", dog_photos,
            "--instance-prompt", "a photo of sks dog", "--method", "full", "--train-text-encoder",
            "--mixed-precision", "bf16", "--resolution", "32", "--max-steps", "2"]
    from dreambooth.training import trainer
    loaded, load = [], trainer.load_pipeline

    def load_and_look(*a, **k):
        pipe = load(*a, **k)
        loaded.append({name: getattr(pipe, name).dtype for name in ("unet", "vae", "text_encoder")})
        return pipe
    monkeypatch.setattr(trainer, "load_pipeline", load_and_look)
    code, _, err = run_cli(*args, "--output", tmp_path / "kept")
    assert code == 0, err
    assert loaded == [dict.fromkeys(("unet", "vae", "text_encoder"), torch.float16)]
    real = loading._single_file_type
    monkeypatch.setattr(loading, "_single_file_type", lambda p: (real(p)[0], None, real(p)[2]))    # upcast while loading
    code, _, err = run_cli(*args, "--output", tmp_path / "upcast")
    assert code == 0, err
    losses = [json.loads((tmp_path / o / "training_args.json").read_text())["losses"] for o in ("kept", "upcast")]
    assert losses[0] == losses[1]
    kept, upcast = saved_weights(tmp_path / "kept"), saved_weights(tmp_path / "upcast")
    assert kept.keys() == upcast.keys() and len(kept) >= 3
    for file in kept:
        assert all(torch.equal(kept[file][k], upcast[file][k]) for k in kept[file]), file


def test_an_a1111_vae_file_takes_the_models_vae_config(tiny_sdxl, tmp_path):
    """A VAE file as A1111 ships one (``sdxl_vae.safetensors``: original keys, no config) loads offline
    with the model's own VAE config, its scaling factor included (SDXL's 0.13025, not SD1's 0.18215),
    and makes the images the model's own VAE makes. A VAE of other latents is refused in one line."""
    import json
    import shutil

    from safetensors.torch import save_file

    from dreambooth.errors import UserError
    from dreambooth.models.loading import load_pipeline
    model = tmp_path / "sdxl"
    shutil.copytree(tiny_sdxl, model)
    config = json.loads((model / "vae" / "config.json").read_text())
    (model / "vae" / "config.json").write_text(json.dumps({**config, "scaling_factor": 0.13025}))
    own = AutoencoderKL.from_pretrained(model / "vae")
    original = {k.removeprefix("first_stage_model."): v.contiguous()
                for k, v in _convert_vae(own.state_dict(), own.config).items()}
    save_file(original, tmp_path / "sdxl_vae.safetensors")
    pipe = load_pipeline(str(model), vae=str(tmp_path / "sdxl_vae.safetensors"))
    assert pipe.vae.config.scaling_factor == 0.13025
    assert all(torch.equal(a, b) for a, b in zip(pipe.vae.state_dict().values(), own.state_dict().values()))
    other = AutoencoderKL(latent_channels=16, block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                          up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4)
    other.save_pretrained(tmp_path / "vae16")
    with pytest.raises(UserError, match=r"--vae .*vae16: makes 16-channel latents at 1/2 .* a VAE of another family"):
        load_pipeline(str(model), vae=str(tmp_path / "vae16"))


def test_a_lora_output_is_a_model_from_any_folder_even_on_a_single_file_base(tiny_sd1, dog_photos, tmp_path,
                                                                              monkeypatch):
    """Trained with a relative --model (a kohya user's models/base.safetensors with --model-config), the
    output's training_args.json records where the base was: generate --model OUTPUT works from another
    folder without --model-config; an older output naming a base not found here says so in one line."""
    import json

    from conftest import run_cli
    work = tmp_path / "work"
    export_single_file(tiny_sd1, work / "models" / "base.safetensors", "sd1")
    monkeypatch.chdir(work)
    code, _, err = run_cli("train", "--model", "models/base.safetensors", "--model-config", tiny_sd1, "--instance-dir",
                           dog_photos, "--instance-prompt", "a photo of sks dog", "--method", "lora", "--resolution",
                           "32", "--max-steps", "1", "--output", "out", "--clip-model", "models")
    assert code == 0, err
    args = json.loads((work / "out" / "training_args.json").read_text())
    assert args["model"] == str(work / "models" / "base.safetensors") and args["model_config"] == str(tiny_sd1)
    assert args["output"] == str(work / "out") and args["clip_model"] == str(work / "models")    # every local path
    monkeypatch.chdir(tmp_path)
    # the record is a --config from any folder: the same run again, its steps and losses left out
    code, _, err = run_cli("train", "--config", work / "out" / "training_args.json", "--output", "again")
    assert code == 0, err
    again = json.loads((tmp_path / "again" / "training_args.json").read_text())
    assert again["losses"] == args["losses"] and again["model"] == args["model"]
    (tmp_path / "dog.json").write_text((work / "out" / "training_args.json").read_text())    # kept under a name
    code, _, err = run_cli("train", "--config", tmp_path / "dog.json", "--output", "again2")
    assert code == 0, err
    code, stdout, err = run_cli("generate", "--model", work / "out", "-p", "a photo of sks dog", "--steps", "1",
                                "--width", "32", "--height", "32", "--output", tmp_path / "images")
    assert code == 0, err
    args["model"] = "models/base.safetensors"            # as an older output recorded it
    (work / "out" / "training_args.json").write_text(json.dumps(args))
    code, _, err = run_cli("generate", "--model", work / "out", "-p", "x", "--steps", "1")
    assert code == 2 and err.count("\n") == 1, err
    assert "the base model its training_args.json names, 'models/base.safetensors', is not found here" in err
