"""A resume whose photos or settings differ from its checkpoint's (issue of the strangers' findings):
it goes on and says what differs, or refuses in one line what would load wrong tensors; the output's
lock answers before its checkpoints are looked at; what --resume latest skips or finds elsewhere is said."""
import json
import shutil

import pytest

from conftest import make_photos
from dreambooth import progress
from dreambooth.errors import UserError
from dreambooth.training.callbacks import TrainingCallback
from dreambooth.training.config import build_config
from dreambooth.training.trainer import train

NOT_EXACT = "from the checkpoint's: training goes on from it, but not exactly"


class StopAfterStep(TrainingCallback):
    def __init__(self, last: int = 4):
        self.last = last

    def on_step_end(self, run, step):
        if step.step == self.last:
            raise KeyboardInterrupt


def _common(model, photos, **more):
    return {**dict(model=str(model), instance_dir=str(photos), instance_prompt="a photo of sks dog", resolution=32,
                   max_steps=6, checkpoint_every=3, keep_checkpoints=0, export_kohya=False, method="lora",
                   learning_rate=1e-3), **more}


def _stopped(common: dict, out) -> None:
    """A run interrupted after its step-3 checkpoint."""
    with pytest.raises(KeyboardInterrupt):
        train(build_config(None, dict(common, output=str(out))), callbacks=[StopAfterStep()])


def _resumed(common: dict, out, **changes):
    """The run resumed from its newest checkpoint, with what it said (its warnings, joined)."""
    said = []
    with progress.subscribed(said.append):
        result = train(build_config(None, dict(common, **changes, output=str(out), resume="latest")))
    result.said = " ".join(e.message for e in said if e.kind == "message" and e.message)
    return result


def _differs(result) -> list[str]:
    return [w for w in result.warnings if NOT_EXACT in w]


def _forget(out, key: str) -> None:
    """The checkpoints as a version that did not record ``key`` wrote them."""
    for settings in (out / "checkpoints").glob("checkpoint-*/settings.json"):
        saved = json.loads(settings.read_text())
        del saved[key]
        settings.write_text(json.dumps(saved))
        (settings.parent / "manifest.json").unlink()        # (its sizes would call the edited file damaged)


def test_photos_removed_or_fewer_class_images_go_on_from_a_new_order_and_say_so(tiny_sd1, tmp_path):
    photos = make_photos(tmp_path / "photos")
    common = _common(tiny_sd1, photos)
    _stopped(common, tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    for photo in sorted(photos.iterdir())[1:]:
        photo.unlink()
    resumed = [_resumed(common, tmp_path / name) for name in ("a", "b")]
    assert resumed[0].steps == 6 and resumed[0].losses == resumed[1].losses      # the new order: the checkpoint's
    assert f"this run's set of photos in --instance-dir {photos} (1, was 5) differs" in _differs(resumed[0])[0]
    # with prior preservation, --num-class-images lowered
    prior = _common(tiny_sd1, make_photos(tmp_path / "more"), class_prompt="a photo of dog", num_class_images=3,
                    class_steps=1)
    _stopped(prior, tmp_path / "prior")
    result = _resumed(prior, tmp_path / "prior", num_class_images=1)
    assert result.steps == 6
    said = _differs(result)
    assert len(said) == 1 and "num_class_images 1 (was 3)" in said[0] and "class images" not in said[0]


def test_a_changed_alpha_is_refused_unless_the_checkpoint_recorded_none(tiny_sd1, dog_photos, tmp_path):
    common = _common(tiny_sd1, dog_photos, rank=4, alpha=4.0)
    out = tmp_path / "run"
    _stopped(common, out)
    with pytest.raises(UserError, match=r"checkpoint was made with alpha=4.0, this run has alpha=8.0; use the same"):
        _resumed(common, out, alpha=8.0)
    _forget(out, "alpha")                    # an older checkpoint: nothing to compare with
    assert _resumed(common, out, alpha=8.0).steps == 6


def test_an_alpha_given_as_a_whole_number_is_the_same_alpha(tiny_sd1, dog_photos, tmp_path):
    common = _common(tiny_sd1, dog_photos, rank=4, max_steps=4)
    _stopped(dict(common, alpha=4.0), tmp_path / "run")
    assert not _differs(_resumed(common, tmp_path / "run", alpha=4))


def test_settings_that_change_a_steps_math_are_said_when_changed_on_resume(tiny_sd1, dog_photos, tmp_path):
    common = _common(tiny_sd1, dog_photos, max_steps=4)
    _stopped(common, tmp_path / "run")
    changes = dict(weight_decay=0.1, max_grad_norm=0.5, snr_gamma=5.0, adam_beta1=0.8, adam_beta2=0.99,
                   adam_epsilon=1e-6, lora_dropout=0.1, offset_noise=0.1, caption_dropout=0.1)
    said = _differs(_resumed(common, tmp_path / "run", **changes))
    assert len(said) == 1
    for key, value in changes.items():
        assert f"{key} {value} (was " in said[0], said


def test_photos_are_compared_by_their_fingerprint_not_their_folder(tiny_sd1, dog_photos, tmp_path):
    """The same photos in another folder are the same run, bit for bit, and nothing is said; a photo edited
    in place is said. A checkpoint of a version without fingerprints compares the folders as before."""
    common = _common(tiny_sd1, dog_photos, max_steps=4)
    for name in ("same", "moved", "edited", "older"):
        _stopped(common, tmp_path / name)
    moved = shutil.copytree(dog_photos, tmp_path / "moved-photos")
    same = _resumed(common, tmp_path / "same")
    elsewhere = _resumed(common, tmp_path / "moved", instance_dir=str(moved))
    assert not _differs(elsewhere) and elsewhere.losses == same.losses
    edited = shutil.copytree(dog_photos, tmp_path / "edited-photos")
    first, second = sorted(edited.iterdir())[:2]
    first.write_bytes(second.read_bytes())              # a photo replaced by another, same name
    _stopped(dict(common, instance_dir=str(edited)), tmp_path / "edited-run")
    first.write_bytes((dog_photos / first.name).read_bytes())
    said = _differs(_resumed(common, tmp_path / "edited-run", instance_dir=str(edited)))
    assert len(said) == 1 and f"set of photos in --instance-dir {edited} (edited)" in said[0]
    _forget(tmp_path / "older", "photos")
    said = _differs(_resumed(common, tmp_path / "older", instance_dir=str(moved)))
    assert len(said) == 1 and f"instance_dir {moved} (was " in said[0]


def test_a_resume_of_an_output_being_written_names_the_run_writing_it(tiny_sd1, dog_photos, tmp_path):
    from dreambooth.outputs import output_lock, take_lock
    out = tmp_path / "run"
    out.mkdir()
    held, _ = take_lock(output_lock(out))        # the first run, before its first checkpoint
    try:
        with pytest.raises(UserError, match=r"another dreambooth train is writing it \(pid \d+\)"):
            train(build_config(None, dict(_common(tiny_sd1, dog_photos), output=str(out), resume="latest")))
    finally:
        held.close()


def test_resume_latest_names_the_checkpoints_an_interrupted_overwrite_set_aside(tiny_sd1, dog_photos, tmp_path):
    out = tmp_path / "run"
    (out / ".previous" / "checkpoints" / "checkpoint-000003").mkdir(parents=True)
    with pytest.raises(UserError) as refused:
        train(build_config(None, dict(_common(tiny_sd1, dog_photos), output=str(out), resume="latest")))
    said = str(refused.value)
    assert "\n" not in said and f"no checkpoint in {out / 'checkpoints'}; {out / '.previous'} holds the output an " \
        "interrupted --overwrite run replaced, with its checkpoints: move it back" in said, said


def test_a_damaged_checkpoint_skipped_is_said_again_in_the_closing_summary(tiny_sd1, dog_photos, tmp_path):
    common = _common(tiny_sd1, dog_photos, checkpoint_every=2)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):          # checkpoints at steps 2 and 4, stopped at step 5
        train(build_config(None, dict(common, output=str(out))), callbacks=[StopAfterStep(5)])
    newest = out / "checkpoints" / "checkpoint-000004"
    (newest / "optimizer.pt").unlink()
    result = _resumed(common, out)
    assert any(f"skipping {newest}, which is damaged" in w for w in result.warnings), result.warnings


def test_a_folder_an_earlier_checkpoint_recorded_as_typed_is_found_from_another_folder(tmp_path, monkeypatch):
    """Checkpoints before 2026-12-07 recorded ``--instance-dir photos`` as typed: resumed from another working
    folder as ``../photos`` (or absolute), the same folder by its last names; another folder is not."""
    from dreambooth.training.resume_settings import same_setting
    (tmp_path / "run" / "photos").mkdir(parents=True)
    (tmp_path / "other" / "photos").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert same_setting("instance_dir", "photos", "../run/photos")
    assert same_setting("model", "./run/photos/", str(tmp_path / "run" / "photos"))
    assert not same_setting("instance_dir", "photos", "../run")                  # not the folder's own name
    assert not same_setting("instance_dir", "../photos", "../run/photos")        # what '..' meant is not known
    assert not same_setting("learning_rate", "photos", "../run/photos")          # folders only
