"""The in-process GPU measurements still owed to issue 30, most wanted first, within a time budget.

    python benchmarks/gpu_variants.py --budget 540          # on a GPU: one line of figures per case
    python benchmarks/gpu_variants.py --tiny --budget 120   # the same commands on tiny models, any machine

Each training case is one ``benchmarks/train_step.py`` process (full-size layouts, random weights, prior
preservation, bf16); the models are built once under --cache by the first case of each family, so
that case's "before the timed steps" peak includes the building. The generation cases are one
side_by_side.py case, ours against diffusers' pipeline per batch, with its own models, and
generate_memory.py (SDXL's peak with --medvram against every part on the card, as an 8 GB card, on
the SDXL model the training cases built); the FSDP case
is fsdp_check.py (a tiny SDXL trained, checkpointed and resumed under FSDP); the resume case is
resume_check.py (a tiny SD1 trained twice and resumed, with the default kernels and --deterministic).
A case that fails or runs out of its time is reported and the rest go on; a case that would not fit in
the budget left is skipped.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent

# (name, seconds it may take, train_step.py arguments, or "SIDE_BY_SIDE" and a side_by_side.py case, or
# "SCRIPT" and a script of this folder);
# SD1.5 first, so its model exists for the rest.
CASES = [
    ("SD1.5 LoRA 512 px", 90, "--size full --method lora --resolution 512 --steps 40 --warmup 5"),
    ("SD1.5 LoRA 512 px, --cuda-graphs (the UNet's passes replayed: the lever for a host-bound step)", 90,
     "--size full --method lora --resolution 512 --steps 40 --warmup 5 --cuda-graphs"),
    ("SDXL LoRA 1024 px, checkpointing, --cuda-graphs (goals <= 8 GB and >= 8 it/s in one run)", 120,
     "--family sdxl --size full --method lora --resolution 1024 --steps 10 --warmup 3 --gradient-checkpointing --cuda-graphs"),
    # as an 8 GB card (7.45 GiB): making the 4 class images, and validation images beside the optimizer's
    # state, would not fit with every part on it, so the parts take turns (class-parking=True and
    # validation-parking=True in the line); an allocation past 8 GB fails the case, or, in validation
    # (which skips images for want of memory), shows as validations below 2
    ("SDXL LoRA 1024 px, checkpointing, as an 8 GB card (the whole run's peak, class and validation images made, "
     "goal <= 8 GB)", 130,
     "--family sdxl --size full --method lora --resolution 1024 --steps 10 --warmup 3 --gradient-checkpointing "
     "--gpu-memory 7.45 --validate"),
    # not train_step.py: generation's peak and time a batch, --medvram against every part on the card
    ("SDXL generate 1024 px as an 8 GB card: --medvram (the parts taking turns) against every part", 100,
     "SCRIPT generate_memory.py --family sdxl --gpu-memory 7.45 --cache {cache}"),
    ("SDXL full 1024 px, checkpointing, 8-bit Adam, --fused-backward-pass (goal <= 20 GB)", 180,
     "--family sdxl --size full --method full --resolution 1024 --steps 4 --warmup 2 --gradient-checkpointing "
     "--use-8bit-adam --fused-backward-pass"),
    ("SDXL LoRA 1024 px, --cuda-graphs", 120,
     "--family sdxl --size full --method lora --resolution 1024 --steps 10 --warmup 3 --cuda-graphs"),
    ("SD1.5 LoRA 512 px, --compile (the other lever for a host-bound step)", 300,
     "--size full --method lora --resolution 512 --steps 40 --warmup 20 --compile"),
    # not train_step.py: a tiny SDXL under configs/accelerate/fsdp.yaml on CUDA, checkpointed and resumed
    ("FSDP on CUDA: trains, checkpoints and resumes (tiny SDXL, one process per GPU)", 90, "SCRIPT fsdp_check.py"),
    # not train_step.py: a tiny SD1 trained twice and killed-and-resumed, with and without --deterministic
    ("exact resume on CUDA: default kernels and --deterministic (tiny SD1, LoRA and full + TE)", 120,
     "SCRIPT resume_check.py"),
    # not train_step.py: ours against diffusers' StableDiffusionPipeline, per batch (side_by_side.py's GPU case)
    ("generate SD1.5 512 px, Euler a 20 steps, CFG 7, batch 4, fp16, against diffusers (goal <= 0.8)", 150,
     "SIDE_BY_SIDE generate SD1.5 512 px, Euler a 20 steps, CFG 7, batch 4, fp16"),
    ("SD1.5 LoRA 512 px, checkpointing, --cuda-graphs (goals <= 4 GB and >= 25 it/s in one run)", 90,
     "--size full --method lora --resolution 512 --steps 40 --warmup 5 --gradient-checkpointing --cuda-graphs"),
    ("SD1.5 full + text encoder 512 px, --cuda-graphs", 60,
     "--size full --method full --train-text-encoder --resolution 512 --steps 20 --warmup 5 --cuda-graphs"),
    ("SD1.5 full + text encoder 512 px", 60,
     "--size full --method full --train-text-encoder --resolution 512 --steps 20 --warmup 5"),
    ("SD1.5 LoRA 512 px, profile", 90, "--size full --method lora --resolution 512 --steps 10 --warmup 5 --profile"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=600, help="seconds for all cases")
    ap.add_argument("--cache", default="/tmp/gpu-variants", help="where the models are built once")
    ap.add_argument("--tiny", action="store_true", help="tiny models: a dry run of every command")
    args = ap.parse_args()
    deadline = time.time() + args.budget
    for number, (name, seconds, extra) in enumerate(CASES):
        cmd, seconds, shown = command(number, seconds, extra, args)
        left = deadline - time.time()
        if seconds > left:
            print(f"== {name}: skipped ({seconds} s; {left:.0f} s of --budget left)", flush=True)
            continue
        print(f"== {name}", flush=True)
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds)
        except subprocess.TimeoutExpired:
            print(f"   ran out of its {seconds} s", flush=True)
            continue
        if run.returncode:
            print(f"   failed ({run.returncode}): {run.stderr.strip().splitlines()[-1:] or ['?']}", flush=True)
        print("\n".join(shown([ln for ln in run.stdout.splitlines() if ln.strip()])), flush=True)


def command(number: int, seconds: float, extra: str, args):
    """(command line, seconds it may take, which of its output lines to print) of one case."""
    if extra.startswith("SIDE_BY_SIDE "):        # one side_by_side.py case, its own models under --cache
        cmd = [sys.executable, str(HERE / "side_by_side.py"), "--cases", extra.split(" ", 1)[1],
               "--work", f"{args.cache}/side-by-side", *(["--tiny"] if args.tiny else [])]
        rows = lambda lines: [ln for ln in lines if ln.startswith("|") or "ours" in ln or "peer" in ln]
        return cmd, 240 if args.tiny else seconds, rows
    if extra.startswith("SCRIPT "):              # a script of its own: the lines it starts with its name, or
        script, *rest = extra.split()[1:]         # its last line; on tiny models anyway, in a --work folder
        stem = Path(script).stem                  # of its own, or on the models of --cache ({cache})
        place = ["--work", f"{args.cache}/{stem}"] if "{cache}" not in rest else ["--tiny"] if args.tiny else []
        return [sys.executable, str(HERE / script), *[a.format(cache=args.cache) for a in rest], *place], \
            seconds, lambda lines: [ln for ln in lines if ln.startswith(stem)] or lines[-1:]
    argv = extra.split()
    if args.tiny:
        argv = ["tiny" if i and argv[i - 1] == "--size" else a for i, a in enumerate(argv)]
        argv = [a for a in argv if a != "--use-8bit-adam"] + ["--resolution", "64"]
        if not torch.cuda.is_available():        # graphs need CUDA: the dry run checks the rest of the command
            argv = [a for a in argv if a != "--cuda-graphs"]
        seconds = 120 if "--compile" in argv else 60
    cmd = [sys.executable, str(HERE / "train_step.py"), "--cache", args.cache, "--output", f"{args.cache}/out-{number}",
           "--mixed-precision", "bf16", "--prior", *argv]
    return cmd, seconds, (lambda lines: lines[-30:]) if "--profile" in argv else (lambda lines: lines[-1:])


if __name__ == "__main__":
    main()
