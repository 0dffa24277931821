"""A LoRA run's checkpoints as LoRAs (kohya's --save_every_n_steps files), and the checkpoint weights
file on its own refused rather than loaded into a NaN image."""
import json
import shutil

import numpy as np
import pytest
from safetensors.torch import load_file

from conftest import run_cli
from dreambooth.errors import UserError
from dreambooth.generation.loras import LoraLibrary, lora_from_path
from dreambooth.generation.params import GenerationParams
from dreambooth.generation.pipeline import load_generation_pipeline
from dreambooth.generation.sampling import generate
from dreambooth.models.specs import resolve_model


@pytest.fixture(scope="module")
def lora_run(tiny_sd1, dog_photos, tmp_path_factory):
    """rank 4, alpha 2: a checkpoint loaded with alpha = rank (diffusers' guess without one) differs."""
    out = tmp_path_factory.mktemp("runs") / "dogc"
    code, _, err = run_cli("train", "--model", tiny_sd1, "--instance-dir", dog_photos, "--instance-prompt", "a sks dog",
                           "--resolution", "32", "--max-steps", "4", "--checkpoint-every", "2", "--rank", "4",
                           "--alpha", "2", "--learning-rate", "1e-2", "--train-text-encoder", "--output", out)
    assert code == 0, err
    return out


def _pixels(model, lora):
    pipe = load_generation_pipeline(str(model), [(str(lora), 1.0)], dtype="fp32", device="cpu")
    (result,) = generate(pipe, GenerationParams("a sks dog", steps=2, width=32, height=32, seed=5))
    return np.asarray(result.image.convert("RGB"), dtype=np.int16)


def test_a_lora_runs_checkpoint_is_the_lora_at_that_step(tiny_sd1, lora_run):
    last, earlier = (lora_run / "checkpoints" / f"checkpoint-00000{n}" for n in (4, 2))
    lora = lora_from_path(str(last))
    assert lora.name == "dogc-step00000004" and lora.source == str(last.resolve())     # kohya's step file name
    kohya = load_file(str(lora.load))
    assert {float(v) for k, v in kohya.items() if k.endswith(".alpha")} == {2.0}
    assert any(k.startswith("lora_te_") for k in kohya) and any(k.startswith("lora_unet_") for k in kohya)
    final = _pixels(tiny_sd1, lora_run)
    assert np.array_equal(_pixels(tiny_sd1, last), final)          # the last checkpoint holds the final weights
    assert not np.array_equal(_pixels(tiny_sd1, earlier), final)


def test_checkpoint_weights_alone_are_refused_in_one_line(lora_run, tmp_path):
    loras = tmp_path / "Lora"
    loras.mkdir()
    shutil.copy(lora_run / "checkpoints" / "checkpoint-000004" / "trainable.safetensors", loras / "c4.safetensors")
    with pytest.raises(UserError, match=r"^<lora:c4> \(.*c4\.safetensors\): a training checkpoint's weights .*"
                                        r"give the checkpoint folder instead"):
        LoraLibrary([loras], use_registry=False).find("c4")
    with pytest.raises(UserError, match=r"^--lora .*c4\.safetensors: a training checkpoint's weights"):
        lora_from_path(str(loras / "c4.safetensors"))


def test_checkpoints_that_are_no_lora_say_what_they_are(lora_run, tmp_path):
    checkpoint = lora_run / "checkpoints" / "checkpoint-000002"
    with pytest.raises(UserError, match=r"^--model .*checkpoint-000002: a training checkpoint .*--resume .*"
                                        r"--model BASE --lora .*checkpoint-000002$"):
        resolve_model(str(checkpoint))
    # a run still going (or stopped) has written no training_args.json yet: no alpha to load it with
    unfinished = tmp_path / "going" / "checkpoints" / "checkpoint-000002"
    shutil.copytree(checkpoint, unfinished)
    settings = json.loads((unfinished / "settings.json").read_text())      # a checkpoint records its alpha ...
    assert settings["alpha"] == 2.0
    kohya = load_file(str(lora_from_path(str(unfinished)).load))           # ... so an unfinished run's loads
    assert {float(v) for k, v in kohya.items() if k.endswith(".alpha")} == {2.0}
    del settings["alpha"]                   # one of an older version, of a run still going: no alpha anywhere
    (unfinished / "settings.json").write_text(json.dumps(settings))
    (unfinished / "manifest.json").unlink()
    with pytest.raises(UserError, match=r"^--lora .*: a LoRA run's checkpoint whose alpha is not recorded yet"):
        lora_from_path(str(unfinished))
    # a full run's checkpoint is state to resume, no LoRA and no model
    full = tmp_path / "full" / "checkpoints" / "checkpoint-000002"
    shutil.copytree(checkpoint, full)
    settings = json.loads((full / "settings.json").read_text())
    (full / "settings.json").write_text(json.dumps({**settings, "method": "full"}))
    with pytest.raises(UserError, match=r"^--lora .*: a full fine-tuning run's training checkpoint: state to go on "
                                        r"training from \(`dreambooth train --resume .*`\), not a LoRA"):
        lora_from_path(str(full))
    with pytest.raises(UserError, match=r"^--model .*: a training checkpoint .*the run's output folder is the model"):
        resolve_model(str(full))


def test_an_image_that_comes_out_nan_is_a_one_line_error(tiny_sd1, tmp_path):
    """A NaN image (a LoRA that does not fit, a VAE overflowing in fp16) was written as a black PNG in
    silence; it is said instead, and nothing is written."""
    import torch

    from dreambooth.errors import UserError
    from dreambooth.generation.params import GenerationParams
    from dreambooth.generation.pipeline import load_generation_pipeline
    from dreambooth.generation.sampling import generate
    pipe = load_generation_pipeline(str(tiny_sd1), device="cpu", dtype=torch.float32)
    with torch.no_grad():
        next(pipe.pipe.vae.decoder.parameters()).fill_(float("nan"))
    with pytest.raises(UserError, match="the image came out NaN"):
        generate(pipe, GenerationParams("a dog", steps=1, width=32, height=32, seed=1), tmp_path / "out")
    assert not list((tmp_path).rglob("*.png"))
