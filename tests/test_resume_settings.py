"""Exact resume in every setting (issue 30, item 6): a run stopped after its step-3 checkpoint and
resumed ends with the losses and the weights, bit for bit, of the same run never stopped.

Each setting below keeps state of its own across a checkpoint: the loss read a step late with fused
AdamW, gradient accumulation's counters, class images, two text encoders, a learning-rate warm-up,
the data stream's flips, the identifier's own learning rate, v-prediction, compiled blocks."""
import pytest

from conftest import assert_same_weights, saved_weights
from dreambooth.training.callbacks import TrainingCallback
from dreambooth.training.config import build_config
from dreambooth.training.trainer import train

SETTINGS = {
    "full + text encoder, bf16": dict(method="full", train_text_encoder=True, mixed_precision="bf16"),
    "full, gradient accumulation 2": dict(method="full", gradient_accumulation=2),
    "LoRA + text encoder, bf16, prior": dict(method="lora", train_text_encoder=True, mixed_precision="bf16",
                                             class_prompt="a photo of dog", num_class_images=2, class_steps=2),
    "SDXL LoRA + both text encoders, bf16": dict(family="sdxl", method="lora", train_text_encoder=True,
                                                 mixed_precision="bf16"),
    "full, bf16, checkpointing, SNR weighting, offset noise": dict(
        method="full", mixed_precision="bf16", gradient_checkpointing=True, snr_gamma=5.0, offset_noise=0.1),
    "LoRA, cosine after warm-up, batch 2, flips": dict(method="lora", lr_scheduler="cosine", lr_warmup_steps=2,
                                                       batch_size=2, random_flip=True),
    "full, the identifier's own learning rate": dict(method="full", identifier_lr=1e-4),
    "SD2 full, v-prediction": dict(family="sd2", method="full"),
    "LoRA, bf16, --compile": dict(method="lora", mixed_precision="bf16", compile=True),
}


class StopAfterStep4(TrainingCallback):
    def on_step_end(self, run, step):
        if step.step == 4:
            raise KeyboardInterrupt


@pytest.mark.parametrize("name", list(SETTINGS))
def test_stopped_and_resumed_ends_bit_for_bit(name, tiny_sd1, tiny_sd2, tiny_sdxl, dog_photos, tmp_path):
    setting = dict(SETTINGS[name])
    model = {"sd1": tiny_sd1, "sd2": tiny_sd2, "sdxl": tiny_sdxl}[setting.pop("family", "sd1")]
    common = dict(model=str(model), instance_dir=str(dog_photos), instance_prompt="a photo of sks dog",
                  resolution=32, max_steps=6, checkpoint_every=3, keep_checkpoints=0, export_kohya=False,
                  learning_rate=1e-3 if setting["method"] == "lora" else 1e-4, **setting)
    straight = train(build_config(None, dict(common, output=str(tmp_path / "straight"))), callbacks=[])
    stopped = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt):
        train(build_config(None, dict(common, output=str(stopped))), callbacks=[StopAfterStep4()])
    assert [p.name for p in (stopped / "checkpoints").iterdir()] == ["checkpoint-000003"]
    assert not saved_weights(stopped)                 # nothing of step 4 was written as the output
    resumed = train(build_config(None, dict(common, output=str(stopped), resume="latest")), callbacks=[])

    assert resumed.losses == straight.losses and len(straight.losses) == 6
    assert_same_weights(tmp_path / "straight", stopped, "after the resume")


class StopAsked(TrainingCallback):
    """A server shutting down: asks at step 4, the run checkpoints that step and stops."""
    def on_step_end(self, run, step):
        if step.step == 4:
            run.request_stop()


def _common(model, photos, **more):
    return dict(model=str(model), instance_dir=str(photos), instance_prompt="a photo of sks dog", resolution=32,
                max_steps=6, checkpoint_every=3, keep_checkpoints=0, export_kohya=False, method="lora",
                learning_rate=1e-3, **more)


def test_a_requested_stop_checkpoints_its_step_and_resumes_bit_for_bit(tiny_sd1, dog_photos, tmp_path):
    from dreambooth.training.results import TrainingInterrupted
    common = _common(tiny_sd1, dog_photos)
    straight = train(build_config(None, dict(common, output=str(tmp_path / "straight"))))
    stopped = tmp_path / "stopped"
    with pytest.raises(TrainingInterrupted) as interrupted:
        train(build_config(None, dict(common, output=str(stopped))), callbacks=[StopAsked()])
    step = interrupted.value.step          # 4, or 5 where step 4's loss is read a step late (fused AdamW)
    assert step in (4, 5) and interrupted.value.checkpoint.name == f"checkpoint-{step:06d}"
    resumed = train(build_config(None, dict(common, output=str(stopped), resume="latest")))
    assert resumed.losses == straight.losses
    assert_same_weights(tmp_path / "straight", stopped, "after the requested stop")


def test_a_resume_takes_a_new_learning_rate_and_says_a_new_seed_is_not_used(tiny_sd1, dog_photos, tmp_path):
    import json

    from dreambooth import progress
    common = _common(tiny_sd1, dog_photos)
    outputs = {}
    for name, more in (("same", {}), ("faster", {"learning_rate": 1e-2}), ("reseeded", {"seed": 7})):
        out = tmp_path / name
        with pytest.raises(KeyboardInterrupt):
            train(build_config(None, dict(common, output=str(out))), callbacks=[StopAfterStep4()])
        said = []
        with progress.subscribed(said.append):
            outputs[name] = train(build_config(None, dict(common, **more, output=str(out), resume="latest")))
        outputs[name].said = " ".join(e.message for e in said if e.kind == "message")
    assert outputs["faster"].losses[:3] == outputs["same"].losses[:3]
    assert outputs["faster"].losses[4:] != outputs["same"].losses[4:]                # the new rate trains
    assert json.loads((tmp_path / "faster" / "training_args.json").read_text())["learning_rate"] == 1e-2
    assert outputs["reseeded"].losses == outputs["same"].losses                      # the streams are the checkpoint's
    assert "--seed 7 is not used" in outputs["reseeded"].said
    assert json.loads((tmp_path / "reseeded" / "training_args.json").read_text())["seed"] == 0


def test_a_resume_whose_identifier_has_other_words_is_one_line(tiny_sd1, dog_photos, tmp_path):
    import json

    from dreambooth.errors import UserError
    common = dict(_common(tiny_sd1, dog_photos), method="full", identifier_lr=1e-4, learning_rate=1e-4)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(build_config(None, dict(common, output=str(out))), callbacks=[StopAfterStep4()])
    with pytest.raises(UserError, match="trained the embedding of sks .*identifier is sks zwx olis dog"):
        train(build_config(None, dict(common, instance_prompt="a photo of sks zwx olis dog", output=str(out),
                                      resume="latest")))
    with pytest.raises(UserError, match="trained the embedding of sks .*this run's identifier is zwx; resume with "
                                        "--instance-prompt 'a photo of sks dog'"):     # as many tokens: same shape
        train(build_config(None, dict(common, instance_prompt="a photo of zwx dog", output=str(out), resume="latest")))
    with pytest.raises(UserError, match="identifier is none; resume with no --class-prompt, or"):  # the class prompt differs
        train(build_config(None, dict(common, class_prompt="a photo of sks dog", output=str(out), resume="latest")))
    # a checkpoint of a version before 2026-12-07 (no words recorded) trained 'dog' too, without a class prompt
    for settings in (out / "checkpoints").glob("checkpoint-*/settings.json"):
        saved = json.loads(settings.read_text())
        del saved["identifier_words"]
        settings.write_text(json.dumps(saved))
        (settings.parent / "manifest.json").unlink()         # (its sizes would call the edited file damaged)
    with pytest.raises(UserError, match="trained the embeddings of sks dog .*as versions before 2026-12-07 did.* those of "
                                        "sks alone; start afresh"):
        train(build_config(None, dict(common, output=str(out), resume="latest")))


class StopMidStep(TrainingCallback):
    """A stop asked from outside (a notebook's button) while a step's first micro-batch is drawn."""
    def on_train_start(self, run):
        drawn, draw = [0], run.stream.next_batch

        def counted():
            drawn[0] += 1
            if drawn[0] == 7:                 # the first half of step 4 at gradient accumulation 2
                run.request_stop()
            return draw()
        run.stream.next_batch = counted


def test_a_stop_asked_within_an_accumulated_step_waits_for_its_end(tiny_sd1, dog_photos, tmp_path):
    from dreambooth.training.results import TrainingInterrupted
    common = _common(tiny_sd1, dog_photos, gradient_accumulation=2)
    straight = train(build_config(None, dict(common, output=str(tmp_path / "straight"))))
    stopped = tmp_path / "stopped"
    with pytest.raises(TrainingInterrupted) as interrupted:
        train(build_config(None, dict(common, output=str(stopped))), callbacks=[StopMidStep()])
    assert interrupted.value.step == 4
    resumed = train(build_config(None, dict(common, output=str(stopped), resume="latest")))
    assert resumed.losses == straight.losses
    assert_same_weights(tmp_path / "straight", stopped, "after a stop asked within a step")


def test_a_finished_run_is_trained_on_exactly_and_only_when_asked(tiny_sd1, dog_photos, tmp_path):
    """Checkpoints include the last step, so a finished 4-step run trained on to 7 steps ends as a 7-step
    run would. Its model is replaced only with --overwrite; the same --max-steps again is refused."""
    from dreambooth.errors import UserError
    common = dict(_common(tiny_sd1, dog_photos), max_steps=4)      # 4: not a multiple of --checkpoint-every 3
    straight = train(build_config(None, dict(common, max_steps=7, output=str(tmp_path / "straight"))))
    out = tmp_path / "run"
    train(build_config(None, dict(common, output=str(out))))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-000003", "checkpoint-000004"]
    finished = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and "checkpoints" not in p.parts}
    with pytest.raises(UserError, match="finished at step 4 .* give --max-steps above 4"):
        train(build_config(None, dict(common, output=str(out), resume="latest")))
    with pytest.raises(UserError, match="holds the model of a finished run \\(step 4\\); pass --overwrite"):
        train(build_config(None, dict(common, max_steps=7, output=str(out), resume="latest")))
    assert finished == {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and "checkpoints" not in p.parts}
    resumed = train(build_config(None, dict(common, max_steps=7, output=str(out), resume="latest", overwrite=True)))
    assert resumed.losses == straight.losses and len(resumed.losses) == 7
    assert_same_weights(tmp_path / "straight", out, "after training the finished run on")
    # trained on to 9 without checkpoints: the newest (step 7) is older than the model (step 9), which
    # "latest" would silently replace with a run from step 7; naming that checkpoint does it
    train(build_config(None, dict(common, max_steps=9, checkpoint_every=0, output=str(out), resume="latest",
                                  overwrite=True)))
    for overwrite in (True, False):        # said first: "pass --overwrite" would lead to this refusal next
        with pytest.raises(UserError, match=r"--resume latest: the newest checkpoint \(checkpoint-000007\) is older "
                           r"than the model of step 9 .* steps 8-9 would be lost; name it to resume from it anyway "
                           r"\(--resume \S+ --overwrite\)"):
            train(build_config(None, dict(common, max_steps=10, output=str(out), resume="latest", overwrite=overwrite)))
    named = out / "checkpoints" / "checkpoint-000007"
    assert train(build_config(None, dict(common, max_steps=10, output=str(out), resume=str(named),
                                         overwrite=True))).steps == 10


def test_a_resume_finds_its_model_and_photos_however_their_folders_are_typed(tiny_sd1, dog_photos, tmp_path, monkeypatch):
    """A checkpoint records the model and photo folders where they are: a resume that types them another way
    (relative, with a trailing slash, from another folder, or from training_args.json's absolute paths) is
    the same run, bit for bit, and says nothing of a changed setting."""
    import os
    import shutil

    from dreambooth import progress
    here = tmp_path / "work"
    shutil.copytree(tiny_sd1, here / "base")
    shutil.copytree(dog_photos, here / "photos")
    monkeypatch.chdir(here)
    common = _common("base", "photos")
    straight = train(build_config(None, dict(common, output="straight")))
    with pytest.raises(KeyboardInterrupt):
        train(build_config(None, dict(common, output="stopped")), callbacks=[StopAfterStep4()])
    (here / "elsewhere").mkdir()
    monkeypatch.chdir(here / "elsewhere")
    said = []
    with progress.subscribed(said.append):
        resumed = train(build_config(None, dict(common, model=".." + os.sep + "base" + os.sep, instance_dir=str(here / "photos"),
                                                output="../stopped", resume="latest")))
    assert resumed.losses == straight.losses
    assert not [e.message for e in said if "differ" in (e.message or "")]
    assert_same_weights(here / "straight", here / "stopped", "resumed with the folders typed otherwise")
