"""What a kohya sd-scripts / diffusers train_dreambooth user ran into with ``dreambooth train``: their
habits (flags, config files, folder layouts, checkpoint names) are answered in our terms, and what
training does differently from their tool is said."""
import json
import math
import shutil
from types import SimpleNamespace

import pytest
from PIL import Image

from conftest import run_cli
from dreambooth import progress
from dreambooth.errors import UserError
from dreambooth.training.callbacks import TrainingCallback
from dreambooth.training.config import build_config
from dreambooth.training.trainer import train

FAST = ["--resolution", "32", "--max-steps", "1", "--class-steps", "2"]


def _common(model, photos, **more):
    return dict(model=str(model), instance_dir=str(photos), instance_prompt="a photo of sks dog", resolution=32,
                max_steps=6, checkpoint_every=3, keep_checkpoints=0, export_kohya=False, method="lora",
                learning_rate=1e-3, **more)


class StopAt(TrainingCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, run, step):
        if step.step == self.step:
            raise KeyboardInterrupt


def _said(fn):
    said = []
    with progress.subscribed(said.append):
        result = fn()
    return result, " | ".join(e.message for e in said if e.kind == "message")


# 3 -------------------------------------------------------------------------------------------------
def test_a_resume_with_another_length_or_warm_up_says_the_schedule_is_recomputed(tiny_sd1, dog_photos, tmp_path):
    """A cosine schedule resumed with another --max-steps jumps at once; the checkpoint records both
    settings, so the resume says so (with the rate before and after), and nothing for an older checkpoint."""
    common = _common(tiny_sd1, dog_photos, lr_scheduler="cosine", lr_warmup_steps=1)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(build_config(None, dict(common, output=str(out))), callbacks=[StopAt(4)])
    settings = out / "checkpoints" / "checkpoint-000003" / "settings.json"
    assert json.loads(settings.read_text())["max_steps"] == 6
    backup = tmp_path / "backup"
    shutil.copytree(out, backup)
    _, said = _said(lambda: train(build_config(None, dict(common, max_steps=12, lr_warmup_steps=2, output=str(out),
                                                          resume="latest"))))
    assert "--resume: --max-steps 12 (was 6) and --lr-warmup-steps 2 (was 1) change the cosine learning-rate " \
           "schedule: it is recomputed for 12 steps with 2 of warm-up and applied from the resumed step 3; the rate " \
           "there goes from 0.000655 to 0.000976" in said, said
    # a checkpoint written before the settings were recorded: nothing to compare, nothing said
    shutil.rmtree(out)
    shutil.copytree(backup, out)
    saved = json.loads(settings.read_text())
    del saved["max_steps"], saved["lr_warmup_steps"]
    settings.write_text(json.dumps(saved))
    (settings.parent / "manifest.json").unlink()
    _, said = _said(lambda: train(build_config(None, dict(common, max_steps=12, output=str(out), resume="latest"))))
    assert "schedule" not in said, said


def test_a_length_change_is_said_only_for_schedules_that_depend_on_it():
    from dreambooth.training.schedule_resume import schedule_change
    config = SimpleNamespace(max_steps=12, lr_warmup_steps=0, lr_scheduler="constant")
    assert schedule_change({"max_steps": 6, "lr_warmup_steps": 0}, config, 3, [1e-4], [1e-4]) is None   # train on
    config.lr_scheduler = "linear"
    assert "--max-steps 12 (was 6) changes the linear" in schedule_change({"max_steps": 6}, config, 3, [5e-5], [7.5e-5])


# 5 -------------------------------------------------------------------------------------------------
def test_a_kohya_reg_folder_as_class_dir_is_refused_before_anything_is_written(tiny_sd1, dog_photos, tmp_path):
    reg = tmp_path / "reg"
    shutil.copytree(dog_photos, reg / "1_dog")
    before = sorted(p.relative_to(reg) for p in reg.rglob("*"))
    code, _, err = run_cli("train", "--model", tiny_sd1, "--instance-dir", dog_photos, "--instance-prompt", "a sks dog",
                           "--class-prompt", "a dog", "--num-class-images", "2", "--class-dir", reg, *FAST,
                           "--output", tmp_path / "o")
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: --class-dir {reg}: no image in it, only in its sub-folders") and \
        f"give one, e.g. --class-dir '{reg / '1_dog'}'" in err, err
    assert sorted(p.relative_to(reg) for p in reg.rglob("*")) == before and not (tmp_path / "o").exists()


# 6 -------------------------------------------------------------------------------------------------
def test_ctrl_c_before_the_first_checkpoint_says_when_it_comes(tiny_sd1, dog_photos, tmp_path):
    from dreambooth.training.results import TrainingInterrupted, last_checkpoint
    with pytest.raises(TrainingInterrupted) as stopped:
        train(build_config(None, dict(_common(tiny_sd1, dog_photos), checkpoint_every=5, output=str(tmp_path / "o"))),
              callbacks=[StopAt(2)])
    assert str(stopped.value) == "training interrupted at step 2; no checkpoint had been written yet: the first " \
                                 "comes at step 5 (--checkpoint-every 5)"
    assert "first comes at step 6" in last_checkpoint(None, 2, (20, 6))      # the last step has one too
    assert "--checkpoint-every N makes them" in last_checkpoint(None, 2, (0, 6))


# 7 -------------------------------------------------------------------------------------------------
def test_a_checkpoint_is_found_by_its_bare_name_or_unpadded_number(tmp_path, monkeypatch):
    from dreambooth.training.checkpoint import find_checkpoint
    from dreambooth.training.checkpoint_names import resume_folder
    out = tmp_path / "OUT"
    for step in (60, 80):
        (out / "checkpoints" / f"checkpoint-{step:06d}").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    want = out / "checkpoints" / "checkpoint-000080"
    for name in ("checkpoint-80", "checkpoint-000080", "OUT/checkpoints/checkpoint-80", str(want)):
        assert resume_folder(name, out).resolve() == want.resolve(), name
    with pytest.raises(UserError, match=r"^--resume checkpoint-90: no such checkpoint; \S+checkpoints holds "
                                        r"checkpoint-000060, checkpoint-000080: name one, or use 'latest'$"):
        find_checkpoint("checkpoint-90", out)
    with pytest.raises(UserError, match="holds no checkpoint"):
        find_checkpoint("checkpoint-80", tmp_path / "empty")


def test_a_run_resumes_from_a_checkpoint_named_as_diffusers_names_it(tiny_sd1, dog_photos, tmp_path):
    out = tmp_path / "run"
    common = _common(tiny_sd1, dog_photos, output=str(out))
    with pytest.raises(KeyboardInterrupt):
        train(build_config(None, common), callbacks=[StopAt(4)])
    _, said = _said(lambda: train(build_config(None, dict(common, resume="checkpoint-3"))))
    assert f"resumed from {out / 'checkpoints' / 'checkpoint-000003'} at step 3" in said, said


# 8 -------------------------------------------------------------------------------------------------
def test_kohyas_caption_files_are_read_and_a_txt_beside_one_wins(tmp_path):
    from dreambooth.training.data import load_examples
    for name in ("a", "b", "c"):
        Image.new("RGB", (32, 32), (10, 20, 30)).save(tmp_path / f"{name}.png")
    (tmp_path / "a.caption").write_text("a sks dog on grass")
    (tmp_path / "b.txt").write_text("a sks dog in snow")
    (tmp_path / "b.caption").write_text("not used")
    said = []
    examples = load_examples(tmp_path, "a sks dog", 32, captions=True, warn=said.append)
    assert [e.prompt for e in examples] == ["a sks dog on grass", "a sks dog in snow", "a sks dog"]
    assert said == [f"ignoring {tmp_path / 'b.caption'}: the b.txt beside it is its photo's caption"], said
    said.clear()
    load_examples(tmp_path, "a sks dog", 32, warn=said.append)
    assert said and "ignoring 3 caption files" in said[0] and "a.caption" in said[0], said


# 9 -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, text", [("k.toml", 'pretrained_model_name_or_path = "sd1"\nnetwork_dim = 8\n'),
                                        ("dataset.toml", "[general]\nenable_bucket = true\n[[datasets]]\n"),
                                        ("kohya.cfg", 'network_dim = 8\noutput_dir = "out"\n')])
def test_a_kohya_toml_config_is_said_to_be_toml(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    with pytest.raises(UserError, match=r"TOML \(kohya's sd-scripts' configs\) is not read: write the settings as "
                                        r"YAML, .*or give them as flags"):
        build_config(str(tmp_path / name))


@pytest.mark.parametrize("key, ours", [("pretrained_model_name_or_path", "model"), ("network_dim", "rank"),
                                       ("network_alpha", "alpha"), ("network_module", "method: lora"),
                                       ("noise_offset", "offset_noise")])
def test_a_peers_setting_in_a_config_file_is_named_as_ours(tmp_path, key, ours):
    (tmp_path / "c.json").write_text(json.dumps({key: 8}))
    with pytest.raises(UserError, match=f"unknown setting '{key}'; dreambooth train calls it {ours}$"):
        build_config(str(tmp_path / "c.json"))


# 10 ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("habit, ours", [("--noise_offset", "--offset-noise"), ("--flip_aug", "--random-flip"),
                                         ("--sample_every_n_steps", "--validate-every"),
                                         ("--min_snr_gamma", "--snr-gamma"), ("--snr_gamma", "--snr-gamma"),
                                         ("--save_model_as", "nothing (a LoRA run always writes both")])
def test_more_peer_flags_are_answered_with_ours(habit, ours):
    code, _, err = run_cli("train", habit, "x")
    assert code == 2 and f"No such option: {habit}; dreambooth train calls it {ours}" in err, err
    assert "Did you mean" not in err


@pytest.mark.parametrize("value, said", [("512,512", "give --resolution 512"),
                                         ("512x768", "give --resolution 512 (photos of other shapes train on square")])
def test_a_width_and_height_resolution_is_said_to_be_one_number(value, said):
    code, _, err = run_cli("train", "--resolution", value)
    assert code == 2 and "one number, the side of the square pictures training sees" in err and said in err, err


# 11 ------------------------------------------------------------------------------------------------
def test_far_from_square_photos_and_kohyas_repeat_folders_are_said_once(tmp_path):
    from dreambooth.training.data import ExampleStream, load_examples
    folder = tmp_path / "10_sks dog"
    folder.mkdir()
    for name, size in (("tall", (64, 128)), ("phone", (120, 90)), ("square", (64, 64))):
        Image.new("RGB", size).save(folder / f"{name}.png")
    examples = load_examples(folder, "a sks dog", 32, warn=lambda _: None)
    said = []
    ExampleStream(examples, [], 1, 32, False, False, 0, warn=said.append)
    assert said == [f"1 photo(s) far from square (tall.png 64x128): there are no aspect-ratio buckets here; each step "
                    "trains a random 32x32 crop of a photo resized to 32 on its short side, as little as 50% of its "
                    "long side; crop them square around the subject to train all of it",
                    f"--instance-dir '{folder}': kohya's repeat count (10_) is not used; every photo is shown equally "
                    "often and --max-steps sets the run's length (the prompt is --instance-prompt, not the folder's "
                    "name)"], said
    ExampleStream(examples, [], 1, 32, False, False, 0, shard=(1, 2), warn=said.append)     # the first process says it
    assert len(said) == 2


# 12 ------------------------------------------------------------------------------------------------
def test_the_bar_shows_no_loss_before_the_first_step():
    from dreambooth.terminal import FieldsColumn
    assert FieldsColumn().render(SimpleNamespace(fields={"loss": math.nan, "lr": 1e-4})).plain == ""
    assert FieldsColumn().render(SimpleNamespace(fields={"loss": 0.25})).plain == "loss 0.2500"


# 13 ------------------------------------------------------------------------------------------------
def test_a_folder_of_other_files_is_refused_at_once_without_suggesting_overwrite(tiny_sd1, dog_photos, tmp_path):
    loras = tmp_path / "myloras"
    loras.mkdir()
    (loras / "other.safetensors").write_bytes(b"mine")
    code, _, err = run_cli("train", "--model", tiny_sd1, "--instance-dir", dog_photos, "--instance-prompt", "a sks dog",
                           *FAST, "--output", loras)
    assert code == 2 and err.count("\n") == 1, err
    assert f"--output {loras}: holds what no training run wrote (other.safetensors); a run writes only into a new " \
           "or empty folder, or a training output: choose another --output, or move them away" in err, err
    assert "pass --overwrite" not in err and [p.name for p in loras.iterdir()] == ["other.safetensors"]
    code, _, again = run_cli("train", "--model", tmp_path / "no-model", "--instance-dir", dog_photos, "--instance-prompt",
                             "a sks dog", *FAST, "--output", loras)
    assert again == err.replace(str(tiny_sd1), str(tmp_path / "no-model")), again     # said before the model is read


def test_another_runs_checkpoint_resumed_into_a_folder_of_other_files_is_refused_so(tiny_sd1, dog_photos, tmp_path):
    train(build_config(None, dict(_common(tiny_sd1, dog_photos), max_steps=3, output=str(tmp_path / "run"))))
    loras = tmp_path / "myloras"
    loras.mkdir()
    (loras / "other.safetensors").write_bytes(b"mine")
    with pytest.raises(UserError, match="holds what no training run wrote \\(other.safetensors\\); a run writes only"):
        train(build_config(None, dict(_common(tiny_sd1, dog_photos), max_steps=6, output=str(loras),
                                      resume=str(tmp_path / "run" / "checkpoints" / "checkpoint-000003"))))
    assert [p.name for p in loras.iterdir()] == ["other.safetensors"]
