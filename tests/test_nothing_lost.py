"""Nothing the user had is lost, and bad input is one line: the reproductions of issue 31, each a
test. ``FAST`` trains the tiny SD1 for two steps."""
from __future__ import annotations

import hashlib
import os
import shutil
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from conftest import make_photos, run_cli
from dreambooth.errors import UserError

FAST = ["--max-steps", "2", "--num-class-images", "2", "--class-steps", "1", "--resolution", "32",
        "--instance-prompt", "a photo of sks dog"]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its checksum."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


@pytest.fixture
def old_model(tiny_sd1, dog_photos, tmp_path) -> Path:
    """A finished LoRA run with checkpoints, as a user has it."""
    out = tmp_path / "old_model"
    code, _, err = run_cli("train", "--model", tiny_sd1, "--instance-dir", dog_photos, *FAST, "--method", "lora",
                           "--max-steps", "3", "--checkpoint-every", "1", "--keep-checkpoints", "0", "--output", out)
    assert code == 0, err
    return out


# ----- data loss -----------------------------------------------------------------------------------

def test_overwrite_never_deletes_the_photos_it_trains_on(tiny_sd1, tmp_path):
    photos = make_photos(tmp_path / "p" / "photos")
    (tmp_path / "p" / "notes.txt").write_text("mine")
    before = snapshot(tmp_path / "p")
    code, _, err = run_cli("train", "--model", tiny_sd1, "--instance-dir", photos, *FAST,
                           "--output", tmp_path / "p", "--overwrite")
    one_line_error(code, err, "--output", "--instance-dir")
    assert snapshot(tmp_path / "p") == before


def test_advice_that_would_be_refused_next_is_not_given(tiny_sd1, old_model, tmp_path):
    """The photo folder as --output: not "pass --overwrite" (which is then refused) but "elsewhere"; the
    output folder as --resume: --resume latest; a .previous with no checkpoint: not --resume latest."""
    photos = make_photos(tmp_path / "photos")
    code, _, err = run_cli("train", "--model", tiny_sd1, "--instance-dir", photos, *FAST, "--output", photos)
    one_line_error(code, err, "--output", "lies inside --instance-dir", "write the model somewhere else")
    code, _, err = run_cli("train", "--model", tiny_sd1, "--instance-dir", photos, *FAST, "--method", "lora",
                           "--max-steps", "4", "--output", old_model, "--resume", old_model)
    one_line_error(code, err, f"--resume {old_model}: a run's output, not a checkpoint; give --resume latest")
    fresh = tmp_path / "fresh"
    (fresh / ".previous").mkdir(parents=True)
    code, _, err = run_cli("train", "--model", tiny_sd1, "--instance-dir", photos, *FAST, "--output", fresh)
    one_line_error(code, err, "move it back or delete it")
    assert "--resume latest" not in err, err


def test_overwrite_never_deletes_the_model_it_trains_from(tiny_sd1, dog_photos, tmp_path):
    """A stranger's kohya habit: the base model kept inside the folder given as --output."""
    import shutil
    shutil.copytree(tiny_sd1, tmp_path / "base" / "model")
    before = snapshot(tmp_path / "base")
    code, _, err = run_cli("train", "--model", tmp_path / "base" / "model", "--instance-dir", dog_photos, *FAST,
                           "--method", "lora", "--output", tmp_path / "base", "--overwrite")
    one_line_error(code, err, "--output", "holds --model")
    assert snapshot(tmp_path / "base") == before


def test_overwrite_replaces_only_a_training_output(tiny_sd1, dog_photos, old_model, tmp_path):
    """--output models/Lora --overwrite wiped every other LoRA there: a folder no run wrote is refused,
    naming what it holds; a finished output, or an unfinished run's leftovers, are replaced."""
    loras = tmp_path / "Lora"
    loras.mkdir()
    for name in ("a.safetensors", "b.safetensors"):
        (loras / name).write_bytes(b"mine")
    before = snapshot(loras)
    code, _, err = run_cli("train", "--model", tiny_sd1, "--instance-dir", dog_photos, *FAST, "--method", "lora",
                           "--output", loras, "--overwrite")
    one_line_error(code, err, "--output", "holds what no training run wrote (a.safetensors, b.safetensors)")
    assert snapshot(loras) == before
    (old_model / "my_generations").mkdir()                          # the user's, kept in a finished output
    (old_model / "NOTES.md").write_text("mine")
    before = snapshot(old_model)
    code, _, err = run_cli("train", "--model", tiny_sd1, "--instance-dir", dog_photos, *FAST, "--method", "lora",
                           "--output", old_model, "--overwrite")
    one_line_error(code, err, "holds what no training run wrote (", "my_generations/", "NOTES.md")
    assert snapshot(old_model) == before
    (old_model / "NOTES.md").unlink()
    (old_model / "my_generations").rmdir()
    for output in (old_model, tmp_path / "leftovers"):
        (tmp_path / "leftovers" / "checkpoints").mkdir(parents=True, exist_ok=True)
        code, _, err = run_cli("train", "--model", tiny_sd1, "--instance-dir", dog_photos, *FAST, "--method", "lora",
                               "--output", output, "--overwrite")
        assert code == 0, err


def test_a_finished_run_trained_on_and_interrupted_resumes_with_the_printed_command(tiny_sd1, dog_photos, old_model,
                                                                                  monkeypatch):
    """Training a finished run (3 steps) on needed --overwrite once; stopped at step 4, the command it
    prints (without --overwrite) goes on, and the hint for a finished run says how to train it on."""
    from dreambooth.training.trainer import Trainer
    real = Trainer.loss

    def interrupted(self, batch):
        if self.step == 4:
            raise KeyboardInterrupt
        return real(self, batch)
    base = ["train", "--model", tiny_sd1, "--instance-dir", dog_photos, *FAST, "--method", "lora",
            "--checkpoint-every", "1", "--keep-checkpoints", "0", "--output", old_model]
    code, _, err = run_cli(*base)
    one_line_error(code, err, "--resume latest --max-steps MORE --overwrite to train it on")
    monkeypatch.setattr(Trainer, "loss", interrupted)
    code, _, err = run_cli(*base, "--max-steps", "6", "--resume", "latest", "--overwrite")
    assert code == 130, err
    monkeypatch.setattr(Trainer, "loss", real)
    code, _, err = run_cli(*base, "--max-steps", "6", "--resume", "latest")
    assert code == 0, err


def test_overwrite_checks_the_run_before_touching_the_old_output(tiny_sd1, old_model, tmp_path):
    before = snapshot(old_model)
    code, _, err = run_cli("train", "--model", tiny_sd1, "--instance-dir", tmp_path / "typo", *FAST,
                           "--output", old_model, "--overwrite")
    one_line_error(code, err, "--instance-dir", "no such folder")
    code, _, err = run_cli("train", "--model", tmp_path / "no-model", "--instance-dir", make_photos(tmp_path / "ph"),
                           *FAST, "--output", old_model, "--overwrite")
    one_line_error(code, err, "--model")
    assert snapshot(old_model) == before


def test_a_failed_overwrite_puts_the_old_output_back(tiny_sd1, dog_photos, old_model):
    from dreambooth.training.callbacks import TrainingCallback
    from dreambooth.training.config import build_config
    from dreambooth.training.trainer import train
    before = snapshot(old_model)

    class Fail(TrainingCallback):
        def on_step_end(self, run, step):
            raise RuntimeError("a crash in the middle of the run")
    config = build_config(None, dict(model=str(tiny_sd1), instance_dir=str(dog_photos), instance_prompt="a sks dog",
                                     resolution=32, max_steps=3, method="full", output=str(old_model), overwrite=True))
    with pytest.raises(RuntimeError):
        train(config, callbacks=[Fail()])
    assert snapshot(old_model) == before
    # and a run that succeeds replaces it, leaving nothing of the old one behind
    result = train(config)
    assert result.steps == 3 and (old_model / "model_index.json").exists()
    assert not (old_model / "pytorch_lora_weights.safetensors").exists() and not (old_model / ".previous").exists()


def test_resume_from_another_run_needs_overwrite(tiny_sd1, dog_photos, old_model, tmp_path):
    other = tmp_path / "other"
    code, _, err = run_cli("train", "--model", tiny_sd1, "--instance-dir", dog_photos, *FAST, "--method", "lora",
                           "--checkpoint-every", "1", "--output", other)
    assert code == 0, err
    before = snapshot(old_model)
    code, _, err = run_cli("train", "--model", tiny_sd1, "--instance-dir", dog_photos, *FAST, "--method", "lora",
                           "--max-steps", "3", "--output", old_model,
                           "--resume", other / "checkpoints" / "checkpoint-000001")
    one_line_error(code, err, "--output", "--overwrite")
    assert snapshot(old_model) == before


def test_ctrl_c_names_the_last_checkpoint_and_the_command_that_resumes(tiny_sd1, dog_photos, tmp_path, monkeypatch):
    from dreambooth.training.trainer import Trainer
    real = Trainer.loss

    def interrupted(self, batch):
        if self.step == 2:
            raise KeyboardInterrupt
        return real(self, batch)
    monkeypatch.setattr(Trainer, "loss", interrupted)
    out = tmp_path / "run"
    code, _, err = run_cli("train", "--model", tiny_sd1, "--instance-dir", dog_photos, *FAST, "--max-steps", "5",
                           "--checkpoint-every", "1", "--output", out)
    assert code == 130 and "Traceback" not in err
    assert f"the last checkpoint is {out / 'checkpoints' / 'checkpoint-000002'}" in err
    command = err.split("resume with: ", 1)[1].strip()
    assert command.startswith("dreambooth train ") and command.endswith("--resume latest")
    monkeypatch.setattr(Trainer, "loss", real)
    import shlex
    code, stdout, err = run_cli(*shlex.split(command)[1:])
    assert code == 0 and "trained to step 5 (3 from step 2) in " in stdout, err     # its speed: of those 3


def test_the_resume_command_of_a_launched_run_keeps_the_launcher(monkeypatch):
    from dreambooth.cli.main import resume_command
    argv = ["train", "--model", "toy", "--output", "out", "--overwrite"]
    assert resume_command(argv) == "dreambooth train --model toy --output out --resume latest"
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert resume_command(argv) == ("accelerate launch (its options as before: 2 processes) -m "
                                    "dreambooth train --model toy --output out --resume latest")


def test_a_second_run_on_an_output_being_written_is_refused(tiny_sd1, dog_photos, tmp_path):
    from dreambooth.outputs import output_lock, take_lock
    out = tmp_path / "run"
    out.mkdir()
    held, _ = take_lock(output_lock(out))        # as the run that writes it holds it
    try:
        code, _, err = run_cli("train", "--model", tiny_sd1, "--instance-dir", dog_photos, *FAST, "--max-steps", "1",
                               "--output", out)
        assert code == 2 and "another dreambooth train is writing it" in err and err.count("\n") == 1, err
    finally:
        held.close()
    code, _, err = run_cli("train", "--model", tiny_sd1, "--instance-dir", dog_photos, *FAST, "--max-steps", "1",
                           "--output", out)
    assert code == 0, err                        # once it is free
    assert not list(out.glob(".*lock*"))         # the lock lives in the cache, not among the user's files


def test_a_checkpoint_past_max_steps_is_refused_and_the_finished_model_kept(tiny_sd1, dog_photos, old_model):
    """(Its checkpoints are at steps 1, 2 and 3.) A run resumed with --max-steps below the checkpoint's
    step would train nothing and replace the finished model with it."""
    before = snapshot(old_model)
    for resume, step in (("latest", 3), (old_model / "checkpoints" / "checkpoint-000002", 2)):
        code, _, err = run_cli("train", "--model", tiny_sd1, "--instance-dir", dog_photos, *FAST, "--method", "lora",
                               "--max-steps", "1", "--output", old_model, "--resume", resume)
        one_line_error(code, err, f"the checkpoint is at step {step}, past --max-steps 1", f"--max-steps {step} or more")
    assert snapshot(old_model) == before


def test_a_resume_folder_that_is_not_there_is_said_so(tiny_sd1, dog_photos, tmp_path):
    code, _, err = run_cli("train", "--model", tiny_sd1, "--instance-dir", dog_photos, *FAST, "--max-steps", "2",
                           "--output", tmp_path / "o", "--resume", tmp_path / "nowhere")
    one_line_error(code, err, "--resume", "no such folder")


def test_the_step_a_checkpoint_holds_is_checked_when_it_is_loaded():
    """A checkpoint folder renamed (its name says no step) is checked by the step its state holds."""
    from dreambooth.training.checkpoint import check_within_run
    check_within_run(Path("renamed"), None, 2)
    check_within_run(Path("renamed"), 2, 2)
    with pytest.raises(UserError, match="at step 3, past --max-steps 2"):
        check_within_run(Path("renamed"), 3, 2)


# ----- damaged state -------------------------------------------------------------------------------

def _cut_without_manifest(checkpoint: Path, name: str, keep: int) -> None:
    """An older checkpoint (no manifest of sizes and checksums) with one file cut short."""
    (checkpoint / "manifest.json").unlink()
    (checkpoint / name).write_bytes((checkpoint / name).read_bytes()[:keep])


@pytest.mark.parametrize("damage, name", [
    (lambda c: (c / "trainable.safetensors").write_bytes((c / "trainable.safetensors").read_bytes()[:100]),
     "trainable.safetensors"),
    (lambda c: _cut_without_manifest(c, "trainable.safetensors", 1000), "trainable.safetensors"),
    (lambda c: _cut_without_manifest(c, "optimizer.pt", 1000), "optimizer.pt"),
    (lambda c: (c / "optimizer.pt").write_bytes((c / "optimizer.pt").read_bytes()[:-10]), "optimizer.pt"),
    (lambda c: (c / "state.pt").write_bytes(b"\0" * (c / "state.pt").stat().st_size), "state.pt"),
    (lambda c: (c / "settings.json").write_text("{not json"), "settings.json"),
    (lambda c: (c / "optimizer.pt").unlink(), "optimizer.pt: missing"),
])
def test_a_damaged_checkpoint_is_refused_by_name_and_skipped_by_latest(damage, name, tiny_sd1, dog_photos, old_model):
    newest = old_model / "checkpoints" / "checkpoint-000003"
    damage(newest)
    code, _, err = run_cli("train", "--model", tiny_sd1, "--instance-dir", dog_photos, *FAST, "--method", "lora",
                           "--checkpoint-every", "1", "--max-steps", "4", "--output", old_model, "--resume", newest)
    one_line_error(code, err, "--resume", "damaged", name)
    code, stdout, err = run_cli("train", "--model", tiny_sd1, "--instance-dir", dog_photos, *FAST, "--method", "lora",
                                "--checkpoint-every", "1", "--max-steps", "4", "--output", old_model,
                                "--resume", "latest", "--overwrite")
    assert code == 2 and f"skipping {newest}" in err and name.split(":")[0] in err, err
    assert "the newest checkpoint (checkpoint-000002) is older than the model of step 3" in err, err  # step 3 kept
    code, stdout, err = run_cli("train", "--model", tiny_sd1, "--instance-dir", dog_photos, *FAST, "--method", "lora",
                                "--checkpoint-every", "1", "--max-steps", "4", "--output", old_model, "--resume",
                                old_model / "checkpoints" / "checkpoint-000002", "--overwrite")   # named: as asked
    assert code == 0 and "resumed from" in err and "checkpoint-000002" in err, err


def test_class_images_of_another_class_prompt_are_refused(tiny_sd1, dog_photos, tmp_path):
    """The class images an earlier run kept (its output's, kept on --overwrite) were made for its class
    prompt: a run with another one stops before using them, and the old output is as it was."""
    out = tmp_path / "run"
    base = ["train", "--model", tiny_sd1, "--instance-dir", dog_photos, *FAST, "--output", out]
    code, _, err = run_cli(*base, "--class-prompt", "a photo of dog")
    assert code == 0, err
    before = snapshot(out)
    code, _, err = run_cli(*base, "--class-prompt", "a photo of cat", "--overwrite")
    one_line_error(code, err, "--class-prompt 'a photo of cat'", "2 class image(s) made for 'a photo of dog'",
                   "class-00000.png", "move them away")
    assert snapshot(out) == before
    own = tmp_path / "own"                                  # the user's own class photos carry no infotext: used
    own.mkdir()
    for k, path in enumerate(sorted((out / "class_images").iterdir())):
        Image.open(path).save(own / f"cat{k}.png")
    code, _, err = run_cli(*base, "--class-prompt", "a photo of cat", "--overwrite", "--class-dir", own)
    assert code == 0, err


def test_class_images_of_another_model_or_in_the_photo_folder_are_refused(tiny_sd1, dog_photos, tmp_path):
    """Prior preservation learns from the model's own images: class images another model made are
    refused (a folder of the same model moved elsewhere is the same model); so is a class folder that
    is the photo folder, where class images would mix with the photos."""
    import shutil
    classes = tmp_path / "classes"
    base = ["train", "--instance-dir", dog_photos, *FAST, "--class-prompt", "a photo of dog", "--class-dir", classes]
    code, _, err = run_cli(*base, "--model", tiny_sd1, "--output", tmp_path / "a")
    assert code == 0, err
    other = tmp_path / "other-model"
    shutil.copytree(tiny_sd1, other)
    code, _, err = run_cli(*base, "--model", other, "--output", tmp_path / "b")
    one_line_error(code, err, f"--model '{other}'", "2 class image(s) made by another model,", "move them away")
    moved = tmp_path / "moved" / tiny_sd1.name
    shutil.copytree(tiny_sd1, moved)
    code, _, err = run_cli(*base, "--model", moved, "--output", tmp_path / "c")
    assert code == 0, err
    photos = tmp_path / "photos"
    shutil.copytree(dog_photos, photos)
    before = snapshot(photos)
    code, _, err = run_cli("train", "--model", tiny_sd1, "--instance-dir", photos, *FAST, "--class-prompt", "a photo of dog",
                           "--class-dir", photos, "--output", tmp_path / "d")
    one_line_error(code, err, f"--class-dir {photos}: is the photo folder")
    assert snapshot(photos) == before


def test_a_resume_with_other_photos_or_settings_says_it_is_not_exact(tiny_sd1, dog_photos, tmp_path):
    out = tmp_path / "run"
    base = ["train", "--model", tiny_sd1, "--instance-dir", dog_photos, *FAST, "--checkpoint-every", "1", "--output", out]
    code, _, err = run_cli(*base, "--seed", "1")
    assert code == 0, err
    code, _, err = run_cli(*base[:-2], "--max-steps", "3", "--resume", "latest", "--seed", "1", "--output", out,
                           "--overwrite")            # (trained on: the finished run's model is replaced)
    assert code == 0 and "from the checkpoint's: training goes on" not in err, err
    code, _, err = run_cli(*base[:-2], "--max-steps", "4", "--resume", "latest", "--seed", "5", "--resolution", "64",
                           "--output", out, "--overwrite")
    assert code == 0, err
    assert "this run's resolution 64 (was 32) differs from the checkpoint's" in err
    assert "--seed 5 is not used; the random streams go on from the checkpoint's (--seed 1)" in err


def test_overwrite_with_a_class_folder_still_to_be_made_inside_the_output(tiny_sd1, dog_photos, old_model):
    """Nothing of a class folder that does not exist yet can be lost: --overwrite goes on (it said the
    folder 'would be deleted')."""
    code, _, err = run_cli("train", "--model", tiny_sd1, "--instance-dir", dog_photos, *FAST, "--class-prompt",
                           "a photo of dog", "--class-dir", old_model / "cls", "--output", old_model, "--overwrite")
    assert code == 0, err
    assert len(list((old_model / "cls").glob("*.png"))) == 2


def test_a_damaged_class_image_is_made_again(tiny_sd1, dog_photos, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--model", tiny_sd1, "--instance-dir", dog_photos, *FAST, "--class-prompt", "a photo of dog",
            "--output", out]
    code, _, err = run_cli(*args)
    assert code == 0, err
    damaged = out / "class_images" / "class-00001.png"
    good = damaged.read_bytes()
    damaged.write_bytes(good[:50])
    code, _, err = run_cli(*args, "--overwrite")
    assert code == 0, err
    assert "class-00001.png is damaged" in err and damaged.read_bytes() == good    # the same seed, the same image


# ----- the file system and limits ------------------------------------------------------------------

def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` (the pixels are never read)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("side", [13_500, 10_000])      # a decompression bomb; over the limit, under twice it
def test_huge_photos_are_skipped_by_name(side, tiny_sd1, tmp_path):
    photos = make_photos(tmp_path / "photos", count=3)
    _png_header(photos / "huge.png", side, side)
    code, _, err = run_cli("train", "--model", tiny_sd1, "--instance-dir", photos, *FAST, "--output", tmp_path / "o")
    assert code == 0, err
    assert "huge.png" in err and "too large" in err and "DREAMBOOTH_MAX_IMAGE_PIXELS" in err


@pytest.mark.parametrize("args, needles", [
    (["--resolution", "100000"], ["--resolution 100000", "4096"]),
    (["--resolution", "2048"], ["--resolution 2048", "at most 1024"]),             # SD1's limit, after loading it
    (["--seed", str(2**70)], ["--seed"]),
    (["--seed", "-2"], ["--seed -2"]),
    (["--learning-rate", "nan"], ["--learning-rate nan", "finite"]),
    (["--class-cfg", "inf"], ["--class-cfg inf", "finite"]),
])
def test_limits_are_one_line(args, needles, tiny_sd1, dog_photos, tmp_path):
    code, _, err = run_cli("train", "--model", tiny_sd1, "--instance-dir", dog_photos, *FAST, *args,
                           "--output", tmp_path / "o")
    one_line_error(code, err, *needles)
    assert not (tmp_path / "o").exists()


def test_file_system_refusals_are_one_line(tiny_sd1, dog_photos, tmp_path):
    base = ["train", "--model", tiny_sd1, "--instance-dir", dog_photos, *FAST]
    code, _, err = run_cli(*base, "--output", "/proc/dreambooth-test-output")
    one_line_error(code, err, "/proc")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    code, _, err = run_cli(*base, "--class-prompt", "a dog", "--class-dir", a_file, "--output", tmp_path / "o")
    one_line_error(code, err, "--class-dir", "not a folder")
    code, _, err = run_cli(*base[:3], "--instance-dir", a_file, *FAST, "--output", tmp_path / "o")
    one_line_error(code, err, "--instance-dir", "not a folder")
    code, _, err = run_cli("generate", "--from-image", a_file)
    one_line_error(code, err, "--from-image", "not a readable image")


def test_the_os_error_boundary():
    from dreambooth.errors import file_operation, os_error_line
    with pytest.raises(UserError, match=r"^--output /ro/x: cannot create the output folder: Read-only file system$"):
        with file_operation("create the output folder", "--output"):
            raise OSError(30, "Read-only file system", "/ro/x")
    assert os_error_line(PermissionError(13, "Permission denied", "/root/x")) == \
        "/root/x: not allowed to read or write it: Permission denied"


# ----- silently wrong, now named ---------------------------------------------------------------------

@pytest.mark.parametrize("yaml, key", [("learning_rate: [1, 2]", "learning_rate"), ("max_steps: 2.7", "max_steps"),
                                       ("rank: true", "rank"), ("class_cfg: .nan", "class_cfg"),
                                       ("model: 12", "model")])
def test_preset_values_must_have_the_fields_type(yaml, key, tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text(yaml + "\n")
    code, _, err = run_cli("train", "--config", preset, "--model", "m", "--instance-dir", tmp_path,
                           "--instance-prompt", "a sks dog", "--output", tmp_path / "o")
    one_line_error(code, err, key)


def test_links_to_nothing_are_named(tiny_sd1, tmp_path):
    photos = make_photos(tmp_path / "photos", count=3)
    os.symlink(tmp_path / "gone.jpg", photos / "dangling.jpg")
    os.symlink(photos / "loop.jpg", photos / "loop.jpg")
    small = photos / "small.jpg"
    Image.new("RGB", (16, 16), (200, 100, 50)).save(small)
    (photos / "more").mkdir()
    code, _, err = run_cli("train", "--model", tiny_sd1, "--instance-dir", photos, *FAST, "--output", tmp_path / "o")
    assert code == 0, err
    assert err.count("dangling.jpg: a link to nothing") == 1 and err.count("loop.jpg: a link in a circle") == 1
    assert err.count("skipping 1 sub-folder(s) (more); only the files directly in it are read") == 1
    assert "small.jpg: 16x16, upscaled" in err


def test_generate_refuses_nan_and_bad_seeds_and_names_a_stretched_mask(tiny_sd1, tmp_path):
    base = ["generate", "--model", tiny_sd1, "--prompt", "a dog", "--steps", "1", "--output", tmp_path / "o"]
    for args, needle in ((["--cfg", "nan"], "--cfg nan"), (["--seed", "-2"], "--seed -2"),
                         (["--width", "4096"], "2048")):
        code, _, err = run_cli(*base, *args)
        one_line_error(code, err, needle)
    Image.new("RGB", (32, 32)).save(tmp_path / "init.png")
    Image.new("L", (16, 24), 255).save(tmp_path / "mask.png")
    code, _, err = run_cli(*base, "--init-image", tmp_path / "init.png", "--mask", tmp_path / "mask.png",
                           "--steps", "2", "--strength", "0.5")
    assert code == 0, err
    assert "--mask: 16x24, stretched to the init image's 32x32" in err
    assert not list(tmp_path.glob("**/*.tmp"))
    shutil.rmtree(tmp_path / "o")


def test_an_unreadable_photo_folder_is_one_line(tiny_sd1, tmp_path, monkeypatch):
    photos = make_photos(tmp_path / "photos", count=2)
    real = Path.iterdir

    def refuse(self):
        if self == photos:
            raise PermissionError(13, "Permission denied", str(self))    # what chmod 000 gives a user (not root)
        return real(self)
    monkeypatch.setattr(Path, "iterdir", refuse)
    code, _, err = run_cli("train", "--model", tiny_sd1, "--instance-dir", photos, *FAST, "--output", tmp_path / "o")
    one_line_error(code, err, "--instance-dir", str(photos), "cannot read the folder", "Permission denied")


def test_saving_mid_run_leaves_the_weights_in_training_as_they_were(tiny_sd1, dog_photos, tmp_path):
    """--keep-best saves the model mid-run; with --save-precision fp16 that once cast the trained UNet and
    text encoder to fp16 in place, so the run went on from rounded weights (its losses changed)."""
    import torch

    from conftest import saved_weights
    from dreambooth.training.config import build_config
    from dreambooth.training.trainer import Trainer
    cfg = build_config(None, dict(model=str(tiny_sd1), instance_dir=str(dog_photos), instance_prompt="a photo of sks dog",
                                  method="full", train_text_encoder=True, resolution=32, max_steps=1,
                                  save_precision="fp16", output=str(tmp_path / "out")))
    trainer = Trainer(cfg, []).setup()
    before = {name: {k: v.clone() for k, v in m.state_dict().items()} for name, m in trainer.trainables.items()}
    trainer.save_model(tmp_path / "best")
    for name, module in trainer.trainables.items():
        for key, value in module.state_dict().items():
            assert value.dtype == torch.float32 and torch.equal(value, before[name][key]), f"{name}.{key}"
    saved = saved_weights(tmp_path / "best")
    for name, file in (("unet", "unet/diffusion_pytorch_model.safetensors"), ("text_encoder", "text_encoder/model.safetensors")):
        assert saved[file].keys() <= before[name].keys() and len(saved[file]) > 10
        for key, value in saved[file].items():
            assert value.dtype == torch.float16 and torch.equal(value, before[name][key].half()), f"{file} {key}"


def test_a_failed_run_leaves_neither_an_empty_output_nor_its_lock(tiny_sd1, dog_photos, tmp_path):
    """A run that made its output folder (and parents) and failed before writing into it removes them; a
    finished run removes its lock file from the cache (one per output ever written piled up)."""
    from dreambooth.outputs import output_lock
    from dreambooth.training import TrainingCallback, build_config, train

    class Fails(TrainingCallback):
        def on_step_end(self, run, step):
            raise RuntimeError("a failure in the middle of the run")

    (tmp_path / "kept").mkdir()
    out = tmp_path / "kept" / "new" / "run"
    config = build_config(None, dict(model=str(tiny_sd1), instance_dir=str(dog_photos), output=str(out),
                                     instance_prompt="a photo of sks dog", resolution=32, max_steps=2, method="lora"))
    with pytest.raises(RuntimeError, match="a failure in the middle"):
        train(config, callbacks=[Fails()])
    assert not (tmp_path / "kept" / "new").exists() and (tmp_path / "kept").is_dir()   # only the folders it made
    assert not output_lock(out).exists()
    train(config)
    assert (out / "training_args.json").is_file() and not output_lock(out).exists()


def _remember_many(cache: str, start: int) -> None:
    import os
    os.environ["DREAMBOOTH_CACHE"] = cache
    from dreambooth.models.registry import remember_output
    for i in range(start, start + 150):
        remember_output(Path(cache) / f"out-{i}", "lora")


def test_two_processes_recording_trained_models_at_once_lose_none(tmp_path, monkeypatch):
    """The list of trained models is read, changed and written by every run and server that finishes
    one: two at once kept one's change and lost the other's (371 of 600 in a stranger's trial)."""
    import multiprocessing
    import json
    cache = tmp_path / "cache"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_remember_many, args=(str(cache), k * 1000)) for k in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert [w.exitcode for w in workers] == [0, 0]
    assert len(json.loads((cache / "trained.json").read_text())) == 300


def test_a_training_run_stopped_by_sigterm_is_stopped_as_ctrl_c_stops_it(dog_photos, tmp_path):
    """kill, timeout and Slurm send SIGTERM: the run died mid-write, leaving its new output folder and
    its lock. Now the output it made is gone (nothing written yet), as after Ctrl-C."""
    import signal
    import subprocess
    import sys
    import time

    from dreambooth.outputs import output_lock
    out = tmp_path / "run"
    run = subprocess.Popen([sys.executable, "-m", "dreambooth", "train", "--model", "toy", "--instance-dir", dog_photos,
                            "--instance-prompt", "a sks dog", "--max-steps", "100000", "--output", out],
                           stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not out.is_dir() and time.time() < deadline and run.poll() is None:
        time.sleep(0.2)
    time.sleep(2.0)                                       # into its steps
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130, err[-2000:]
    assert not out.exists() and not output_lock(out).exists(), err[-2000:]
