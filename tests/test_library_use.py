"""The library as a notebook uses it: calls repeated, mixed and threaded in one process, objects where
paths go, duck-typed callbacks; what a call leaves behind in the process (random generators, the
libraries' logging) is what the caller had."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from conftest import saved_weights
from dreambooth.training.callbacks import TrainingCallback
from dreambooth.training.config import build_config
from dreambooth.training.trainer import train


def _config(model, photos, output, **more):
    return build_config(None, dict(model=str(model), instance_dir=photos, instance_prompt="a photo of sks dog",
                                   resolution=32, max_steps=2, method="lora", export_kohya=False, output=output, **more))


class FailsAtTheEnd(TrainingCallback):
    def on_train_end(self, run, result):
        raise KeyboardInterrupt          # the notebook's stop button, once the model is written


def test_a_failure_after_the_new_output_is_written_keeps_it(tiny_sd1, dog_photos, tmp_path):
    out = tmp_path / "run"
    train(_config(tiny_sd1, dog_photos, out))
    with pytest.raises(KeyboardInterrupt):
        train(_config(tiny_sd1, dog_photos, out, overwrite=True, learning_rate=1e-2), callbacks=[FailsAtTheEnd()])
    assert saved_weights(out) and not (out / ".previous").exists()       # the new model, complete


def test_threads_generating_on_one_pipeline_take_turns(tiny_sd1):
    from dreambooth.generation import GenerationParams, generate, load_generation_pipeline
    pipeline = load_generation_pipeline(str(tiny_sd1))
    samplers = ["Euler a", "DDIM", "DPM++ 2M", "Heun"]
    params = [GenerationParams("a photo of a dog", sampler=s, steps=3, seed=7, width=32, height=32) for s in samplers]
    alone = [np.asarray(generate(pipeline, p)[0].image) for p in params]
    together, errors = [None] * 4, []

    def run(i):
        try:
            together[i] = np.asarray(generate(pipeline, params[i])[0].image)
        except Exception as exc:                 # noqa: BLE001 (reported below)
            errors.append(exc)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for sampler, a, b in zip(samplers, alone, together):
        assert np.array_equal(a, b), sampler


def test_train_leaves_the_callers_random_generators_and_loading_the_libraries_logging(tiny_sd1, dog_photos, tmp_path):
    import random

    import diffusers
    import transformers
    torch.manual_seed(1234)
    random.seed(5)
    np.random.seed(6)
    want = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(1234)
    random.seed(5)
    np.random.seed(6)
    diffusers.utils.logging.set_verbosity_warning()
    transformers.utils.logging.enable_progress_bar()
    train(_config(tiny_sd1, dog_photos, tmp_path / "run"))
    assert torch.equal(torch.rand(3), want[0]) and random.random() == want[1] and np.random.rand() == want[2]
    assert diffusers.utils.logging.get_verbosity() == diffusers.utils.logging.WARNING
    assert transformers.utils.logging.is_progress_bar_enabled()


def test_objects_where_names_go(tiny_sd1, dog_photos, tmp_path):
    from dreambooth.errors import UserError
    from dreambooth.generation import load_generation_pipeline
    config = _config(tiny_sd1, dog_photos, tmp_path / "run")          # pathlib.Path for folders
    assert config.validate() is config and config.instance_dir == str(dog_photos)
    assert load_generation_pipeline(str(tiny_sd1), dtype="bf16").pipe.unet.dtype == torch.bfloat16
    with pytest.raises(UserError, match="dtype 'half': one of auto, fp32, fp16, bf16"):
        load_generation_pipeline(str(tiny_sd1), dtype="half")
    with pytest.raises(TypeError, match="config must be a TrainConfig"):
        train({"model": "toy"})
    with pytest.raises(TypeError, match="build_config: preset is"):
        build_config({"model": "toy"})


def test_a_callback_with_only_some_hooks_or_given_alone(tiny_sd1, dog_photos, tmp_path):
    class Steps:                                  # duck-typed: no base class, one hook
        def __init__(self):
            self.seen = []

        def on_step_end(self, run, step):
            self.seen.append(step.step)
    steps = Steps()
    train(_config(tiny_sd1, dog_photos, tmp_path / "run"), callbacks=steps)
    assert steps.seen == [1, 2]


def test_a_resumed_tasks_rate_counts_what_this_run_did(monkeypatch):
    from dreambooth import progress
    clock = iter([100.0, 100.0, 102.0, 102.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    events = []
    with progress.subscribed(events.append), progress.task("training", 6, completed=2) as bar:
        bar.advance(1)
    start, advance = events[0], events[1]
    assert start.rate is None and start.eta is None
    assert advance.rate == pytest.approx(0.5) and advance.eta == pytest.approx(6.0)    # 1 step in 2 s; 3 left


def test_scores_take_folders(dog_photos, tmp_path):
    from dreambooth.evaluation.metrics import Evaluator
    from dreambooth.errors import UserError
    from dreambooth.testing.eval_models import save_tiny_eval_models
    dino, clip = save_tiny_eval_models(tmp_path / "models")
    evaluator = Evaluator(str(dino), str(clip)).load()
    by_folder = evaluator.score(dog_photos, dog_photos, ["a dog"] * 5)
    by_files = evaluator.score(sorted(dog_photos.iterdir()), [str(p) for p in sorted(dog_photos.iterdir())],
                               ["a dog"] * 5)
    assert by_folder["dino"] == by_files["dino"] and by_folder["counts"]["real"] == 5
    with pytest.raises(UserError, match="prompts: 1 for 5 generated images"):
        evaluator.score(dog_photos, dog_photos, ["a dog"])
    # one image alone, as a PIL image or an array (a TypeError deep in os.fspath before)
    from PIL import Image
    one = Image.open(sorted(dog_photos.iterdir())[0])
    assert evaluator.score(dog_photos, one, ["a dog"])["counts"]["generated"] == 1
    assert evaluator.score(dog_photos, np.asarray(one.convert("RGB")), ["a dog"])["dino"] == \
        evaluator.score(dog_photos, one, ["a dog"])["dino"]


def test_python_mistakes_say_what_to_do(tiny_sd1, dog_photos, tmp_path):
    from dreambooth.errors import UserError
    from dreambooth.generation import GenerationParams, generate
    with pytest.raises(UserError, match=r"unknown setting\(s\): max_step \(did you mean max_steps\?\)"):
        build_config(None, {"model": "toy", "max_step": 10})
    with pytest.raises(TypeError, match="generate: pipeline must be a GenerationPipeline"):
        generate("toy", GenerationParams("a dog"))
    with pytest.raises(TypeError, match="callback <built-in function print> has none of the hooks"):
        train(_config(tiny_sd1, dog_photos, tmp_path / "run"), callbacks=[print])


def test_a_python_caller_without_progress_gets_warnings_and_no_library_advice(tiny_sd1, dog_photos, tmp_path,
                                                                               monkeypatch, caplog, capfd):
    """Without show_progress() (nobody shows messages), a warning went nowhere: validation turned its
    metrics off in silence. It goes to the ``dreambooth`` logger. diffusers' advice on our own bf16
    casts ("should be kept in float32") stays out."""
    import logging

    from dreambooth import progress
    monkeypatch.setattr(progress, "_global", [])          # (the CLI tests run in this process subscribe)
    with caplog.at_level(logging.INFO, logger="dreambooth"):
        train(_config(tiny_sd1, dog_photos, tmp_path / "run", mixed_precision="bf16", validate_every=1,
                      train_text_encoder=True))
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(w.startswith("validation metrics off") for w in warned), warned
    assert "should be kept in float32" not in capfd.readouterr().err
