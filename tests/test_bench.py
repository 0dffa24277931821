"""The DreamBench runner: the paper's prompts with the identifier and class in place, and an end-to-end
run (tiny pipeline, tiny evaluation models) writing images, grids and reports."""
import json
import re

import pytest
from PIL import Image

from conftest import DATA, make_photos, run_cli

OBJECT_CONTEXTS = [
    "in the jungle", "in the snow", "on the beach", "on a cobblestone street", "on top of pink fabric",
    "on top of a wooden floor", "with a city in the background", "with a mountain in the background",
    "with a blue house in the background", "on top of a purple rug in a forest", "with a wheat field in the background",
    "with a tree and autumn leaves in the background", "with the Eiffel Tower in the background",
    "floating on top of water", "floating in an ocean of milk", "on top of green grass with sunflowers around it",
    "on top of a mirror", "on top of the sidewalk in a crowded street", "on top of a dirt road",
    "on top of a white rug",
]
LIVE_CONTEXTS = OBJECT_CONTEXTS[:10] + [
    "wearing a red hat", "wearing a santa hat", "wearing a rainbow scarf", "wearing a black top hat and a monocle",
    "in a chef outfit", "in a firefighter outfit", "in a police outfit", "wearing pink glasses",
    "wearing a yellow shirt", "in a purple wizard outfit",
]
PROPERTIES = ["red", "purple", "shiny", "wet", "cube shaped"]


def _expected(contexts, v, c):
    return [f"a {v} {c} {ctx}" for ctx in contexts] + [f"a {p} {v} {c}" for p in PROPERTIES]


def test_object_and_live_prompts_are_the_papers():
    from dreambooth.evaluation.dreambench import dreambench_prompts
    objects = dreambench_prompts("object", "sks", "backpack")
    live = dreambench_prompts("live", "zwx", "dog")
    assert objects == _expected(OBJECT_CONTEXTS, "sks", "backpack")
    assert live == _expected(LIVE_CONTEXTS, "zwx", "dog")
    assert len(objects) == len(set(objects)) == 25 and len(live) == len(set(live)) == 25
    assert objects[0] == "a sks backpack in the jungle" and objects[-1] == "a cube shaped sks backpack"
    assert live[13] == "a zwx dog wearing a black top hat and a monocle"
    assert dreambench_prompts("object", "sks", "stuffed animal")[20] == "a red sks stuffed animal"


def test_prompts_equal_the_dataset_file():
    source = DATA / "dreambench_prompts_and_classes.txt"       # the dataset's own file, carried by the tests
    from dreambooth.evaluation.dreambench import dreambench_prompts, dreambench_subjects
    text = source.read_text()
    obj_block = text.split("Object Prompts")[1].split("Live Subject Prompts")[0]
    live_block = text.split("Live Subject Prompts")[1]

    def parse(block, v, c):
        return [t.format(v, c) for t in re.findall(r"'([^']*)'\.format\(unique_token, class_token\)", block)]
    assert dreambench_prompts("object", "sks", "can") == parse(obj_block, "sks", "can")
    assert dreambench_prompts("live", "sks", "cat") == parse(live_block, "sks", "cat")
    classes = dict(re.findall(r"^(\w+),([^\n]+)$", text.split("Prompts")[0], re.M))
    classes.pop("subject_name")
    subjects = dreambench_subjects()
    assert {k: v["class"] for k, v in subjects.items()} == classes
    live = sorted(k for k, v in subjects.items() if v["kind"] == "live")
    assert live == ["cat", "cat2", "dog", "dog2", "dog3", "dog5", "dog6", "dog7", "dog8"]


def test_data_keeps_its_attribution():
    from dreambooth.evaluation.dreambench import dreambench_data
    data = dreambench_data()
    assert "CC BY 4.0" in data["license"] and "Ruiz" in data["attribution"]


def test_bench_end_to_end(tiny_sd1, dog_photos, tmp_path_factory):
    from dreambooth.evaluation.prompts import read_png_prompt
    from dreambooth.testing.eval_models import save_tiny_eval_models
    dino, clip = save_tiny_eval_models(tmp_path_factory.mktemp("bench-eval-models"))
    out = tmp_path_factory.mktemp("bench")
    code, stdout, err = run_cli("bench", "--model", tiny_sd1, "--real", dog_photos, "--subject", "dog",
                                "--images-per-prompt", "2", "--steps", "1", "--size", "32", "--pres", "--pres-images", "2",
                                "--dino-model", dino, "--clip-model", clip, "--output", out)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["kind"] == "live" and report["class"] == "dog"
    rows = report["per_prompt"]
    assert [r["prompt"] for r in rows] == _expected(LIVE_CONTEXTS, "sks", "dog")
    assert all("sks" not in r["clip_t_prompt"] and "dog" in r["clip_t_prompt"] for r in rows)
    for key in ("dino", "clip_i", "clip_t", "pres"):
        assert isinstance(report["metrics"][key], float)
    # overall DINO/CLIP-T are the means of the per-prompt means (same number of images per prompt)
    assert report["metrics"]["dino"] == pytest.approx(sum(r["dino"] for r in rows) / 25, abs=1e-9)
    assert report["metrics"]["clip_t"] == pytest.approx(sum(r["clip_t"] for r in rows) / 25, abs=1e-9)
    assert report["counts"] == {"real": 5, "generated": 50, "class_generated": 2}
    grids = sorted((out / "grids").iterdir())
    assert len(grids) == 25 and Image.open(grids[0]).size == (64, 32)
    first = out / rows[0]["images"][1]
    assert read_png_prompt(first) == "a sks dog in the jungle" and Image.open(first).size == (32, 32)
    assert first.name == "00002-1.png"                      # seed 1: the prompt's second image
    assert report["settings"]["sampler"] == "Euler a" and report["settings"]["steps"] == 1
    assert len(list((out / "class_images").iterdir())) == 2
    md = (out / "report.md").read_text()
    assert "| **this run** |" in md and "0.668" in md and "CC BY 4.0" in md and "raw cosine" in md
    assert "grids/00-a-dog-in-the-jungle.png" in md
    assert "DINO" in stdout
    again = ("bench", "--model", tiny_sd1, "--real", dog_photos, "--subject", "dog", "--images-per-prompt", "1",
             "--steps", "1", "--size", "32", "--dino-model", dino, "--clip-model", clip, "--output", out)
    code, _, err = run_cli(*again)                          # an earlier run's results: kept unless asked
    assert code == 2 and "holds report.json, report.md, grids, images, class_images from an earlier run" in err
    assert json.loads((out / "report.json").read_text()) == report
    code, _, err = run_cli(*again, "--overwrite")
    assert code == 0, err
    assert json.loads((out / "report.json").read_text())["counts"]["generated"] == 25
    assert not (out / "class_images").exists() and len(list((out / "images").rglob("*.png"))) == 25


def test_bench_needs_class_and_kind(tiny_sd1, dog_photos, tmp_path):
    code, _, err = run_cli("bench", "--model", tiny_sd1, "--real", dog_photos, "--class", "dog", "--output", tmp_path)
    assert code == 2 and "--kind" in err
    code, _, err = run_cli("bench", "--model", tiny_sd1, "--real", dog_photos, "--subject", "dragon", "--output", tmp_path)
    assert code == 2 and "not a DreamBench subject" in err
    code, _, err = run_cli("bench", "--model", tiny_sd1, "--real", dog_photos, "--subject", "dog",
                           "--dino-model", "nobody/missing", "--output", tmp_path)
    assert code == 2 and "hf download" in err and err.count("\n") == 1


def test_a_lora_output_folder_stands_for_base_plus_lora(tmp_path):
    from dreambooth.generation.loras import lora_from_path, parse_lora_spec
    from dreambooth.models.specs import is_lora_output, lora_output_base
    out = tmp_path / "run"
    out.mkdir()
    (out / "training_args.json").write_text(json.dumps({"model": "org/base", "vae": None, "method": "lora"}))
    (out / "pytorch_lora_weights.safetensors").write_bytes(b"")
    assert is_lora_output(out) and lora_output_base(out) == ("org/base", None, None)
    lora = lora_from_path(str(out))
    assert lora.name == "run" and lora.load == out / "pytorch_lora_weights.safetensors"
    assert lora.shown == lora.load                                      # no kohya file beside it
    (out / "run.safetensors").write_bytes(b"")
    assert lora_from_path(str(out)).shown == out / "run.safetensors"    # the file A1111 loads
    (out / "training_args.json").write_text(json.dumps({"model": "org/base", "vae": "org/fp16-fix-vae"}))
    assert lora_output_base(out)[1] == "org/fp16-fix-vae"            # the VAE it was trained with
    full = tmp_path / "full"
    full.mkdir()
    (full / "model_index.json").write_text("{}")
    (full / "training_args.json").write_text(json.dumps({"model": "org/base"}))
    assert not is_lora_output(full)
    assert parse_lora_spec("a/b.safetensors:0.7") == ("a/b.safetensors", 0.7)
    assert parse_lora_spec("a/b.safetensors") == ("a/b.safetensors", 1.0)


def test_bench_never_replaces_what_no_run_of_it_wrote(tiny_sd1, tmp_path):
    project = tmp_path / "project"
    photos = make_photos(project / "images")                # the user's photos, in a folder called images
    for args in ((), ("--overwrite",)):
        code, _, err = run_cli("bench", "--model", tiny_sd1, "--real", photos, "--subject", "dog",
                               "--output", project, *args)
        assert code == 2 and err.count("\n") == 1, err
        assert "no dreambooth bench run wrote" in err or "lies in --output" in err, err
    assert len(list(photos.iterdir())) == 5
    (project / ".dreambench").touch()                       # an earlier run's output (its mark), the photos inside it
    code, _, err = run_cli("bench", "--model", tiny_sd1, "--real", photos, "--subject", "dog", "--output", project,
                           "--overwrite")
    assert code == 2 and "lies in --output" in err and len(list(photos.iterdir())) == 5, err


def test_a_failed_run_puts_the_earlier_results_back(tmp_path):
    from dreambooth.evaluation.dreambench import BENCH_MARK, _replacing
    out = tmp_path / "bench"
    (out / "images" / "00-a-dog").mkdir(parents=True)
    (out / "images" / "00-a-dog" / "00001-0.png").write_bytes(b"old")
    (out / "report.json").write_text('{"old": 1}')
    with pytest.raises(KeyboardInterrupt):
        with _replacing(out):
            assert not (out / "report.json").exists()
            (out / "images").mkdir()
            (out / "images" / "new.png").write_bytes(b"new")
            raise KeyboardInterrupt
    assert (out / "report.json").read_text() == '{"old": 1}'
    assert [p.name for p in (out / "images").rglob("*.png")] == ["00001-0.png"]
    assert sorted(p.name for p in out.iterdir()) == [BENCH_MARK, "images", "report.json"]
    with _replacing(out):
        (out / "report.json").write_text('{"new": 1}')
    fresh = tmp_path / "fresh"                       # a first run that wrote nothing leaves no mark behind
    fresh.mkdir()
    with pytest.raises(KeyboardInterrupt):
        with _replacing(fresh):
            raise KeyboardInterrupt
    assert not (fresh / BENCH_MARK).exists()
    assert (out / "report.json").read_text() == '{"new": 1}' and not (out / "images").exists()


def test_bench_settings_are_checked_before_any_model_loads(tiny_sd1, dog_photos, tmp_path):
    base = ("bench", "--model", tiny_sd1, "--real", dog_photos, "--dino-model", "nobody/missing", "--output", tmp_path)
    code, _, err = run_cli(*base, "--subject", "dog", "--div", "--images-per-prompt", "1")
    assert code == 2 and "--div needs --images-per-prompt 2" in err, err
    code, _, err = run_cli(*base, "--subject", "dog", "--size", "33")
    assert code == 2 and "--size 33: must be a multiple of 8" in err, err
    code, _, err = run_cli(*base, "--subject", "Dog")         # a subject's name in any case
    assert code == 2 and "hf download" in err, err
    code, _, err = run_cli("bench", "--model", tmp_path / "no_model", "--real", dog_photos, "--subject", "dog",
                           "--dino-model", "nobody/missing", "--output", tmp_path / "o")
    assert code == 2 and "--model" in err and "dino" not in err, err          # the missing model is named first
