"""What strangers found missing or contradictory in the messages about photo folders, settings files and
an interrupted run: every photo-folder warning reaches the run's own warn (so its closing summary repeats
it), duplicates and transparent photos are said, a settings file's bad value names the file, peers'
EMA flags are answered, and Ctrl-C while class images are made says what is kept and what to do."""
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from conftest import run_cli
from dreambooth import progress
from dreambooth.errors import UserError
from dreambooth.generation.params import GenerationParams
from dreambooth.training import prior
from dreambooth.training.config import build_config, preset_file
from dreambooth.training.data import load_examples
from dreambooth.training.photo_notes import photo_notes

FAST = ["--resolution", "32", "--max-steps", "1", "--class-steps", "2"]


def _folder(dog_photos: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    shutil.copytree(dog_photos, folder)
    return folder


def _load(folder: Path, **kw) -> tuple[list, list[str]]:
    said = []
    return load_examples(folder, "a sks dog", 32, warn=said.append, **kw), said


def test_a_dangling_link_and_a_sub_folder_are_said_through_the_runs_warn(dog_photos, tmp_path):
    folder = _folder(dog_photos, tmp_path)
    os.symlink(folder / "nowhere.png", folder / "dangling.png")
    (folder / "sub").mkdir()
    _, said = _load(folder)
    assert any("dangling.png: a link to nothing" in w for w in said), said
    assert any("skipping 1 sub-folder(s) (sub)" in w for w in said), said


def test_the_closing_summary_repeats_the_photo_folder_warnings(tiny_sd1, dog_photos, tmp_path):
    folder = _folder(dog_photos, tmp_path)
    os.symlink(folder / "nowhere.png", folder / "dangling.png")
    (folder / "sub").mkdir()
    shutil.copy(folder / "00.jpg", folder / "zz.jpg")
    code, out, err = run_cli("train", "--model", tiny_sd1, "--instance-dir", folder, "--instance-prompt", "a sks dog",
                             "--output", tmp_path / "out", "--no-export-kohya", *FAST)
    assert code == 0, err
    summary = out[out.index("output:"):]
    for said in ("dangling.png: a link to nothing", "skipping 1 sub-folder(s) (sub)", "zz.jpg is a copy of 00.jpg"):
        assert said in summary, (said, summary)


def test_a_photo_longer_than_4_to_1_is_counted_after_its_middle_4_to_1_cut(tmp_path):
    wide = SimpleNamespace(original_hw=(100, 6000), path=tmp_path / "wide.png")
    note, = photo_notes([wide], 64, center_crop=False)
    assert "as little as 25% of its long side" in note and "middle 4:1" in note, note
    assert "2%" not in note


def test_byte_for_byte_copies_are_said_naming_both_files(dog_photos, tmp_path):
    folder = _folder(dog_photos, tmp_path)
    shutil.copy(folder / "02.jpg", folder / "zz.jpg")
    examples, said = _load(folder)
    assert len(examples) == 6                    # said, not dropped: the user decides which goes
    copies = [w for w in said if "zz.jpg" in w]
    assert copies and "02.jpg" in copies[0] and "byte for byte" in copies[0], said


def test_one_picture_under_two_captions_is_no_copy(dog_photos, tmp_path):
    folder = _folder(dog_photos, tmp_path)
    shutil.copy(folder / "02.jpg", folder / "zz.jpg")
    (folder / "zz.txt").write_text("a sks dog, another caption")
    _, said = _load(folder, captions=True)
    assert not any("copy" in w for w in said), said


def test_a_photo_transparent_all_over_is_skipped_with_a_warning(dog_photos, tmp_path):
    folder = _folder(dog_photos, tmp_path)
    Image.new("RGBA", (64, 64), (30, 160, 30, 0)).save(folder / "clear.png")
    examples, said = _load(folder)
    assert [e.path.name for e in examples] == sorted(p.name for p in dog_photos.iterdir())
    assert any("clear.png: transparent all over" in w for w in said), said


def test_a_settings_files_bad_value_names_its_key_and_the_file(tmp_path):
    mine = tmp_path / "my.yaml"
    mine.write_text("rank: 0\n")
    base = dict(model="toy", instance_dir="photos", instance_prompt="a sks dog", output="out")
    with pytest.raises(UserError, match=r"^--config .*my\.yaml: rank 0: must be from 1 to 1024$"):
        build_config(str(mine), base).validate()
    with pytest.raises(UserError, match=r"^--rank 0: must be from 1 to 1024$"):      # a flag's is the flag's
        build_config(None, {**base, "rank": 0}).validate()
    mine.write_text("rank: 8\n")
    with pytest.raises(UserError, match=r"^--rank 0: "):         # the flag over the file's value
        build_config(str(mine), {**base, "rank": 0}).validate()


def test_a_settings_files_bad_value_names_the_file_on_the_command_line(tmp_path):
    mine = tmp_path / "my.yaml"
    mine.write_text("rank: 0\n")
    code, _, err = run_cli("train", "--config", mine, "--model", "toy", "--instance-dir", tmp_path,
                           "--instance-prompt", "a sks dog", "--output", tmp_path / "out")
    assert code == 2 and err.strip() == f"error: --config {mine}: rank 0: must be from 1 to 1024", err


def test_a_misspelt_shipped_preset_is_answered_with_the_near_one():
    with pytest.raises(UserError, match=r"sd15-lroa: no such file or shipped preset; did you mean sd15-lora\? \(shipped: "):
        preset_file("sd15-lroa")


@pytest.mark.parametrize("habit", ["--use_ema", "--use-ema", "--ema", "--ema_decay"])
def test_peers_ema_flags_are_answered_truthfully(habit):
    code, _, err = run_cli("train", habit)
    assert code == 2 and "no EMA copy of the weights is kept here" in err and "Did you mean" not in err, err
    assert len(err.strip().splitlines()) == 1


def _fake_generate(stop_at: int):
    """generate() that makes one plain image per index, and is interrupted half-way through call ``stop_at``."""
    calls = []

    def generate(pipeline, params, autocast=None, task=None):
        calls.append(params.seed)
        task.advance(0.5 * params.batch_size)              # sampling steps count on the bar as they go
        if len(calls) == stop_at:
            raise KeyboardInterrupt
        task.advance(0.5 * params.batch_size)
        return [SimpleNamespace(image=Image.new("RGB", (8, 8), "gray"), infotext="a square\nSteps: 2, Seed: 0")
                for _ in range(params.batch_size)]
    return generate


def test_ctrl_c_while_making_class_images_says_what_is_kept_and_counts_only_written_ones(tmp_path, monkeypatch):
    monkeypatch.setattr(prior, "generate", _fake_generate(stop_at=3))
    events = []
    folder = tmp_path / "class_images"
    with progress.subscribed(events.append), pytest.raises(KeyboardInterrupt) as stopped:
        prior.ensure_class_images(None, GenerationParams("a square"), folder, 5, batch=1)
    assert str(stopped.value) == (f"interrupted while making class images: 2 of 5 kept in {folder}; "
                                  "run the same command again to go on")
    assert getattr(stopped.value, "checkpoint", "none") is None      # no 'resume with: --resume latest' line
    end, = [e for e in events if e.kind == "end" and e.task == "class images"]
    assert end.completed == 2 == len(list(folder.glob("class-*.png")))    # not 2.5: the third is not written


def test_ctrl_c_while_making_class_images_is_said_on_the_command_line(tiny_sd1, dog_photos, tmp_path, monkeypatch):
    monkeypatch.setattr(prior, "generate", _fake_generate(stop_at=2))
    out = tmp_path / "run"
    code, _, err = run_cli("train", "--model", tiny_sd1, "--instance-dir", dog_photos, "--instance-prompt", "a sks dog",
                           "--class-prompt", "a dog", "--num-class-images", "3", "--class-batch-size", "1",
                           "--output", out, *FAST)
    assert code == 130
    assert err.rstrip().splitlines()[-1] == (f"interrupted while making class images: 1 of 3 kept in "
                                             f"{out / 'class_images'}; run the same command again to go on"), err
    assert err.endswith("\n") and len(list((out / "class_images").glob("class-*.png"))) == 1


def test_a_damaged_class_image_is_said_through_the_warn_given(tmp_path, monkeypatch):
    monkeypatch.setattr(prior, "generate", _fake_generate(stop_at=0))
    folder = tmp_path / "class_images"
    folder.mkdir()
    (folder / "class-00000.png").write_bytes(b"not a png")
    said = []
    prior.ensure_class_images(None, GenerationParams("a square"), folder, 1, batch=1, warn=said.append)
    assert len(said) == 1 and "class-00000.png is damaged" in said[0], said
