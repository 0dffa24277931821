"""Training on several processes (``accelerate launch``) and exact resume (issue 30, item 6).

Real runs of ``dreambooth train`` on the toy model (32 px), two processes on the CPU over gloo,
started the way users start them: ``accelerate launch --config_file configs/accelerate/multi-gpu.yaml
--num_processes 2`` (the shipped DDP config; accelerate's ``--cpu`` launcher would start one process,
the multi-GPU one starts torchrun, and the trainer itself picks the CPU and gloo). Each run is a fresh
process, so nothing that lives in a process's globals can make a resume look exact when it is not.

* two processes x batch 1 train on what one process x batch 2 trains on: the same class images
  (each process made half of them), per-step losses within a relative 1e-5 (measured: 2e-7, float
  reduction order) and weights within 1e-4 (measured: 6e-6); with the text encoder called around
  its DDP wrapper the text encoder alone differs by 5e-2 and the losses by 4%;
* a two-process run killed (SIGKILL, no clean-up) after a checkpoint and resumed on two processes
  ends bit for bit where the uninterrupted one does, losses included;
* one process, killed with ``kill -9`` from outside while it runs, resumes bit for bit (LoRA on
  the UNet and the text encoder, LoRA dropout, the toy backdrops, prior preservation).
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from dreambooth.models import TOY_MODEL_DIR
from dreambooth.training.config import PRESET_DIR

pytestmark = pytest.mark.skipif(not (TOY_MODEL_DIR / "model_index.json").exists(),
                                reason="the toy model's weights are not in this checkout")

ACCELERATE_CONFIG = PRESET_DIR / "accelerate" / "multi-gpu.yaml"     # configs/accelerate/multi-gpu.yaml
LOSS_RTOL = 1e-5        # 2 processes x batch 1 against 1 process x batch 2: per-step losses
WEIGHT_ATOL = 1e-4      # ... and the final weights
TIMEOUT = 240

# The toy preset (full fine-tuning, text encoder with the identifier's offset, caption dropout, the
# recoloured backdrops) with prior preservation, small.
TOY = ["--model", "toy", "--instance-prompt", "a sks square", "--class-prompt", "a square",
       "--num-class-images", "4", "--class-steps", "2", "--class-batch-size", "2", "--max-steps", "8", "--checkpoint-every", "3"]

# Killed with SIGKILL in process DIE_RANK (0 by default) right after the step given by DIE_AT_STEP (the launcher then ends
# the other process): a kill -9 at a known point, after a checkpoint and before the end. Without
# DIE_AT_STEP, dreambooth as it is.
DIE = """
import os, signal, sys
from dreambooth.cli import train as train_cli
from dreambooth.training.callbacks import TrainingCallback

class Die(TrainingCallback):
    def on_step_end(self, run, step):
        if step.step == int(os.environ.get("DIE_AT_STEP", -1)) and \
                run.accelerator.process_index == int(os.environ.get("DIE_RANK", 0)):
            os.kill(os.getpid(), signal.SIGKILL)

real = train_cli.train
train_cli.train = lambda config, callbacks=(), transforms=(): real(config, [*callbacks, Die()], transforms)
from dreambooth.cli.main import main
main(sys.argv[1:])
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp: Path, **extra) -> dict:
    # no accelerate config of the user's; the CPU and gloo even on a machine with one GPU (where two
    # processes would share it, which NCCL refuses); torch's launcher leaves its log folders in TMPDIR
    (tmp / "tmp").mkdir(exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", DREAMBOOTH_NO_PROGRESS="1", PYTHONUNBUFFERED="1",
               HF_HOME=str(tmp / "hf-home"), CUDA_VISIBLE_DEVICES="", TMPDIR=str(tmp / "tmp"), **extra)
    env.pop("RANK", None)
    return env


def _command(processes: int, script: Path | None = None, config: Path = ACCELERATE_CONFIG) -> list[str]:
    target = [str(script)] if script else ["-m", "dreambooth"]
    if processes == 1:
        return [sys.executable, *target]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
            "--num_processes", str(processes), "--main_process_ip", "127.0.0.1",
            "--main_process_port", str(_free_port()), *target]


def train(tmp: Path, processes: int, *args, script: Path | None = None, env: dict | None = None,
          check: bool = True, config: Path = ACCELERATE_CONFIG) -> subprocess.CompletedProcess:
    """``dreambooth train`` on ``processes`` processes (``accelerate launch`` with ``config``)."""
    run = subprocess.run([*_command(processes, script, config), "train", *map(str, args)], env=_env(tmp, **(env or {})),
                         capture_output=True, text=True, timeout=TIMEOUT)
    if check:
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run


def weights(output: Path) -> dict[str, torch.Tensor]:
    """Every tensor the output holds: a LoRA file, or the pipeline folder's components."""
    lora = output / "pytorch_lora_weights.safetensors"
    if lora.exists():
        return load_file(str(lora))
    return {f"{f.parent.name}.{k}": v for f in sorted(output.glob("*/*.safetensors")) for k, v in load_file(str(f)).items()}


def losses(output: Path) -> list[float]:
    return json.loads((output / "training_args.json").read_text())["losses"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    from dreambooth.toy.demo import write_instance_images
    from dreambooth.toy.world import DEMO_SUBJECT
    folder = tmp_path_factory.mktemp("photos")
    write_instance_images(DEMO_SUBJECT, folder)
    return folder


@pytest.fixture(scope="module")
def two(tmp_path_factory, photos):
    """The toy preset on 2 processes x batch 1, uninterrupted."""
    tmp = tmp_path_factory.mktemp("two")
    run = train(tmp, 2, *TOY, "--batch-size", "1", "--instance-dir", photos, "--output", tmp / "out")
    return tmp / "out", run.stdout + run.stderr


def test_two_processes_write_one_output_and_split_the_class_images(two):
    out, log = two
    # each process made its half of the missing class images ...
    assert "class images: process 0 of 2 makes 2 of the 4 missing" in log, log
    assert "class images: process 1 of 2 makes 2 of the 4 missing" in log, log
    assert sorted(p.name for p in (out / "class_images").iterdir()) == [f"class-0000{i}.png" for i in range(4)]
    # ... and one process wrote the output: one summary, one model, nothing half-written
    assert log.count("trained 8 steps") == 1, log
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "class_images", "model_index.json", "scheduler",
                                                     "text_encoder", "tokenizer", "training_args.json", "unet", "vae"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-000006", "checkpoint-000008"]
    args = json.loads((out / "training_args.json").read_text())
    assert args["num_processes"] == 2 and args["global_batch_size"] == 2 and len(args["losses"]) == 8
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]        # no temporary files left
    said = [line for line in log.splitlines() if line.startswith("warning:") or line.startswith("toy backdrops")]
    assert said and len(said) == len(set(said)), said          # what both processes would say, said once


def test_a_failure_of_one_process_is_said_once_and_by_name(two, photos, tmp_path):
    """A check only the first process makes (the output is not to be replaced) and one every process
    makes alike: one line each, not each process's and not a peer's "Connection closed" as a bug."""
    out, _ = two
    run = train(tmp_path, 2, *TOY, "--instance-dir", photos, "--output", out, check=False)
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert run.returncode != 0 and len(errors) == 1 and "exists and is not empty" in errors[0], run.stderr[-3000:]
    run = train(tmp_path, 2, *TOY, "--instance-dir", photos, "--output", tmp_path / "new", "--learning-rate", "-1",
                check=False)
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert run.returncode != 0 and len(errors) == 1 and "--learning-rate" in errors[0], run.stderr[-3000:]


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_the_processes_stop_when_their_launcher_is_killed(photos, tmp_path):
    """kill -9 of accelerate launch: its processes stop (SIGTERM from the kernel, taken as Ctrl-C)
    rather than train on unseen, holding the output."""
    out, workers = tmp_path / "out", []
    launcher = subprocess.Popen([*_command(2), "train", *map(str, TOY), "--max-steps", "400", "--instance-dir",
                                 str(photos), "--output", str(out)], env=_env(tmp_path),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + TIMEOUT
        while not (out / "checkpoints").is_dir():
            assert launcher.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
            time.sleep(0.05)
        workers = [w for w in _children(launcher.pid) if b"dreambooth" in Path(f"/proc/{w}/cmdline").read_bytes()]
        assert len(workers) == 2, workers
        launcher.kill()
        launcher.wait()
        deadline = time.time() + 60
        while [w for w in workers if Path(f"/proc/{w}").exists() and "Z" not in _state(w)] and time.time() < deadline:
            time.sleep(0.2)
        alive = [w for w in workers if Path(f"/proc/{w}").exists() and "Z" not in _state(w)]
    finally:
        launcher.kill()
        for w in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(w, signal.SIGKILL)
    assert not alive, f"processes {alive} trained on after their launcher was killed"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def test_two_processes_by_one_match_one_process_by_two(two, photos, tmp_path):
    out2, _ = two
    out1 = tmp_path / "out"
    train(tmp_path, 1, *TOY, "--batch-size", "2", "--instance-dir", photos, "--output", out1)
    # the same class images whatever the number of processes (image i: seed + i)
    for i in range(4):
        name = f"class-0000{i}.png"
        assert np.array_equal(np.asarray(Image.open(out1 / "class_images" / name)),
                              np.asarray(Image.open(out2 / "class_images" / name))), name
    # the same examples, noise and timesteps: the losses and weights agree up to float reduction order
    a, b = losses(out1), losses(out2)
    assert len(a) == len(b) == 8
    assert np.allclose(a, b, rtol=LOSS_RTOL, atol=0), (a, b)
    wa, wb = weights(out1), weights(out2)
    assert wa.keys() == wb.keys() and any(k.startswith("text_encoder.") for k in wa)
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert worst < WEIGHT_ATOL, worst
    # and training moved the text encoder (its gradients were synced, not absent)
    base = weights(TOY_MODEL_DIR)
    assert any(not torch.equal(base[k], wb[k]) for k in wb if k.startswith("text_encoder."))


def test_two_processes_killed_and_resumed_end_bit_for_bit(two, photos, tmp_path):
    straight, _ = two
    out, die = tmp_path / "out", tmp_path / "die.py"
    die.write_text(DIE)
    common = [*TOY, "--batch-size", "1", "--instance-dir", photos, "--class-dir", straight / "class_images",
              "--output", out]
    killed = train(tmp_path, 2, *common, script=die, env={"DIE_AT_STEP": "5"}, check=False)
    assert killed.returncode != 0 and "please report it" not in killed.stderr, killed.stderr[-3000:]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["checkpoint-000003"]
    assert not (out / "model_index.json").exists()
    resumed = train(tmp_path, 2, *common, "--resume", "latest")
    assert (resumed.stdout + resumed.stderr).count("resumed from") == 1
    assert losses(out) == losses(straight)
    a, b = weights(straight), weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_lost_process_keeps_the_checkpoints_of_an_overwrite_run(two, photos, tmp_path):
    """Process 1 killed in a run replacing an output: the first process stops (its peer lost, or the
    launcher's SIGTERM) keeping the new checkpoint and the old output aside, for --resume latest."""
    import shutil
    straight, _ = two
    out, die = tmp_path / "out", tmp_path / "die.py"
    shutil.copytree(straight, out)
    die.write_text(DIE)
    killed = train(tmp_path, 2, *TOY, "--batch-size", "1", "--instance-dir", photos, "--output", out, "--overwrite",
                   "--max-steps", "12", script=die, env={"DIE_AT_STEP": "4", "DIE_RANK": "1"}, check=False)
    assert killed.returncode != 0 and "please report it" not in killed.stderr, killed.stderr[-3000:]
    assert (out / "checkpoints" / "checkpoint-000003").is_dir(), killed.stderr[-3000:]
    assert (out / ".previous" / "model_index.json").is_file()
    assert "resume with:" in killed.stderr, killed.stderr[-3000:]


def test_one_process_kill_9_resumes_bit_for_bit(photos, tmp_path):
    """A LoRA on the UNet and the text encoder with LoRA dropout (torch's global RNG), the toy
    backdrops (pictures made per step, latents encoded per step) and prior preservation."""
    common = ["--model", "toy", "--method", "lora", "--train-text-encoder", "--lora-dropout", "0.1",
              "--instance-dir", photos, "--instance-prompt", "a sks square", "--class-prompt", "a square",
              "--num-class-images", "2", "--class-steps", "2", "--class-dir", tmp_path / "class",
              "--checkpoint-every", "4", "--keep-checkpoints", "0", "--max-steps", "16"]
    train(tmp_path, 1, *common, "--output", tmp_path / "straight")
    out = tmp_path / "out"
    proc = subprocess.Popen([*_command(1), "train", *map(str, common), "--output", str(out)], env=_env(tmp_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + TIMEOUT
        while not (out / "checkpoints" / "checkpoint-000004").is_dir():
            assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "pytorch_lora_weights.safetensors").exists(), "killed too late: the run had finished"
    train(tmp_path, 1, *common, "--output", out, "--resume", "latest")
    assert losses(out) == losses(tmp_path / "straight")
    a, b = weights(tmp_path / "straight"), weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----- the parts, in this process ------------------------------------------------------------------

def test_each_process_takes_its_slice_of_one_global_batch(photos):
    from dreambooth.training.data import ExampleStream, load_examples
    instance = load_examples(photos, "a sks square", 32)
    prior = instance[:3]
    make = lambda batch, shard: ExampleStream(instance, prior, batch, 32, False, True, 5, 0.5, (), shard)  # noqa: E731
    whole, shards = make(2, (0, 1)), [make(1, (0, 2)), make(1, (1, 2))]
    for _ in range(7):
        batch, parts = whole.next_batch(), [s.next_batch() for s in shards]
        assert parts[0].rows == [0, 2] and parts[1].rows == [1, 3] and parts[0].global_size == 4
        for part in parts:
            assert torch.equal(part.pixels, batch.pixels[part.rows])
            assert part.prompts == [batch.prompts[r] for r in part.rows]
            assert part.is_prior.tolist() == [False, True]
    assert all(torch.equal(whole.gen.get_state(), s.gen.get_state()) for s in shards)   # one state resumes all


def test_a_checkpoint_restores_each_process_its_own_global_rng(tmp_path):
    from dreambooth.training import checkpoint as ckpt
    from dreambooth.training.resume_settings import SHAPE_SETTINGS
    from dreambooth.training.sharding import whole_weights
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    states = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        states.append(ckpt.rng_state())
    settings = {k: None for k in SHAPE_SETTINGS}
    path = ckpt.save_checkpoint(tmp_path, 3, whole_weights({"unet": model}, False), optimizer.state_dict(),
                                {"rng_per_process": states}, settings, 0)
    expected = {}
    for seed in (1, 2):
        torch.manual_seed(seed)
        expected[seed] = torch.rand(4)
    ckpt.load_checkpoint(path, {"unet": model}, optimizer, settings, process=(1, 2))
    assert torch.equal(torch.rand(4), expected[2])
    ckpt.load_checkpoint(path, {"unet": model}, optimizer, settings, process=(0, 2))
    assert torch.equal(torch.rand(4), expected[1])


def test_the_shipped_accelerate_config_is_ddp_and_parses():
    from accelerate.commands.config.config_args import load_config_from_file
    config = load_config_from_file(str(ACCELERATE_CONFIG))
    assert config.distributed_type.name == "MULTI_GPU" and config.num_machines == 1 and not config.use_cpu


def test_a_launch_of_one_process_trains_a_bf16_full_run(tiny_sd1, photos, tmp_path):
    """Under a multi-process config accelerate wraps the models in DDP even for one process. The bf16
    copies a full bf16 run trains through on a CPU stand in for fp32 weights DDP waits on: they stay
    off in any process group (the run stopped at its second step: DDP's "Expected to have finished
    reduction in the prior iteration")."""
    _one_ddp_process(tmp_path, tiny_sd1, photos, "--method", "full", "--mixed-precision", "bf16")


def _one_ddp_process(tmp_path: Path, model: Path, photos: Path, *args: str) -> None:
    """Three steps of a tiny run launched as one process under the DDP config: DDP wraps the models."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CONFIG),
               "--num_processes", "1", "--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port()),
               "-m", "dreambooth", "train", "--model", str(model), "--instance-dir", str(photos),
               "--instance-prompt", "a sks square", "--resolution", "32", "--max-steps", "3",
               "--output", str(tmp_path / "out"), *args]
    run = subprocess.run(command, env=_env(tmp_path), capture_output=True, text=True, timeout=TIMEOUT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert len(losses(tmp_path / "out")) == 3


def test_a_text_encoder_trained_at_clip_skip_2_under_ddp(tiny_sd1, photos, tmp_path):
    """Clip skip 2 never reads the text encoder's last layer: it stays out of training, else DDP waits
    for its gradients (the run stopped at its second step, even as one process)."""
    _one_ddp_process(tmp_path, tiny_sd1, photos, "--method", "full", "--train-text-encoder", "--clip-skip", "2")


def test_a_run_accelerate_started_alone_says_so(monkeypatch):
    """``accelerate launch --num_processes 2`` without ``--multi_gpu`` on a machine without GPUs runs
    its plain launcher: one process, which used to train alone in silence."""
    from dreambooth import progress
    from dreambooth.training.config import build_config
    from dreambooth.training.guard import check_distributed
    said = []
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with progress.subscribed(lambda event: said.append(event.message)):
        check_distributed(build_config("toy"))
        monkeypatch.setenv("WORLD_SIZE", "2")
        check_distributed(build_config("toy"))
    assert [m for m in said if "started this one process" in m and "--multi_gpu" in m] == [said[0]] and len(said) == 1
    kept = []                                  # a run passes its own warn: the closing summary repeats it
    monkeypatch.delenv("WORLD_SIZE")
    check_distributed(build_config("toy"), kept.append)
    assert len(kept) == 1 and "started this one process" in kept[0]


def test_sdxl_with_its_text_encoders_on_two_processes(tiny_sdxl, photos, tmp_path):
    """SDXL's first text encoder's last layer gets no gradient: DDP, told so for that encoder alone,
    runs the steps (without it, the second step stops: "Expected to have finished reduction")."""
    run = train(tmp_path, 2, "--model", tiny_sdxl, "--instance-dir", photos, "--instance-prompt", "a photo of sks square",
                "--method", "full", "--train-text-encoder", "--resolution", "32", "--max-steps", "3",
                "--output", tmp_path / "out", check=False)
    assert run.returncode == 0 and "trained 3 steps" in run.stdout, run.stderr[-3000:]
    assert losses(tmp_path / "out") and len(losses(tmp_path / "out")) == 3
