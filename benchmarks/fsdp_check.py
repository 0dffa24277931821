"""FSDP on this machine's GPUs: does sharded training run, checkpoint and resume there?

    python benchmarks/fsdp_check.py                   # one process per GPU (at least one GPU)
    python benchmarks/fsdp_check.py --processes 1

A tiny SDXL (``dreambooth.testing.tiny``, the real architecture) is fine-tuned under
``accelerate launch --config_file configs/accelerate/fsdp.yaml``: bf16, gradient checkpointing, 6
steps, a checkpoint at step 3. The step-3 checkpoint is then resumed into a second output. Prints one
line: what each process held, the peak memory, and how far the resumed run's weights and losses end
from the uninterrupted run's (0 is bit for bit). The CPU tests cover the same path over gloo, through
a patch of accelerate's state (tests/test_fsdp.py); this runs it as users run it, on CUDA with NCCL.
Without a GPU, accelerate runs the config as DDP, and the line says the run was not sharded.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "src" / "dreambooth" / "training" / "presets" / "accelerate" / "fsdp.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(processes: int, *args) -> str:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG),
           "--num_processes", str(processes), "--main_process_port", str(_free_port()),
           "-m", "dreambooth", "train", *map(str, args)]
    run = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, DREAMBOOTH_NO_PROGRESS="1"))
    log = run.stdout + run.stderr
    if run.returncode:
        tail = [ln for ln in log.splitlines() if ln.strip()][-3:]
        raise SystemExit(f"fsdp_check: the run failed ({run.returncode}): {' | '.join(tail)}")
    return log


def main() -> None:
    import torch
    from safetensors.torch import load_file

    from dreambooth.testing.tiny import save_tiny
    from dreambooth.toy.demo import write_instance_images
    from dreambooth.toy.world import DEMO_SUBJECT

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=max(1, torch.cuda.device_count()))
    ap.add_argument("--work", default=None, help="a folder to work in (default: a temporary one)")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="fsdp-check-"))
    model, photos = work / "model", work / "photos"
    if not (model / "model_index.json").exists():
        save_tiny("sdxl", model)
    write_instance_images(DEMO_SUBJECT, photos)
    common = ["--model", model, "--method", "full", "--instance-dir", photos, "--instance-prompt", "a sks square",
              "--class-prompt", "a square", "--num-class-images", "2", "--class-steps", "2", "--resolution", "64",
              "--mixed-precision", "bf16", "--gradient-checkpointing", "--max-steps", "6", "--checkpoint-every", "3",
              "--overwrite"]
    straight, resumed = work / "straight", work / "resumed"
    log = train(args.processes, *common, "--output", straight)
    shutil.rmtree(resumed, ignore_errors=True)
    shutil.copytree(straight / "checkpoints" / "checkpoint-000003", resumed / "checkpoints" / "checkpoint-000003")
    train(args.processes, *common, "--class-dir", straight / "class_images", "--output", resumed, "--resume", "latest")

    def unet(out: Path) -> dict:
        return {k: v.float() for f in (out / "unet").glob("*.safetensors") for k, v in load_file(str(f)).items()}

    def losses(out: Path) -> list[float]:
        return json.loads((out / "training_args.json").read_text())["losses"]

    a, b = unet(straight), unet(resumed)
    weights = max((a[k] - b[k]).abs().max().item() for k in a)
    loss = max(abs(x - y) for x, y in zip(losses(straight), losses(resumed)))
    held = [ln.split(" holds ")[1].split(" trained")[0] for ln in log.splitlines() if ln.startswith("FSDP: process")]
    peak = [ln.split("peak memory ")[1] for ln in log.splitlines() if "peak memory" in ln]
    sharded = f"each process held {', '.join(held)}" if held else "NOT sharded (no FSDP line: see the run's warning)"
    print(f"fsdp_check: {args.processes} process(es), {sharded}; peak {', '.join(peak) or '?'}; resumed against "
          f"uninterrupted: weights {weights:.3g} apart, losses {loss:.3g} apart (0: bit for bit)")


if __name__ == "__main__":
    main()
