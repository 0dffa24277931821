"""Validation during training: grids, the metrics CSV, the curve and the kept best step."""
import csv
import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import run_cli
from dreambooth.generation.sampling import GeneratedImage
from dreambooth.training.config import TrainConfig
from dreambooth.training.validation import (ValidationSettings, Validator, best_checkpoint, default_validation_prompts,
                                            subject_phrase)


@pytest.fixture(scope="module")
def eval_models(tmp_path_factory):
    from dreambooth.testing.eval_models import save_tiny_eval_models
    return save_tiny_eval_models(tmp_path_factory.mktemp("val-eval-models"))


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_training_with_validate_every(tiny_sd1, dog_photos, eval_models, tmp_path):
    out = tmp_path / "out"
    code, _, err = run_cli(
        "train", "--model", tiny_sd1, "--instance-dir", dog_photos, "--instance-prompt", "a photo of sks dog",
        "--class-prompt", "a photo of dog", "--num-class-images", "2", "--class-steps", "1", "--method", "lora",
        "--resolution", "32", "--max-steps", "5", "--learning-rate", "1e-2", "--validate-every", "2",
        "--validation-seeds", "0", "--validation-seeds", "1", "--validation-steps", "2", "--keep-best",
        "--dino-model", eval_models[0], "--clip-model", eval_models[1], "--output", out)
    assert code == 0, err
    val = out / "validation"
    grids = sorted(p.name for p in val.glob("step-*.png"))
    assert grids == ["step-000000.png", "step-000002.png", "step-000004.png", "step-000005.png"]
    # 5 prompts (instance, three contexts, class) x 2 seeds at 32 px, each prompt left of its row, in a
    # column widened to keep it there (at most 16 lines' height of 12 px type)
    width, height = Image.open(val / "step-000002.png").size
    assert height == 5 * 32 and 3 * 32 < width <= 2 * 32 + 16 * 12
    rows = _rows(val / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [0, 2, 4, 5]
    for r in rows:
        for key in ("dino", "clip_i", "clip_t", "pres"):
            assert -1.0 <= float(r[key]) <= 1.0
    assert Image.open(val / "curve.png").format == "PNG"
    best = json.loads((val / "best.json").read_text())
    assert best["step"] in (2, 4, 5) and "CLIP-T" in best["rule"]
    kept = best_checkpoint(out)
    assert kept is not None and (kept / "pytorch_lora_weights.safetensors").exists()
    assert any(k.startswith("unet.") for k in load_file(str(kept / "pytorch_lora_weights.safetensors")))
    # the curve's numbers are dreambooth evaluate's on the same images (the class prompt's as PRES)
    code, _, err = run_cli("evaluate", "--real", dog_photos, "--generated", val / "step-000004", "--dino-model",
                           eval_models[0], "--clip-model", eval_models[1], "--output", tmp_path / "eval")
    assert code == 0, err
    scored = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key in ("dino", "clip_i", "clip_t", "pres"):
        assert float(rows[2][key]) == pytest.approx(scored[key], abs=2e-6), key


# ----- the validator with a stand-in trainer ------------------------------------------------------------

class FakeRun:
    """What the validator uses of a trainer: config, output, step, the pipeline, saving weights."""

    def __init__(self, config, pipe=None):
        from pathlib import Path
        self.config, self.step, self.saved = config, 0, []
        self.output = Path(config.output)
        self.pipe = pipe
        self.autocast_dtype = None
        self.warnings = []

    def warn(self, message):                # as the trainer's: said now, and kept for the summary
        from dreambooth import progress
        self.warnings.append(message)
        progress.warn(message)

    def generation_pipeline(self):
        from dreambooth.generation.pipeline import GenerationPipeline
        return GenerationPipeline(self.pipe)

    def save_model(self, path):
        path.mkdir(parents=True)
        (path / "step.txt").write_text(str(self.step))
        self.saved.append(self.step)


def _config(tmp_path, dog_photos, **extra):
    values = dict(validate_every=10, validation_prompts=None, validation_seeds=[0, 1], validation_steps=1,
                  keep_best=True, output=str(tmp_path), instance_dir=str(dog_photos),
                  instance_prompt="a photo of sks dog", class_prompt="a photo of dog", resolution=32,
                  dino_model=None, clip_model=None)
    values.update(extra)
    return TrainConfig(**values)


def _scripted(validator, scores):
    """Replace the images and evaluation models with scripted (dino, clip_t) per validation."""
    it = iter(scores)
    validator._load_evaluator = lambda: setattr(validator, "evaluator", object())
    n = len(validator.settings.prompts) * len(validator.settings.seeds)
    made = GeneratedImage(Image.new("RGB", (16, 16)), 0, "a dog\nSteps: 1, Sampler: DDIM, Seed: 0")
    validator._generate = lambda step: [made] * n

    def score(images):
        dino, clip_t = next(it)
        return {"dino": dino, "clip_i": dino, "clip_t": clip_t, "pres": 0.1}
    validator._score = score


def _train(validator, run, last):
    run.step = 0
    validator.start()
    for s in range(1, last):
        run.step = s
        validator.after_step(s)
    run.step = last
    validator.end(last)


def test_best_balance_rule(tmp_path, dog_photos):
    run = FakeRun(_config(tmp_path, dog_photos))
    cb = Validator(run)
    # step 0 is the reference (CLIP-T 0.30: trained steps need >= 0.27)
    _scripted(cb, [(0.5, 0.30), (0.6, 0.29), (0.7, 0.28), (0.9, 0.20), (0.65, 0.30)])
    _train(cb, run, 35)
    assert run.saved == [10, 20]  # 30 has the best DINO but lost too much CLIP-T; 35 (the end) has less DINO
    best = json.loads((tmp_path / "validation" / "best.json").read_text())
    assert best["step"] == 20 and best["reference_clip_t"] == pytest.approx(0.30)
    assert (best_checkpoint(tmp_path) / "step.txt").read_text() == "20"
    rows = _rows(tmp_path / "validation" / "metrics.csv")
    assert [(r["step"], r["eligible"], r["best_so_far"]) for r in rows] == [
        ("0", "", ""), ("10", "1", "1"), ("20", "1", "1"), ("30", "0", "0"), ("35", "1", "0")]
    assert (tmp_path / "validation" / "curve.png").exists()


def test_best_falls_back_to_clip_t(tmp_path, dog_photos):
    run = FakeRun(_config(tmp_path, dog_photos))
    cb = Validator(run)
    _scripted(cb, [(0.5, 0.30), (0.9, 0.20), (0.5, 0.25), (0.4, 0.29)])
    _train(cb, run, 30)
    assert run.saved == [10, 20, 30]  # no step qualifies until 30: meanwhile the highest CLIP-T


def test_fresh_run_drops_a_stale_best_and_resume_keeps_the_curve(tmp_path, dog_photos):
    config = _config(tmp_path, dog_photos)
    run = FakeRun(config)
    cb = Validator(run)
    _scripted(cb, [(0.5, 0.30), (0.6, 0.30), (0.7, 0.30)])
    _train(cb, run, 20)
    assert best_checkpoint(tmp_path) is not None
    # resumed at step 10: the curve up to 10 stays, step 10 ranks best again but the kept weights (step 20)
    # are past the resume point and go; step 20 is redone and kept
    run = FakeRun(config)
    resumed = Validator(run)
    _scripted(resumed, [(0.8, 0.30)])
    run.step = 10
    resumed.start()
    assert [r["step"] for r in resumed.rows] == [0, 10] and resumed.best["step"] == 10
    assert best_checkpoint(tmp_path) is None
    run.step = 20
    resumed.after_step(20)
    resumed.end(20)
    assert [int(r["step"]) for r in _rows(tmp_path / "validation" / "metrics.csv")] == [0, 10, 20]
    assert (best_checkpoint(tmp_path) / "step.txt").read_text() == "20"
    # a fresh run in the same output never takes the earlier run's best for its own
    run = FakeRun(config)
    fresh = Validator(run)
    _scripted(fresh, [(0.5, 0.30)])
    fresh.start()
    assert best_checkpoint(tmp_path) is None


def test_without_evaluation_models_grids_only(tmp_path, dog_photos):
    from dreambooth.testing.tiny import build_sd_pipeline
    config = _config(tmp_path, dog_photos, dino_model="nobody/not-cached", validation_prompts=["a sks dog"],
                     validation_seeds=[3], validation_sampler="DDIM")
    run = FakeRun(config, build_sd_pipeline())
    cb = Validator(run)
    torch.manual_seed(5)
    done = cb.start()
    assert torch.equal(torch.rand(3), torch.manual_seed(5) and torch.rand(3))  # training randomness untouched
    assert done.step == 0 and [f.name for f in done.images] == ["00001-3.png"] and done.metrics == {}
    run.step = 10
    cb.after_step(10)
    cb.end(10)
    assert sorted(p.name for p in (tmp_path / "validation").glob("step-*.png")) == ["step-000000.png", "step-000010.png"]
    rows = _rows(tmp_path / "validation" / "metrics.csv")
    assert [r["step"] for r in rows] == ["0", "10"] and all(r["dino"] == "" for r in rows)
    assert run.saved == [] and best_checkpoint(tmp_path) is None
    assert "not in the local Hugging Face cache" in cb.unavailable
    assert [w for w in run.warnings if w.startswith("validation metrics off")]     # said again at the run's end


def test_prompts_and_identifier():
    assert subject_phrase("a photo of sks dog") == "sks dog"
    assert subject_phrase("photo of an ohwx teapot") == "ohwx teapot"
    assert default_validation_prompts("a photo of sks dog", "a photo of dog") == [
        "a photo of sks dog", "a sks dog in the jungle", "a sks dog in the snow",
        "a sks dog with a city in the background", "a photo of dog"]
    settings = ValidationSettings.from_config(_config("/tmp/x", "/tmp/y", validation_cfg=4.0))
    assert settings.params.cfg_scale == 4.0 and settings.params.sampler == "DPM++ 2M"
    assert settings.class_prompt == "a photo of dog" and settings.identifier == "sks"


def test_prompts_without_the_identifier_are_said_once_in_trains_words(tmp_path, dog_photos, eval_models):
    """--validation-prompts that never name the identifier: one warning a run, in train's flags (it was
    evaluate's '--identifier sks: in none of the prompts' at every validation, scored or not)."""
    from dreambooth import progress
    config = _config(tmp_path, dog_photos, validate_every=1, validation_prompts=["a photo of a dog on grass"],
                     validation_seeds=[0], keep_best=False, dino_model=str(eval_models[0]),
                     clip_model=str(eval_models[1]))
    run = FakeRun(config)
    cb = Validator(run)
    made = GeneratedImage(Image.new("RGB", (16, 16), (120, 72, 40)), 0, "a dog\nSteps: 1, Sampler: DDIM, Seed: 0")
    cb._generate = lambda step: [made]
    said = []
    with progress.subscribed(lambda e: said.append(e.message) if e.kind == "message" else None):
        _train(cb, run, 4)
    assert [r["step"] for r in cb.rows] == [0, 1, 2, 3, 4] and all(r["clip_t"] is not None for r in cb.rows)
    warned = [m for m in said if "identifier" in m]
    assert len(warned) == 1 and warned[0].startswith(
        "--validation-prompts: none names the identifier 'sks' of --instance-prompt"), said
    assert "e.g. 'a sks dog in the jungle'" in warned[0]


def test_the_identifier_is_found_as_bench_finds_it_and_its_absence_said(tmp_path, dog_photos):
    """'a ohwx square' without a class prompt: ohwx (CLIP-T kept it, 0.37 where evaluate gave 0.11);
    an instance prompt with no single identifier is said once, in train's flags."""
    from dreambooth.models.tokens import subject_identifier
    for instance, klass in (("a ohwx square", None), ("a sks square on a table", "a square")):
        settings = ValidationSettings.from_config(_config(tmp_path, dog_photos, instance_prompt=instance,
                                                          class_prompt=klass))
        assert settings.identifier == subject_identifier(instance, klass) == instance.split()[1], instance
    run = FakeRun(_config(tmp_path, dog_photos, instance_prompt="a zwx qqv dog", class_prompt=None))
    Validator(run)._check_prompts()
    assert run.warnings == ["validation: no single identifier word in --instance-prompt 'a zwx qqv dog' to take "
                            "out for CLIP-T, which scores the prompts as written; use one rare identifier word "
                            "(`dreambooth tokens`) and name the class with --class-prompt"]


def test_masks_beside_the_instance_photos_are_not_scored(tmp_path, dog_photos, eval_models):
    """--masked-loss keeps NAME.mask.png (any case) beside each photo: validation's real photos are
    evaluate's, without them."""
    import shutil
    from dreambooth.evaluation import Evaluator
    from dreambooth.evaluation.metrics import real_photos
    photos = tmp_path / "photos"
    shutil.copytree(dog_photos, photos)
    for i, photo in enumerate(sorted(photos.iterdir())):
        Image.new("L", (64, 64), 255).save(photos / f"{photo.stem}{'.MASK.PNG' if i % 2 else '.mask.png'}")
    run = FakeRun(_config(tmp_path, photos, dino_model=str(eval_models[0]), clip_model=str(eval_models[1])))
    cb = Validator(run)
    cb._load_evaluator()
    want = Evaluator(*eval_models, "cpu").reference(real_photos(dog_photos))
    assert cb.real.count == want.count == 5
    assert torch.allclose(cb.real.dino, want.dino) and torch.allclose(cb.real.clip, want.clip)
