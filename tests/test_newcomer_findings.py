"""What a newcomer following the README ran into: the demo writing over a folder's files, a Ctrl-C'd
generate saying only 'aborted', an interrupted --overwrite run's model not found, progress lines whose
count and percent disagreed, and A1111's flag names answered with the wrong suggestion."""
import json
import shutil

import pytest

from conftest import run_cli

TOY = "toy"


# ----- dreambooth demo --output: never over a folder of the user's -----------------------------------

def test_demo_refuses_a_folder_of_other_files_before_writing(tmp_path):
    folder = tmp_path / "demo_existing"
    folder.mkdir()
    (folder / "after.png").write_text("mine")
    (folder / "notes.txt").write_text("notes")
    code, _, err = run_cli("demo", "--steps", "5", "--output", folder)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"--output {folder}: holds files and no mark of an earlier demo (after.png, notes.txt)" in err
    assert (folder / "after.png").read_text() == "mine"
    assert sorted(p.name for p in folder.iterdir()) == ["after.png", "notes.txt"]     # nothing added


class Stop(Exception):
    pass


def test_demo_writes_again_into_its_own_folder(tmp_path, monkeypatch):
    """The README's first command, run twice, works without a flag: the demo marks its folder before it
    writes anything (so an interrupted demo's folder is its own too); a demo's folder from before the
    mark is known by its metrics.json."""
    from dreambooth.toy import demo

    def stop(*args, **kwargs):
        raise Stop
    monkeypatch.setattr(demo, "load_generation_pipeline", stop)      # stop after the pictures, before sampling
    out = tmp_path / "dreambooth-demo"
    for _ in range(2):
        with pytest.raises(Stop):
            demo.run_demo(out, log=lambda *_: None)
    assert (out / demo.DEMO_MARK).is_file() and (out / "instance_images").is_dir()

    older = tmp_path / "older-demo"                                  # written before the mark existed
    older.mkdir()
    (older / "after.png").write_text("an earlier demo's")
    (older / "metrics.json").write_text(json.dumps({"subject": {}, "new_backgrounds": [], "before": {}, "after": {}}))
    demo.check_demo_output(older)
    (older / "metrics.json").write_text(json.dumps({"clip_i": 0.8}))     # dreambooth evaluate's: not a demo's
    with pytest.raises(Exception, match="no mark of an earlier demo"):
        demo.check_demo_output(older)


# ----- dreambooth generate, interrupted: what is kept -------------------------------------------------

def test_an_interrupted_generate_says_how_many_images_it_kept(tmp_path, monkeypatch):
    import dreambooth.cli.generate as cli_generate
    out = tmp_path / "out"
    code, _, err = run_cli("generate", "--model", TOY, "--prompt", "a red square", "--steps", "2", "--output", out)
    assert code == 0, err                                     # an earlier run's image: not counted as this run's
    real = cli_generate.generate

    def interrupted_after_two(pipeline, params, output, **kwargs):
        real(pipeline, params.replace(batch_count=2), output, **kwargs)
        raise KeyboardInterrupt
    monkeypatch.setattr(cli_generate, "generate", interrupted_after_two)
    code, _, err = run_cli("generate", "--model", TOY, "--prompt", "a red square", "--steps", "2",
                           "--batch-count", "50", "--output", out)
    assert code == 130, err
    assert err.strip().splitlines()[-1] == f"interrupted: 2 images written to {out}/ (kept)", err
    assert "aborted" not in err and len(list(out.glob("*.png"))) == 3


# ----- --model of a run interrupted while it replaced an output ---------------------------------------

@pytest.mark.parametrize("lora", [False, True])
def test_an_unfinished_runs_output_names_the_kept_model(tmp_path, lora):
    from dreambooth.models.specs import TOY_MODEL_DIR
    from dreambooth.outputs import LORA_WEIGHTS_FILE, TRAINING_ARGS_FILE
    run = tmp_path / "run1"
    (run / "checkpoints" / "checkpoint-000002").mkdir(parents=True)
    (run / "class_images").mkdir()
    if lora:                       # the LoRA output --overwrite moved aside: its files, no pipeline
        (run / ".previous").mkdir()
        (run / ".previous" / LORA_WEIGHTS_FILE).write_bytes(b"")
        (run / ".previous" / TRAINING_ARGS_FILE).write_text(json.dumps({"model": TOY}))
    else:
        shutil.copytree(TOY_MODEL_DIR, run / ".previous")
    code, _, err = run_cli("generate", "--model", run, "--prompt", "a red square", "--steps", "1",
                           "--output", tmp_path / "out")
    assert code == 2 and "Traceback" not in err, err
    use = "--lora" if lora else "--model"          # a LoRA output is given as a LoRA
    said = (f"holds an unfinished training run, and the model it was replacing is kept in "
            f"{run / '.previous'}: use {use} {run / '.previous'}, or finish the run with "
            f"`dreambooth train ... --output {run} --resume latest`")
    assert f"--model {run}: {said}" in err
    if lora:                       # given as --lora, the same line
        code, _, err = run_cli("generate", "--model", TOY, "--lora", run, "--prompt", "a red square", "--steps", "1",
                               "--output", tmp_path / "out")
        assert code == 2 and f"--lora {run}: {said}" in err, err
    if not lora:                   # as it says: the kept model generates
        code, _, err = run_cli("generate", "--model", run / ".previous", "--prompt", "a red square", "--steps", "1",
                               "--output", tmp_path / "out")
        assert code == 0, err


def test_a_run_stopped_before_its_first_model_says_how_to_finish_it(tmp_path):
    run = tmp_path / "run1"
    (run / "checkpoints" / "checkpoint-000002").mkdir(parents=True)
    code, _, err = run_cli("generate", "--model", run, "--prompt", "a red square", "--output", tmp_path / "out")
    assert code == 2 and f"--model {run}: holds an unfinished training run (checkpoints, no model yet)" in err, err


# ----- progress: a count and a percent that agree -----------------------------------------------------

@pytest.mark.parametrize("completed, total, said", [
    (3.44, 4, "3/4 (86%)"),        # was 3/4 (86%): already agreed
    (1.92, 8, "1/8 (24%)"),        # was 2/8 (24%): the second image counted before it was made
    (1.64, 2, "1/2 (82%)"),        # was 2/2 (82%)
    (3.999, 4, "3/4 (99%)"),       # was 4/4 (100%) with one still under way
    (19.5, 20, "19/20 (97%)"),
    (sum([0.1] * 10), 1, "1/1 (100%)"),   # step fractions that add up a hair short of whole
    (0, 0, "0/0 (0%)"),
])
def test_a_progress_count_and_its_percent_agree(completed, total, said):
    from dreambooth.progress import ProgressEvent
    event = ProgressEvent("advance", "class images", 1, completed, total)
    assert f"{event.done}/{event.total:.0f} ({event.percent}%)" == said


# ----- A1111's and diffusers' names for generate's flags ----------------------------------------------

@pytest.mark.parametrize("typed, ours", [
    ("--n-iter", "--batch-count"), ("--n_iter", "--batch-count"), ("--cfg-scale", "--cfg"),
    ("--guidance_scale", "--cfg"), ("--sampler-name", "--sampler"), ("--num-inference-steps", "--steps"),
    ("--negative_prompt", "--negative-prompt"), ("--batch_size", "--batch-size"), ("--denoising_strength", "--strength"),
    ("--outdir", "--output"), ("--H", "--height"), ("--enable_hr", "--hires"), ("--hr-scale", "--hires-scale"),
])
def test_a1111_flag_names_get_ours(typed, ours):
    code, _, err = run_cli("generate", typed, "4")
    assert code == 2 and f"No such option: {typed}; dreambooth generate calls it {ours}" in err, err
    assert "--init-image" not in err


def test_every_peer_name_maps_to_a_generate_flag():
    from dreambooth.cli.generate import generate_command
    from dreambooth.cli.peer_flags import GENERATE_PEER_FLAGS as PEER_FLAGS
    flags = {opt for param in generate_command.params for opt in param.opts}
    assert set(PEER_FLAGS.values()) <= flags
