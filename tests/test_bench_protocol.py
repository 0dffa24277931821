"""dreambooth bench: what it may replace, the identifier and class the model was trained with, the
protocol's settings from Python as from the CLI, a note where a run is off the protocol, SIGTERM."""
import json
import shutil
import subprocess
import sys
import textwrap

import pytest

from conftest import make_photos, run_cli


@pytest.fixture(scope="module")
def eval_models(tmp_path_factory):
    from dreambooth.testing.eval_models import save_tiny_eval_models
    return save_tiny_eval_models(tmp_path_factory.mktemp("bench-protocol-eval"))


def test_a_report_json_does_not_make_a_folder_a_bench_runs(tmp_path, dog_photos, tiny_sd1):
    from dreambooth.errors import UserError
    from dreambooth.evaluation.dreambench import BENCH_MARK, run_bench
    project = tmp_path / "project"
    make_photos(project / "images")                         # the user's own photos and report
    (project / "report.json").write_text('{"my": "own report"}')
    code, _, err = run_cli("bench", "--model", tiny_sd1, "--real", dog_photos, "--class", "square",
                           "--kind", "object", "--output", project, "--overwrite")
    assert code == 2 and err.count("\n") == 1, err
    assert "holds report.json, images that no dreambooth bench run wrote" in err and BENCH_MARK in err, err
    assert err.rstrip().endswith(f"if an older dreambooth bench wrote them, mark them its: touch {project / BENCH_MARK}")
    with pytest.raises(UserError, match="no dreambooth bench run wrote"):
        run_bench(None, None, dog_photos, "square", "object", project, overwrite=True)
    assert len(list((project / "images").iterdir())) == 5
    assert (project / "report.json").read_text() == '{"my": "own report"}'
    (project / BENCH_MARK).touch()                           # the bench's own mark: an earlier run, replaceable
    code, _, err = run_cli("bench", "--model", tiny_sd1, "--real", dog_photos, "--class", "square",
                           "--kind", "object", "--output", project)
    assert code == 2 and "from an earlier run; pass --overwrite" in err, err


def test_the_identifier_and_class_come_from_the_training_record(tiny_sd1, dog_photos, eval_models, tmp_path):
    dino, clip = eval_models
    model = tmp_path / "run"
    shutil.copytree(tiny_sd1, model)                        # a full training output, trained on 'a zwx dog'
    (model / "training_args.json").write_text(json.dumps(
        {"model": str(tiny_sd1), "instance_prompt": "a zwx dog", "class_prompt": "a photo of a dog"}))
    out = tmp_path / "bench"
    code, stdout, err = run_cli("bench", "--model", model, "--real", dog_photos, "--kind", "live", "--max-prompts", "2",
                                "--images-per-prompt", "1", "--steps", "1", "--size", "32",
                                "--dino-model", dino, "--clip-model", clip, "--output", out)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["identifier"] == "zwx" and report["class"] == "dog" and report["prompts"] == 2
    assert [r["prompt"] for r in report["per_prompt"]] == ["a zwx dog in the jungle", "a zwx dog in the snow"]
    assert report["per_prompt"][0]["clip_t_prompt"] == "a dog in the jungle"
    md = (out / "report.md").read_text()
    assert "**Off the paper's protocol:** 2 of 25 prompts, images per prompt 1 (protocol 4), steps 1 (protocol 50)" in md
    assert f"DINO model {dino} (protocol facebook/dino-vits16)" in md and "size 32x32 (protocol 64x64)" in md
    assert report["settings"]["clip_skip"] == 1 and "clip_skip `1`" in md
    code, _, err = run_cli("bench", "--model", model, "--real", dog_photos, "--kind", "live", "--max-prompts", "1",
                           "--identifier", "sks", "--images-per-prompt", "1", "--steps", "1", "--size", "32",
                           "--dino-model", dino, "--clip-model", clip, "--output", out, "--overwrite")
    assert code == 0, err                                     # given and contradicted: said, done as given
    assert "--identifier sks: the model was trained with 'zwx'" in err, err
    assert json.loads((out / "report.json").read_text())["per_prompt"][0]["prompt"] == "a sks dog in the jungle"
    # a LoRA given as its output's kohya file (what the training summary says to copy) reads the same record
    from dreambooth.evaluation.trained import trained_subject
    (model / "run.safetensors").write_bytes(b"")
    assert trained_subject(model / "run.safetensors").identifier == "zwx"


def test_python_runs_at_the_protocol_as_the_cli_does(dog_photos, eval_models, tmp_path, monkeypatch):
    import dreambooth.evaluation.dreambench as bench
    from dreambooth.evaluation import Evaluator
    from dreambooth.evaluation.report import render_markdown
    seen = []

    class Stop(Exception):
        pass

    def fake_generate(pipeline, params, *args, **kwargs):
        seen.append(params)
        raise Stop
    monkeypatch.setattr(bench, "generate", fake_generate)
    with pytest.raises(Stop):
        bench.run_bench(None, None, dog_photos, "dog", "live", tmp_path / "out", evaluator=Evaluator(*eval_models))
    assert (seen[0].steps, seen[0].cfg_scale, seen[0].seed, seen[0].batch_size) == (50, 7.5, 0, 4)
    assert bench.off_protocol(bench.protocol_params(), 4, 25, 25) == []
    report = {"class": "dog", "kind": "live", "identifier": "sks", "prompts": 25, "images_per_prompt": 4,
              "seeds": [0, 1, 2, 3], "metrics": {}, "real_reference": {"dino": 0.5, "clip_i": 0.5},
              "models": {"dino": "d", "clip": "c"}, "per_prompt": []}
    assert "Off the paper's protocol" not in render_markdown(report)


SIGTERM_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import dreambooth.evaluation.dreambench as bench
    from dreambooth.evaluation import Evaluator
    photos, dino, clip = sys.argv[1:4]

    def killed_midway(pipeline, params, folder, **kwargs):      # half a run written, then a SIGTERM
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "00001-0.png").write_bytes(b"half")
        os.kill(os.getpid(), signal.SIGTERM)
        raise SystemExit("no SIGTERM came")
    bench.generate = killed_midway
    for out in sys.argv[4:]:
        try:
            bench.run_bench(None, None, photos, "dog", "live", out, evaluator=Evaluator(dino, clip), overwrite=True)
        except bench.Terminated:
            print("terminated", out)
""")


def test_sigterm_puts_things_back_as_ctrl_c_does(dog_photos, eval_models, tmp_path):
    from dreambooth.evaluation.dreambench import BENCH_MARK
    earlier, fresh = tmp_path / "earlier", tmp_path / "fresh"
    (earlier / "images" / "00-a-dog").mkdir(parents=True)
    (earlier / "images" / "00-a-dog" / "00001-0.png").write_bytes(b"old")
    (earlier / "report.json").write_text('{"old": 1}')
    (earlier / BENCH_MARK).touch()
    done = subprocess.run([sys.executable, "-c", SIGTERM_SCRIPT, dog_photos, *eval_models, earlier, fresh],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("terminated") == 2
    assert sorted(p.name for p in earlier.iterdir()) == [BENCH_MARK, "images", "report.json"]
    assert (earlier / "report.json").read_text() == '{"old": 1}'
    assert [p.read_bytes() for p in (earlier / "images").rglob("*.png")] == [b"old"]
    assert list(fresh.iterdir()) == []                     # a first run leaves nothing, no mark: a rerun just runs
