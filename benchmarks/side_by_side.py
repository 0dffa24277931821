"""Ours against diffusers' own DreamBooth scripts, side by side: steady-state s/step, peak memory, ratios.

    python benchmarks/side_by_side.py                       # the CPU cases (about 40 min on 2 cores)
    python benchmarks/side_by_side.py --cases mid           # the mid-size SD1 cases only (about 10 min)
    python benchmarks/side_by_side.py --cases gpu           # on a GPU: full-size SD1.5 and SDXL

Each case runs `dreambooth train` and the peer script (`train_dreambooth.py`, `train_dreambooth_lora.py`,
`train_dreambooth_lora_sdxl.py`, from ``--peers``: the diffusers copies in ../shared/peers) on the same
model folder (real architectures, random weights, built once under --work), the same photos, the same 4
class images (so neither generates any), prior preservation, batch 1, one after the other. Steady-state
s/step = (wall(N2 steps) - wall(N1 steps)) / (N2 - N1), so loading and saving cancel out. Peak memory is
the process's peak RSS on CPU and ``torch.cuda.max_memory_allocated`` on a GPU (benchmarks/measured.py
wraps both sides alike). The generation case compares `dreambooth generate` with diffusers'
StableDiffusionPipeline (benchmarks/diffusers_generate.py) per batch. Prints a markdown table for
docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from train_step import build_full, build_mid  # noqa: E402

BUILDERS = {"mid": build_mid, "sd15": lambda d: build_full("sd1", d), "sdxl": lambda d: build_full("sdxl", d)}
PEER_SCRIPT = {"full": "train_dreambooth.py", "lora": "train_dreambooth_lora.py", "sdxl-lora": "train_dreambooth_lora_sdxl.py"}


@dataclass
class Case:
    name: str
    model: str                       # a key of BUILDERS
    method: str = "lora"             # lora | full | generate
    te: bool = False                 # train the text encoder
    precision: str = "no"            # no | bf16 | fp16
    resolution: int = 128
    steps: tuple[int, int] = (2, 10)
    note: str = ""
    ours_extra: list[str] = field(default_factory=list)


CPU_MID = [
    Case("mid LoRA rank 4, fp32", "mid"),
    Case("mid LoRA rank 4, bf16", "mid", precision="bf16"),
    Case("mid full + text encoder, fp32", "mid", "full", te=True),
    Case("mid full + text encoder, bf16", "mid", "full", te=True, precision="bf16"),
]
CPU_FULL = [
    Case("SD1.5 LoRA rank 4, 512 px, fp32", "sd15", resolution=512, steps=(1, 3)),
    Case("SD1.5 LoRA rank 4, 512 px, bf16", "sd15", precision="bf16", resolution=512, steps=(1, 3)),
]
CPU_GENERATE = [Case("generate mid 256 px, Euler a 20 steps, CFG 7, batch 4", "mid", "generate", resolution=256, steps=(1, 2))]
GPU = [
    Case("SD1.5 LoRA rank 4, 512 px, bf16", "sd15", precision="bf16", resolution=512, steps=(20, 120)),
    Case("SD1.5 full + text encoder, 512 px, bf16", "sd15", "full", te=True, precision="bf16", resolution=512, steps=(10, 60)),
    Case("SDXL LoRA rank 4, 1024 px, bf16", "sdxl", precision="bf16", resolution=1024, steps=(10, 60),
         ours_extra=["--gradient-checkpointing"]),
    Case("generate SD1.5 512 px, Euler a 20 steps, CFG 7, batch 4", "sd15", "generate", resolution=512, steps=(2, 6)),
]
SETS = {"mid": CPU_MID, "sd15": CPU_FULL, "generate": CPU_GENERATE, "cpu": CPU_MID + CPU_FULL + CPU_GENERATE, "gpu": GPU}


def photos(directory: Path, size: int, count: int) -> Path:
    """Smooth random square pictures (the DreamBench photos are square too), made once."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(size)
    for i in range(count):
        path = directory / f"{i:02d}.png"
        if not path.exists():
            small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(small).resize((size, size), Image.BICUBIC).save(path)
    return directory


def run(command: list[str], report: Path, log: Path, env: dict) -> tuple[float, float]:
    """Wall seconds and peak GiB of one wrapped run; a failed run stops the benchmark with its log's tail."""
    start = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.call([sys.executable, str(HERE / "measured.py"), str(report), *command],
                               stdout=out, stderr=subprocess.STDOUT, env=env)
    wall = time.perf_counter() - start
    if code != 0:
        sys.exit(f"failed ({code}): {' '.join(command)}\n--- {log}:\n" + log.read_text()[-3000:])
    figures = json.loads(report.read_text())
    return wall, figures["cuda_gib"] if figures["cuda_gib"] is not None else figures["rss_gib"]


def commands(case: Case, model: Path, work: Path, steps: int, peers: Path) -> tuple[list[str], list[str]]:
    """(ours, peer) command lines of ``case`` at ``steps`` (training steps, or batches when generating)."""
    if case.method == "generate":
        ours = ["-m", "dreambooth.cli.main", "generate", "--model", str(model), "--prompt", "a photo of a dog",
                "--sampler", "Euler a", "--steps", "20", "--cfg", "7", "--seed", "0", "--width", str(case.resolution),
                "--height", str(case.resolution), "--batch-size", "4", "--batch-count", str(steps),
                "--output", str(work / "generated"), *case.ours_extra]
        peer = [str(HERE / "diffusers_generate.py"), str(model), "--size", str(case.resolution), "--steps", "20",
                "--cfg", "7", "--batch-size", "4", "--batches", str(steps)]
        return ours, peer
    instance = photos(work / "photos", 768, 4)
    klass = photos(work / f"class-{case.resolution}", case.resolution, 4)
    lr = "5e-6" if case.method == "full" else "1e-4"
    ours = ["-m", "dreambooth.cli.main", "train", "--model", str(model), "--instance-dir", str(instance),
            "--instance-prompt", "a photo of sks dog", "--class-prompt", "a photo of dog", "--class-dir", str(klass),
            "--num-class-images", "4", "--resolution", str(case.resolution), "--batch-size", "1",
            "--max-steps", str(steps), "--method", case.method, "--rank", "4", "--learning-rate", lr,
            "--mixed-precision", case.precision, "--seed", "0", "--output", str(work / "ours-out"), "--overwrite",
            "--no-export-kohya", "--train-text-encoder" if case.te else "--no-train-text-encoder", *case.ours_extra]
    script = PEER_SCRIPT["sdxl-lora" if case.model == "sdxl" else case.method]
    peer = [str(peers / "run_peer.py"), str(peers / script), "--pretrained_model_name_or_path", str(model),
            "--instance_data_dir", str(instance), "--instance_prompt", "a photo of sks dog",
            "--class_data_dir", str(klass), "--class_prompt", "a photo of dog", "--with_prior_preservation",
            "--num_class_images", "4", "--resolution", str(case.resolution), "--train_batch_size", "1",
            "--max_train_steps", str(steps), "--learning_rate", lr, "--mixed_precision", case.precision,
            "--seed", "0", "--output_dir", str(work / "peer-out")]
    if case.method == "lora":
        peer += ["--rank", "4"]
    if case.te:
        peer += ["--train_text_encoder"]
    if case.model == "sdxl" and "--gradient-checkpointing" in case.ours_extra:
        peer += ["--gradient_checkpointing"]
    return ours, peer


def measure(case: Case, work: Path, peers: Path, env: dict) -> dict:
    model = work / f"model-{case.model}"
    if not (model / "model_index.json").exists():
        print(f"  building {model} (random weights) ...", flush=True)
        BUILDERS[case.model](model)
    figures = {}
    for side in ("ours", "peer"):
        walls, peak = [], 0.0
        for steps in case.steps:
            command = commands(case, model, work, steps, peers)[side == "peer"]
            tag = f"{side}-{case.name.replace(' ', '_').replace(',', '').replace('+', '')}-{steps}"
            wall, gib = run(command, work / f"{tag}.json", work / f"{tag}.log", env)
            walls.append(wall)
            peak = max(peak, gib)
        per = (walls[1] - walls[0]) / (case.steps[1] - case.steps[0])
        figures[side] = {"per": per, "peak": peak}
        print(f"  {side}: {per:.3f} s/{'batch' if case.method == 'generate' else 'step'}, peak {peak:.2f} GiB "
              f"(walls {', '.join(f'{w:.1f}' for w in walls)} s)", flush=True)
    return figures


def machine() -> str:
    import torch
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    return f"{platform.processor() or platform.machine()} CPU x{os.cpu_count()}, torch {torch.__version__}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="cpu", help=f"one of {', '.join(SETS)}, or names separated by ';'")
    ap.add_argument("--peers", default=str(HERE.parent.parent / "shared" / "peers"),
                    help="folder of diffusers' scripts and run_peer.py (default: ../shared/peers)")
    ap.add_argument("--work", default="/tmp/dreambooth-side-by-side", help="models, photos and logs")
    args = ap.parse_args()
    peers = Path(args.peers)
    if not (peers / "run_peer.py").exists():
        sys.exit(f"--peers {peers}: no run_peer.py there; give the folder holding diffusers' DreamBooth scripts")
    every = {c.name: c for cases in SETS.values() for c in cases}
    cases = SETS.get(args.cases) or [every[n.strip()] for n in args.cases.split(";")]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", DREAMBOOTH_NO_PROGRESS="1", PYTHONUNBUFFERED="1")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True).stdout.strip()
    rows = []
    for case in cases:
        print(f"{case.name} ({case.steps[0]} and {case.steps[1]} {'batches' if case.method == 'generate' else 'steps'})", flush=True)
        f = measure(case, work, peers, env)
        rows.append((case, f))
    unit = lambda c: "s/batch" if c.method == "generate" else "s/step"
    print(f"\n{machine()}, {datetime.date.today()}, commit {commit or '?'}\n")
    print("| case | ours | peer | ours / peer | peak ours / peer (GiB) | peak ratio |")
    print("|---|---|---|---|---|---|")
    for case, f in rows:
        o, p = f["ours"], f["peer"]
        print(f"| {case.name} | {o['per']:.3f} {unit(case)} | {p['per']:.3f} {unit(case)} | {o['per'] / p['per']:.2f} | "
              f"{o['peak']:.2f} / {p['peak']:.2f} | {o['peak'] / p['peak']:.2f} |")
    # The goals compare each side's faster precision: ours at its best against the peer at its best.
    groups: dict[str, list] = {}
    for case, f in rows:
        groups.setdefault(case.name.rsplit(",", 1)[0], []).append(f)
    print()
    for name, fs in groups.items():
        if len(fs) > 1:
            ours, peer = min(f["ours"]["per"] for f in fs), min(f["peer"]["per"] for f in fs)
            print(f"{name}: ours at its best / the peer at its best = {ours:.3f} / {peer:.3f} = {ours / peer:.2f}")


if __name__ == "__main__":
    main()
