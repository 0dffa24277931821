"""Model loading from every place users keep models, family detection, VAE precision, identifiers."""
import shutil

import pytest
import torch

from conftest import run_cli
from dreambooth.training.config import build_config
from dreambooth.errors import UserError
from dreambooth.models import detect_family, family_of, load_pipeline, resolve_model
from dreambooth.training.trainer import Trainer


def _fake_hub_cache(root, repo_id, folder):
    """Lay out a diffusers folder the way huggingface_hub caches a download."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_hub_id_resolves_from_the_cache_offline(tiny_sd1, tmp_path, monkeypatch):
    import huggingface_hub.constants as hc
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path))
    _fake_hub_cache(tmp_path, "someone/tiny-sd", tiny_sd1)
    ref = resolve_model("someone/tiny-sd")
    assert ref.kind == "hub" and (ref.path / "model_index.json").exists()
    assert family_of(load_pipeline("someone/tiny-sd")) == "sd1"
    with pytest.raises(UserError, match="not in the local Hugging Face cache and HF_HUB_OFFLINE=1"):
        resolve_model("someone/not-downloaded")


@pytest.mark.parametrize("spec, needle", [("/no/such/path", "no such folder"), ("notes.txt", "not a model file")])
def test_bad_model_specs(spec, needle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserError, match=needle):
        resolve_model(spec)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no model_index.json"):
        resolve_model(str(empty))
    with pytest.raises(UserError, match="--model: empty; give a diffusers folder"):
        resolve_model("  ")
    lora = tmp_path / "my_lora"                 # a LoRA training output is named as one, with its base model
    lora.mkdir()
    (lora / "pytorch_lora_weights.safetensors").write_bytes(b"")
    (lora / "training_args.json").write_text('{"model": "base/model"}')
    with pytest.raises(UserError, match=r"a LoRA training output, not a model; give its base model \(base/model\)"):
        resolve_model(str(lora))


def test_families_are_read_from_components(tiny_sd1, tiny_sd2, tiny_sdxl):
    assert [family_of(load_pipeline(str(p))) for p in (tiny_sd1, tiny_sd2, tiny_sdxl)] == ["sd1", "sd2", "sdxl"]
    assert load_pipeline(str(tiny_sd2)).scheduler.config.prediction_type == "v_prediction"
    # full-size configs, as published, without any weights
    assert detect_family({"cross_attention_dim": 768, "use_linear_projection": False}) == "sd1"
    assert detect_family({"cross_attention_dim": 1024, "use_linear_projection": True}) == "sd2"
    assert detect_family({"cross_attention_dim": 2048, "addition_embed_type": "text_time"}) == "sdxl"
    with pytest.raises(UserError, match="not supported"):
        detect_family({"in_channels": 9, "cross_attention_dim": 768})


def test_vae_replacement(tiny_sd1, tmp_path):
    from dreambooth.testing.tiny import _vae
    vae = _vae(seed=123)
    vae.save_pretrained(tmp_path / "vae")
    pipe = load_pipeline(str(tiny_sd1), vae=str(tmp_path / "vae"))
    assert all(torch.equal(a, b) for a, b in zip(pipe.vae.state_dict().values(), vae.state_dict().values()))
    with pytest.raises(UserError, match="--vae"):
        load_pipeline(str(tiny_sd1), vae=str(tmp_path / "missing"))
    (tmp_path / "model.txt").write_text("not a VAE")
    with pytest.raises(UserError, match="model.txt: not a VAE file; expected .safetensors"):
        load_pipeline(str(tiny_sd1), vae=str(tmp_path / "model.txt"))
    # SDXL's VAE has SD1's shape and another scale: the sdxl-lora preset's --vae with an SD1 --model
    # trained in the wrong latent space, silently
    from dreambooth.testing.tiny import _vae as make_vae
    xl = make_vae(seed=1)
    xl.register_to_config(scaling_factor=0.13025)
    xl.save_pretrained(tmp_path / "xl-vae")
    with pytest.raises(UserError, match=r"xl-vae: scales its latents by 0.13025, this model's VAE by 0.18215: a VAE "
                                        r"of another family \(SDXL\)"):
        load_pipeline(str(tiny_sd1), vae=str(tmp_path / "xl-vae"))


def test_vae_runs_in_bf16_under_bf16_even_when_it_asks_for_fp32_under_fp16(tiny_sdxl, dog_photos, tmp_path):
    """``force_upcast`` is about fp16's range (the SDXL VAE overflows there); bf16 has fp32's range, so
    a bf16 run encodes in bf16, as diffusers' pipelines do. Trainable weights are always fp32."""
    model = tmp_path / "m"
    shutil.copytree(tiny_sdxl, model)
    assert '"force_upcast": true' in (model / "vae" / "config.json").read_text()
    cfg = build_config(None, dict(model=str(model), instance_dir=str(dog_photos), instance_prompt="a sks dog",
                                  resolution=32, max_steps=1, mixed_precision="bf16", output=str(tmp_path / "o")))
    trainer = Trainer(cfg, []).setup()
    assert trainer.pipe.vae.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in trainer.pipe.unet.parameters() if p.requires_grad)
    trainer.fit()


def test_loading_in_a_dtype_warns_nothing_and_loads_in_it(tiny_sd1, tmp_path):
    """diffusers warns on ``torch_dtype`` (renamed ``dtype``) at every load: noise on every command."""
    import warnings
    from dreambooth.testing.tiny import _vae
    _vae(seed=1).save_pretrained(tmp_path / "vae")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        pipe = load_pipeline(str(tiny_sd1), vae=str(tmp_path / "vae"), dtype=torch.bfloat16)
    assert {p.dtype for m in (pipe.unet, pipe.vae, pipe.text_encoder) for p in m.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("force_upcast, weight_dtype, expected", [
    (True, torch.float16, torch.float32), (False, torch.float16, torch.float16),
    (True, torch.bfloat16, torch.bfloat16), (True, torch.float32, torch.float32)])
def test_vae_dtype_upcasts_for_fp16_only(force_upcast, weight_dtype, expected):
    from dreambooth.training.trainables import vae_dtype
    assert vae_dtype(force_upcast, weight_dtype) == expected


def test_tokens_command_lists_rare_single_tokens(tiny_sd1):
    code, out, err = run_cli("tokens", "--model", tiny_sd1, "--count", "3")
    assert code == 0, err
    rows = [l.split()[0] for l in out.splitlines()[1:] if l and not l.startswith("note")]
    assert rows and "sks" not in rows and all(2 <= len(t) <= 3 for t in rows)
    assert "rifle" in out


def test_identifier_warnings(tiny_sd1):
    from dreambooth.models.tokens import identifier_warnings
    tok = load_pipeline(str(tiny_sd1)).tokenizer
    assert identifier_warnings(tok, "a photo of zwx dog", "a photo of dog") == []
    assert "splits into" in identifier_warnings(tok, "a photo of qqvvzz dog", "a photo of dog")[0]
    assert "common word" in identifier_warnings(tok, "a photo of red dog", "a photo of dog")[0]


@pytest.mark.parametrize("method", ["lora", "full"])
def test_class_images_under_mixed_precision(tiny_sdxl, dog_photos, tmp_path, method):
    """bf16 training: class images come from the bf16 denoiser and the fp32 VAE, and are not blank."""
    import numpy as np
    from PIL import Image
    cfg = build_config(None, dict(model=str(tiny_sdxl), instance_dir=str(dog_photos), instance_prompt="a sks dog",
                                  class_prompt="a dog", num_class_images=2, class_steps=2, method=method,
                                  resolution=32, max_steps=1, mixed_precision="bf16", output=str(tmp_path / "o")))
    Trainer(cfg, []).setup()
    images = sorted((tmp_path / "o" / "class_images").glob("*.png"))
    assert len(images) == 2
    assert all(np.asarray(Image.open(p)).std() > 1 for p in images)


def test_debug_shows_the_traceback_anywhere_on_the_line(tmp_path):
    from dreambooth.cli.main import main
    from dreambooth.errors import UserError
    with pytest.raises(UserError):
        main(["train", "--model", "/no/such", "--instance-dir", str(tmp_path), "--instance-prompt", "a sks dog",
              "--output", str(tmp_path / "o"), "--debug"])
