"""The WebUI's "Clip skip": SD1's text encoder stops N layers from its end (its N-th hidden state from
the end, through the final layer norm), recorded in the infotext and read back; SD2 and SDXL, as in the
WebUI, are left as they are; a value out of range is a one-line error naming the flag."""
import pytest
import torch
from PIL import Image

from conftest import run_cli
from dreambooth.errors import UserError
from dreambooth.generation.conditioning import PromptEncoder
from dreambooth.generation.infotext import parse_generation_parameters
from dreambooth.generation.params import GenerationParams
from dreambooth.generation.pipeline import load_generation_pipeline
from dreambooth.generation.sampling import generate
from dreambooth.generation.xyz import parse_axis


def made(pipeline, **kw):
    params = GenerationParams("a dog", steps=2, width=32, height=32, seed=3, **kw)
    return generate(pipeline, params)


def test_sd1_takes_the_hidden_state_n_layers_from_the_end_through_the_final_norm(tiny_sd1):
    pipeline = load_generation_pipeline(str(tiny_sd1))
    pipe = pipeline.pipe
    ids = pipe.tokenizer(["a dog"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        out = pipe.text_encoder(ids, output_hidden_states=True)
        expected = getattr(pipe.text_encoder, "text_model", pipe.text_encoder).final_layer_norm(out.hidden_states[-2])
        assert not torch.equal(expected, out.last_hidden_state)
        assert torch.equal(PromptEncoder(pipe, clip_skip=2).encode("a dog").embeds, expected)
        assert torch.equal(PromptEncoder(pipe).encode("a dog").embeds, out.last_hidden_state)


def test_recorded_in_the_infotext_and_remade_from_it(tiny_sd1, tmp_path):
    pipeline = load_generation_pipeline(str(tiny_sd1))
    plain, skipped = made(pipeline)[0], made(pipeline, clip_skip=2)[0]
    assert plain.image.tobytes() != skipped.image.tobytes()
    assert "Clip skip" not in plain.infotext and "Clip skip: 2" in skipped.infotext     # the WebUI's way
    info = parse_generation_parameters(skipped.infotext)
    again = generate(pipeline, GenerationParams.from_infotext(info))[0]
    assert again.image.tobytes() == skipped.image.tobytes()
    # the CLI: --clip-skip, and --from-image reads it back
    code, out, err = run_cli("generate", "--model", tiny_sd1, "--prompt", "a dog", "--steps", "2", "--width", "32",
                             "--height", "32", "--seed", "3", "--clip-skip", "2", "--output", tmp_path / "a")
    assert code == 0, err
    assert Image.open(out.split()[-1]).tobytes() == skipped.image.tobytes()
    code, out, err = run_cli("generate", "--from-image", out.split()[-1], "--model", tiny_sd1, "--output", tmp_path / "b")
    assert code == 0, err
    assert Image.open(out.split()[-1]).tobytes() == skipped.image.tobytes()


@pytest.mark.parametrize("family", ["tiny_sd2", "tiny_sdxl"])
def test_sd2_and_sdxl_are_left_as_they_are_with_a_word(family, request, capsys):
    pipeline = load_generation_pipeline(str(request.getfixturevalue(family)))
    plain = made(pipeline)[0]
    capsys.readouterr()
    skipped = made(pipeline, clip_skip=2)[0]
    assert skipped.image.tobytes() == plain.image.tobytes()
    assert "Clip skip 2: no effect" in capsys.readouterr().err
    assert "Clip skip: 2" in skipped.infotext                 # what was asked, as the WebUI records it


def test_out_of_range_is_a_one_line_error_naming_the_flag(tiny_sd1):
    for bad in (0, 13, 1.5):
        with pytest.raises(UserError, match="--clip-skip"):
            GenerationParams("a dog", clip_skip=bad).check()
    pipeline = load_generation_pipeline(str(tiny_sd1))            # its text encoder has 2 layers
    with pytest.raises(UserError, match=r"--clip-skip 3: this model's text encoder has 2 layers"):
        made(pipeline, clip_skip=3)
    with pytest.raises(UserError, match="infotext: Clip skip"):
        GenerationParams.from_infotext({"Prompt": "a dog", "Clip skip": "two"})
    axis = parse_axis("Clip skip: 1, 2", "--x")
    assert axis.type.field == "clip_skip" and axis.values == [1, 2]


# ----- training (kohya's --clip_skip): the model learns on the conditioning it will be sampled with -----------

def _config(model, photos, output, **kw):
    from dreambooth.training.config import build_config
    settings = dict(model=str(model), instance_dir=str(photos), instance_prompt="a photo of sks dog", resolution=32,
                    max_steps=2, learning_rate=1e-3, output=str(output))
    return build_config(None, {**settings, **kw})


def test_training_conditions_on_the_layer_generation_samples_from(tiny_sd1, dog_photos, tmp_path):
    from dreambooth.training.trainer import Trainer
    run = Trainer(_config(tiny_sd1, dog_photos, tmp_path / "out", clip_skip=2)).setup()
    with torch.no_grad():
        trained_on = run.conditioning(["a photo of sks dog"]).embeds
        sampled_with = PromptEncoder(run.pipe, clip_skip=2).encode("a photo of sks dog").embeds
        plain = PromptEncoder(run.pipe).encode("a photo of sks dog").embeds
    assert torch.equal(trained_on, sampled_with.to(trained_on.dtype)) and not torch.equal(trained_on, plain)


def test_the_skipped_layers_train_nothing_and_the_run_records_it(tiny_sd1, dog_photos, tmp_path):
    import json

    from safetensors import safe_open

    from dreambooth.models.families import text_layers
    from dreambooth.models.loading import load_pipeline
    from dreambooth.training.trainables import make_trainable
    from dreambooth.training.trainer import train
    # full: the text encoder's last layer (of 2) is out of the optimizer; so no process waits on its gradients
    cfg = _config(tiny_sd1, dog_photos, tmp_path / "x", method="full", train_text_encoder=True, clip_skip=2)
    pipe = load_pipeline(str(tiny_sd1))
    from dreambooth.models.families import adapter_for
    _, groups = make_trainable(pipe, adapter_for(pipe), cfg, torch.device("cpu"), print)
    optimized = {id(p) for g in groups for p in g["params"]}
    first, last = text_layers(pipe.text_encoder)
    assert all(id(p) in optimized for p in first.parameters())
    assert not any(id(p) in optimized for p in last.parameters())
    # the memory preflight counts what trains, full and LoRA
    from dreambooth.training.model_sizes import model_sizes
    fresh = load_pipeline(str(tiny_sd1))
    sizes, every_layer = model_sizes(fresh, adapter_for(fresh), 2), model_sizes(fresh, adapter_for(fresh))
    assert sizes.text_encoders[0] - sizes.text_unread == sum(p.numel() for p in pipe.text_encoder.parameters()
                                                             if id(p) in optimized)
    lora_pipe = load_pipeline(str(tiny_sd1))
    lora = cfg.replace(method="lora", rank=4, alpha=4)
    make_trainable(lora_pipe, adapter_for(lora_pipe), lora, torch.device("cpu"), print)
    adapters = sum(p.numel() for p in lora_pipe.text_encoder.parameters() if p.requires_grad)
    assert adapters == 4 * sizes.text_lora_per_rank[0] < 4 * every_layer.text_lora_per_rank[0]
    assert every_layer.text_unread == 0 < sizes.text_unread
    # LoRA: the text encoder's adapters only where its output is read; the files say how it was trained
    out = tmp_path / "lora"
    result = train(_config(tiny_sd1, dog_photos, out, train_text_encoder=True, clip_skip=2))
    with safe_open(str(out / "lora.safetensors"), "pt") as f:      # the kohya/A1111 file
        te_keys = [k for k in f.keys() if k.startswith("lora_te_")]
        assert f.metadata()["ss_clip_skip"] == "2"
    assert te_keys and all("layers_0_" in k for k in te_keys), te_keys
    assert json.loads((out / "training_args.json").read_text())["clip_skip"] == 2
    assert not [w for w in result.warnings if "Clip skip" in w]
    # the output samples at the clip skip it was trained at, unless told otherwise, its text encoder's
    # adapters loaded (they move the image)
    common = ["--prompt", "a photo of sks dog", "--steps", "2", "--width", "32", "--height", "32", "--seed", "3"]
    made = {}
    for name, model, extra in (("default", out, []), ("2", out, ["--clip-skip", "2"]), ("1", out, ["--clip-skip", "1"]),
                               ("base", tiny_sd1, ["--clip-skip", "2"])):
        code, stdout, err = run_cli("generate", "--model", model, *common, *extra, "--output", tmp_path / name)
        assert code == 0, err
        assert ("Clip skip 2: as" in err) == (name == "default"), err
        made[name] = Image.open(stdout.split()[-1])
    assert "Clip skip: 2" in made["default"].info["parameters"] and "Clip skip" not in made["1"].info["parameters"]
    assert made["default"].tobytes() == made["2"].tobytes() != made["1"].tobytes()
    assert made["2"].tobytes() != made["base"].tobytes()
    # and so does DreamBench
    from dreambooth.testing.eval_models import save_tiny_eval_models
    dino, clip = save_tiny_eval_models(tmp_path / "eval")
    code, _, err = run_cli("bench", "--model", out, "--real", dog_photos, "--subject", "dog",
                           "--images-per-prompt", "1", "--steps", "1", "--size", "32", "--dino-model", dino, "--clip-model", clip,
                           "--output", tmp_path / "bench")
    assert code == 0, err
    assert "Clip skip: 2" in Image.open(next((tmp_path / "bench" / "images").glob("01-*/*.png"))).info["parameters"]


def test_sdxl_trains_as_it_samples_and_a_layer_too_deep_writes_nothing(tiny_sdxl, tiny_sd1, dog_photos, tmp_path):
    from dreambooth.training.trainer import Trainer
    run = Trainer(_config(tiny_sdxl, dog_photos, tmp_path / "xl", clip_skip=2)).setup()
    assert run.config.clip_skip == 1 and any("Clip skip 2: no effect on SDXL" in w for w in run.warnings)
    with pytest.raises(UserError, match=r"^--clip-skip 3: this model's text encoder has 2 layers; use 1 to 2$"):
        Trainer(_config(tiny_sd1, dog_photos, tmp_path / "deep", clip_skip=3)).setup()
    assert not (tmp_path / "deep").exists()


def test_a_checkpoint_resumes_only_at_its_clip_skip(tiny_sd1, dog_photos, tmp_path):
    import json

    from dreambooth.training.trainer import train
    from test_resume_settings import StopAfterStep4

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        train(_config(tiny_sd1, dog_photos, out, clip_skip=2, checkpoint_every=3, max_steps=5),
              callbacks=[StopAfterStep4()])
    with pytest.raises(UserError, match="made with clip_skip=2, this run has clip_skip=1"):
        train(_config(tiny_sd1, dog_photos, out, resume="latest", max_steps=5))
    # a checkpoint from before the setting existed was made at clip skip 1, and resumes so
    settings = next((out / "checkpoints").glob("*/settings.json"))
    saved = json.loads(settings.read_text())
    del saved["clip_skip"]
    settings.write_text(json.dumps(saved))
    (settings.parent / "manifest.json").unlink()              # older checkpoints have none either
    with pytest.raises(UserError, match="made with clip_skip=1, this run has clip_skip=2"):
        train(_config(tiny_sd1, dog_photos, out, resume="latest", max_steps=5, clip_skip=2))
    assert train(_config(tiny_sd1, dog_photos, out, resume="latest", max_steps=5)).steps == 5
