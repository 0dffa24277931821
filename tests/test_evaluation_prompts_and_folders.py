"""CLIP-T's text (extra-network tags, prompt editing at the image's own step count, a hyphened
identifier) and dreambooth evaluate reading a bench run's folder of prompt folders."""
import json

import pytest
from PIL import Image

from conftest import run_cli


def test_clip_t_text_edge_cases():
    from dreambooth.evaluation.prompts import plain_text, strip_identifier

    def clip_t_text(prompt, steps=None):
        return strip_identifier(plain_text(prompt, steps), "sks")
    assert clip_t_text("a sks dog <lora:x:0.8> <hypernet:y:1>") == "a dog"
    assert clip_t_text("a sks dog <hypernet:y:1>, (snow:1.2)") == "a dog, snow"
    assert clip_t_text("a sks dog [snow:20]", 20) == "a dog"        # the edit comes after the last step
    assert clip_t_text("a sks dog [snow:20]", 50) == "a dog snow"
    assert clip_t_text("a sks dog [snow:20]") == "a dog"            # unknown: the WebUI's 20 steps
    assert clip_t_text("a [cat:dog:0.5] on a [sks] rug", 30) == "a dog on a rug"
    assert clip_t_text("a sks-dog") == "a dog" and clip_t_text("a dog-sks, toy") == "a dog, toy"
    assert clip_t_text("a sksdog and a sks dog") == "a sksdog and a dog"    # a whole word only


def _image(path, infotext):
    from dreambooth.images import write_png
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_png(Image.new("RGB", (32, 32), (120, 80, 40)), path, infotext)


@pytest.fixture(scope="module")
def eval_models(tmp_path_factory):
    from dreambooth.testing.eval_models import save_tiny_eval_models
    return save_tiny_eval_models(tmp_path_factory.mktemp("evaluation-prompts-eval"))


def test_evaluate_reads_each_images_own_steps_and_tags(dog_photos, eval_models, tmp_path):
    from dreambooth.evaluation import evaluate_dirs
    gen = tmp_path / "gen"
    _image(gen / "a.png", "a sks dog [snow:20] <hypernet:y:1>\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 32x32")
    _image(gen / "b.png", "a sks dog [snow:20] <lora:x:0.8>\nSteps: 50, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 32x32")
    result = evaluate_dirs(dog_photos, gen, dino_model=eval_models[0], clip_model=eval_models[1])
    assert [e["clip_t_prompt"] for e in result["per_image"]] == ["a dog", "a dog snow"]


def test_evaluate_reads_a_bench_runs_prompt_folders(dog_photos, eval_models, tmp_path):
    from dreambooth.evaluation.dreambench import BENCH_MARK
    bench = tmp_path / "bench1"
    for i, prompt in enumerate(["a zwx dog in the jungle", "a zwx dog in the snow"]):
        for seed in (0, 1):
            _image(bench / "images" / f"{i:02d}-{prompt[6:].replace(' ', '-')}" / f"0000{seed + 1}-{seed}.png",
                   f"{prompt}\nSteps: 50, Sampler: Euler a, CFG scale: 7.5, Seed: {seed}, Size: 32x32")
    _image(bench / "grids" / "00-dog-in-the-jungle.png", "a zwx dog in the jungle\nSteps: 50")
    (bench / BENCH_MARK).touch()
    (bench / "report.json").write_text(json.dumps({"identifier": "zwx"}))     # a zwx model's run: taken out too
    for given in (bench / "images", bench):
        out = tmp_path / f"ev-{given.name}"
        code, _, err = run_cli("evaluate", "--real", dog_photos, "--generated", given, "--dino-model", eval_models[0],
                               "--clip-model", eval_models[1], "--output", out)
        assert code == 0, err
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["counts"]["generated"] == 4                 # the grids are not generations
        files = [e["file"] for e in metrics["per_image"]]
        assert files[0].endswith("00-dog-in-the-jungle/00001-0.png") and len(set(files)) == 4
        assert [e["clip_t_prompt"] for e in metrics["per_image"]][1:3] == ["a dog in the jungle", "a dog in the snow"]
    plain = tmp_path / "plain"                                      # any other folder: its sub-folders are not read
    _image(plain / "sub" / "x.png", "a sks dog\nSteps: 20")
    code, _, err = run_cli("evaluate", "--real", dog_photos, "--generated", plain, "--dino-model", eval_models[0],
                           "--clip-model", eval_models[1], "--output", tmp_path / "ev-plain")
    assert code == 2 and "no images" in err, err
