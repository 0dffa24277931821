"""What dreambooth evaluate and bench are handed: the paper's [V] as the identifier, prompt files whose
prompts look like JSON, a training run's validation folder, a very elongated image, a --model path
that is not there, settings off the protocol, and the one identifier of an instance prompt."""
import json

import pytest
from PIL import Image

from conftest import run_cli


@pytest.fixture(scope="module")
def eval_models(tmp_path_factory):
    from dreambooth.testing.eval_models import save_tiny_eval_models
    return save_tiny_eval_models(tmp_path_factory.mktemp("evaluation-inputs-eval"))


def _image(path, infotext=None, colour=(120, 80, 40)):
    from dreambooth.images import write_png
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_png(Image.new("RGB", (32, 32), colour), path, infotext)


def _plain(folder, count):
    for i in range(count):
        _image(folder / f"{i:03d}.png", colour=(40 * i, 90, 200))
    return folder


def test_the_papers_v_notation_is_taken_out_for_clip_t(dog_photos, eval_models, tmp_path):
    gen = _plain(tmp_path / "gen", 2)
    (tmp_path / "p.txt").write_text("a [V] dog in the jungle\na ([V]:1.2) dog, snow\n")
    code, _, err = run_cli("evaluate", "--real", dog_photos, "--generated", gen, "--prompts", tmp_path / "p.txt",
                           "--identifier", "[V]", "--dino-model", eval_models[0], "--clip-model", eval_models[1],
                           "--output", tmp_path / "o")
    assert code == 0 and "in none of the prompts" not in err, err
    got = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert [e["clip_t_prompt"] for e in got["per_image"]] == ["a dog in the jungle", "a dog, snow"]


def test_a_text_prompts_file_whose_first_prompt_looks_like_json(tmp_path):
    from dreambooth.errors import UserError
    from dreambooth.evaluation.prompts import read_prompts_file
    files = [tmp_path / "0.png", tmp_path / "1.png"]
    lines = ["[sks:0.5] dog in the jungle", "{a|the} sks dog"]
    for name in ("p.txt", "prompts", "p.prompts"):       # .txt, or anything that is no JSON list or object
        (tmp_path / name).write_text("\n".join(lines) + "\n")
        assert read_prompts_file(tmp_path / name, files) == lines, name
    (tmp_path / "list").write_text(json.dumps(lines))    # JSON without the suffix: still read as JSON
    assert read_prompts_file(tmp_path / "list", files) == lines
    (tmp_path / "bad.json").write_text(lines[0])           # a .json file is JSON
    with pytest.raises(UserError, match="invalid JSON"):
        read_prompts_file(tmp_path / "bad.json", files)
    (tmp_path / "one.json").write_text('"a dog"')
    with pytest.raises(UserError, match="JSON str; give a list"):
        read_prompts_file(tmp_path / "one.json", files)


def _validation_run(root, class_prompt="a photo of dog"):
    """A finished run's output as validation leaves it: step folders, step grids, the curve."""
    val = root / "validation"
    step = val / "step-000002"
    prompts = ["a photo of zwx dog", "a zwx dog in the jungle", class_prompt]
    for i, prompt in enumerate(prompts):
        _image(step / f"{i + 1:05d}-0.png", f"{prompt}\nSteps: 2, Sampler: Euler a, CFG scale: 7, Seed: 0",
               colour=(60 * i, 100, 30))
    for name in ("step-000000.png", "step-000002.png", "curve.png"):
        _image(val / name, f"{prompts[0]}\nSteps: 2, Sampler: Euler a, Seed: 0" if name != "curve.png" else None)
    (root / "training_args.json").write_text(json.dumps({"instance_prompt": "a photo of zwx dog",
                                                         "class_prompt": class_prompt}))
    return val, step


def test_a_runs_validation_folder_and_its_step_folders(dog_photos, eval_models, tmp_path):
    val, step = _validation_run(tmp_path / "run")
    base = ("evaluate", "--real", dog_photos, "--dino-model", eval_models[0], "--clip-model", eval_models[1])
    code, _, err = run_cli(*base, "--generated", val, "--output", tmp_path / "o")
    assert code == 2 and err.count("\n") == 1, err
    assert "a training run's validation folder; give one of its step folders" in err and str(step) in err, err
    code, _, err = run_cli(*base, "--generated", step, "--output", tmp_path / "o")
    assert code == 0, err
    got = json.loads((tmp_path / "o" / "metrics.json").read_text())
    # the class prompt's image is PRES, as validation scores it; the identifier is the run's
    assert got["counts"]["generated"] == 2 and got["counts"]["class_generated"] == 1 and got["pres"] is not None
    assert got["identifier"] == "zwx"
    assert [e["clip_t_prompt"] for e in got["per_image"]] == ["a photo of dog", "a dog in the jungle"]


def test_a_very_elongated_image_is_cut_to_its_middle_before_scaling(monkeypatch):
    from dreambooth.evaluation.encoders import resize_center_crop
    asked = []
    resize = Image.Image.resize

    def spy(self, size, *args, **kwargs):
        asked.append(tuple(size))
        if size[0] * size[1] > 4096 * 4096:
            raise MemoryError(f"resize to {size}")        # what 8000x1 scaled whole costs: gigabytes
        return resize(self, size, *args, **kwargs)
    monkeypatch.setattr(Image.Image, "resize", spy)
    strip = Image.new("RGB", (8000, 1), (10, 200, 30))
    assert resize_center_crop(strip, 256, 224).size == (224, 224)
    assert asked == [(1024, 256)]                              # its middle 4:1, short side to 256
    normal = Image.new("RGB", (400, 120))                      # up to 4:1: scaled whole, as before
    asked.clear()
    resize_center_crop(normal, 256, 224)
    assert asked == [(853, 256)]


def test_a_model_path_that_is_not_there_is_said_first(dog_photos, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for model in ("runs/nope", "./runs/nope"):
        code, _, err = run_cli("bench", "--model", model, "--real", dog_photos, "--output", tmp_path / "o")
        assert code == 2 and err.count("\n") == 1, err
        assert f"--model {model}: no such folder or file" in err and "--class" not in err and "hf download" not in err
    code, _, err = run_cli("generate", "--model", "runs/nope", "--prompt", "a dog")     # the models layer says it
    assert code == 2 and "--model runs/nope: no such folder or file" in err and "hf download" not in err, err


def test_settings_off_the_protocol_are_listed(tmp_path):
    from dreambooth.evaluation.dreambench import off_protocol, protocol_params
    from dreambooth.evaluation.encoders import DEFAULT_CLIP, DEFAULT_DINO
    params = protocol_params(negative_prompt="blurry", clip_skip=2, width=256, height=256)
    assert off_protocol(params, 4, 25, 25) == [
        "negative prompt 'blurry' (protocol none)", "size 256x256 (protocol the model's own)",
        "clip skip 2 (protocol 1)"]
    assert off_protocol(params.replace(negative_prompt="", clip_skip=1), 4, 25, 25, native_size=(256, 256)) == []
    assert off_protocol(params, 4, 25, 25, native_size=(512, 512))[1] == "size 256x256 (protocol 512x512)"
    models = {"dino": "facebook/dinov2-small", "clip": "openai/clip-vit-large-patch14"}
    assert off_protocol(protocol_params(), 4, 25, 25, models) == [
        f"DINO model facebook/dinov2-small (protocol {DEFAULT_DINO})",
        f"CLIP model openai/clip-vit-large-patch14 (protocol {DEFAULT_CLIP})"]
    assert off_protocol(protocol_params(), 4, 25, 25, {"dino": DEFAULT_DINO, "clip": DEFAULT_CLIP}) == []


def test_one_identifier_for_validation_bench_and_evaluate(tmp_path):
    from dreambooth.evaluation.trained import trained_subject
    from dreambooth.models.tokens import subject_identifier
    assert subject_identifier("a sks square on a table", "a square") == "sks"      # not 'sks on table'
    assert subject_identifier("a ohwx square") == "ohwx"
    assert subject_identifier("a photo of zwx cat", "a photo of cat") == "zwx"
    assert subject_identifier("a photo of sks dog") == "sks"
    assert subject_identifier("a photo of my dog on a rug", "a photo of dog") == "my"   # the word before the class
    assert subject_identifier("a zwx qqv dog on a rug", "a dog") == "zwx qqv"    # both, as one phrase
    assert subject_identifier("a zwx qqv dog") is None                   # two rare words, no class: no one answer
    assert subject_identifier("a sks red dog") == "sks"
    assert subject_identifier("my dog") is None
    run = tmp_path / "run"
    run.mkdir()
    (run / "training_args.json").write_text(json.dumps({"instance_prompt": "a sks square on a table",
                                                        "class_prompt": "a square"}))
    assert trained_subject(run).identifier == "sks"


def test_bench_refuses_a_model_whose_record_names_no_single_identifier(dog_photos, tmp_path):
    model = tmp_path / "run"
    model.mkdir()
    (model / "model_index.json").write_text("{}")
    (model / "training_args.json").write_text(json.dumps({"instance_prompt": "a zwx qqv dog"}))
    code, _, err = run_cli("bench", "--model", model, "--real", dog_photos, "--class", "dog", "--kind", "live",
                           "--dino-model", "nobody/missing", "--output", tmp_path / "o")
    assert code == 2 and err.count("\n") == 1, err
    assert "--identifier is required" in err and "it could be zwx or qqv" in err, err
    assert not (tmp_path / "o").exists()
