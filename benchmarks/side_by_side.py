"""Ours against diffusers' own DreamBooth scripts, side by side: steady-state s/step, peak memory, ratios.

    python benchmarks/side_by_side.py                       # the CPU cases (about 40 min on 2 cores)
    python benchmarks/side_by_side.py --cases mid           # the mid-size SD1 cases only (about 20 min)
    python benchmarks/side_by_side.py --cases gpu           # on a GPU: full-size SD1.5 and SDXL (about 15 min)
    python benchmarks/side_by_side.py --cases gpu --tiny    # the same commands on tiny models: a dry run, any machine

Each case runs `dreambooth train` and the peer script (`train_dreambooth.py`, `train_dreambooth_lora.py`,
`train_dreambooth_lora_sdxl.py`, from ``--peers``: the diffusers copies in ../shared/peers) on the same
model folder (real architectures, random weights, built once under --work), the same photos, the same 4
class images (so neither generates any), prior preservation, batch 1, one after the other, command by
command in turn (ours at N1 steps, the peer at N1, ours at N2, ...), so drift in the machine's speed
weighs on both sides alike. Steady-state s/step = (wall(N2 steps) - wall(N1 steps)) / (N2 - N1), so
loading and saving cancel out. Peak memory is the process's peak RSS on CPU and
``torch.cuda.max_memory_allocated`` on a GPU (benchmarks/measured.py wraps both sides alike). The
generation case compares `dreambooth generate` with diffusers' StableDiffusionPipeline
(benchmarks/diffusers_generate.py) per batch. An end-to-end case runs each side once, class images
made by it included, and reports the wall. A failed run is reported and the rest go on; ``--budget``
skips the cases that would not fit in the seconds left. Prints a markdown table for
docs/benchmarks.md and writes results.json under --work.
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
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from train_step import build_full, build_mid  # noqa: E402

BUILDERS = {"mid": build_mid, "sd15": lambda d: build_full("sd1", d), "sdxl": lambda d: build_full("sdxl", d),
            "tiny-sd1": lambda d: _tiny("sd1", d), "tiny-sdxl": lambda d: _tiny("sdxl", d)}


def _tiny(family: str, directory: Path) -> None:
    from dreambooth.testing.tiny import save_tiny
    save_tiny(family, directory)
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
    e2e: int = 0                     # > 0: one end-to-end run of steps[1] steps that makes this many class images
    peer: bool = True                # False: ours alone (no peer script applies)
    peer_extra: list[str] = field(default_factory=list)
    batch: int = 4                   # images a batch, when generating
    estimate: float = 60.0           # seconds both sides take where the case is meant to run (for --budget)


# Enough steps that the timed difference outweighs the noise in the first steps and in loading (a second
# or two between runs on a shared 2-core machine): 8 steps of 0.3 s were within that noise.
CPU_MID = [
    Case("mid LoRA rank 4, fp32", "mid", steps=(2, 30)),
    Case("mid LoRA rank 4, bf16", "mid", precision="bf16", steps=(2, 30)),
    Case("mid full + text encoder, fp32", "mid", "full", te=True, steps=(2, 20)),
    Case("mid full + text encoder, bf16", "mid", "full", te=True, precision="bf16", steps=(2, 20)),
]
CPU_FULL = [
    Case("SD1.5 LoRA rank 4, 512 px, fp32", "sd15", resolution=512, steps=(1, 3)),
    Case("SD1.5 LoRA rank 4, 512 px, bf16", "sd15", precision="bf16", resolution=512, steps=(1, 3)),
]
# diffusers' pipeline in its default fp32 and in bf16 (a CPU with bf16 in hardware); ours at its default.
# 1 and 4 batches: with 1 and 2, a second's drift in either wall moved the ratio by a tenth (0.81-1.18).
CPU_GENERATE = [Case(f"generate mid 256 px, Euler a 20 steps, CFG 7, batch 4, diffusers in {dtype}", "mid", "generate",
                     resolution=256, steps=(1, 4), peer_extra=["--dtype", dtype]) for dtype in ("fp32", "bf16")]
CPU_FULL += [Case(f"generate SD1.5 512 px, Euler a 20 steps, CFG 7, batch 1, diffusers in {dtype}", "sd15", "generate",
                  resolution=512, steps=(1, 2), batch=1, peer_extra=["--dtype", dtype]) for dtype in ("fp32", "bf16")]
# In order of importance: --budget drops the last ones first.
GPU = [
    Case("SD1.5 LoRA rank 4, 512 px, bf16", "sd15", precision="bf16", resolution=512, steps=(20, 170), estimate=100),
    Case("SD1.5 LoRA rank 4, 512 px, bf16, ours with --cuda-graphs", "sd15", precision="bf16", resolution=512,
         steps=(20, 170), ours_extra=["--cuda-graphs"], estimate=90),
    Case("SDXL LoRA rank 4, 1024 px, bf16, checkpointing", "sdxl", precision="bf16", resolution=1024, steps=(10, 60),
         ours_extra=["--gradient-checkpointing"], estimate=150),
    Case("SD1.5 full + text encoder, 512 px, bf16, 400 steps and 100 class images end to end", "sd15", "full", te=True,
         precision="bf16", resolution=512, steps=(0, 400), e2e=100, peer=False, estimate=110),
    Case("SD1.5 full + text encoder, 512 px, bf16, --cuda-graphs, 400 steps and 100 class images end to end", "sd15",
         "full", te=True, precision="bf16", resolution=512, steps=(0, 400), e2e=100, peer=False,
         ours_extra=["--cuda-graphs"], estimate=90),
    Case("generate SD1.5 512 px, Euler a 20 steps, CFG 7, batch 4, fp16", "sd15", "generate", resolution=512,
         steps=(2, 12), estimate=60),
    Case("SD1.5 full + text encoder, 512 px, bf16", "sd15", "full", te=True, precision="bf16", resolution=512,
         steps=(10, 60), estimate=110),
    Case("SDXL full, 1024 px, bf16, checkpointing, 8-bit Adam, fused backward pass", "sdxl", "full", precision="bf16",
         resolution=1024, steps=(2, 6), peer=False,
         ours_extra=["--gradient-checkpointing", "--use-8bit-adam", "--fused-backward-pass"], estimate=80),
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


class RunFailed(Exception):
    pass


def run(command: list[str], report: Path, log: Path, env: dict, timeout: float | None = None) -> tuple[float, float]:
    """Wall seconds and peak GiB of one wrapped run; RunFailed (with its log's tail) if it fails or times out."""
    start = time.perf_counter()
    with open(log, "w") as out:
        try:
            code = subprocess.call([sys.executable, str(HERE / "measured.py"), str(report), *command],
                                   stdout=out, stderr=subprocess.STDOUT, env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            code = f"timed out after {timeout:.0f} s"
    wall = time.perf_counter() - start
    if code != 0:
        raise RunFailed(f"failed ({code}): {' '.join(command)}\n--- {log}:\n" + log.read_text()[-3000:])
    figures = json.loads(report.read_text())
    if figures.get("cuda_reserved_gib") is not None:
        print(f"    (its GPU memory reserved at most {figures['cuda_reserved_gib']:.2f} GiB)", flush=True)
    return wall, figures["cuda_gib"] if figures["cuda_gib"] is not None else figures["rss_gib"]


def commands(case: Case, model: Path, work: Path, steps: int, peers: Path, side: str = "ours") -> tuple[list[str], list[str]]:
    """(ours, peer) command lines of ``case`` at ``steps`` (training steps, or batches when generating);
    ``side``: the one about to run (an end-to-end case empties its class-image folder)."""
    if case.method == "generate":
        ours = ["-m", "dreambooth.cli.main", "generate", "--model", str(model), "--prompt", "a photo of a dog",
                "--sampler", "Euler a", "--steps", "20", "--cfg", "7", "--seed", "0", "--width", str(case.resolution),
                "--height", str(case.resolution), "--batch-size", str(case.batch), "--batch-count", str(steps),
                "--output", str(work / "generated"), *case.ours_extra]
        peer = [str(HERE / "diffusers_generate.py"), str(model), "--size", str(case.resolution), "--steps", "20",
                "--cfg", "7", "--batch-size", str(case.batch), "--batches", str(steps), *case.peer_extra]
        if gpu():                    # ours generates in fp16 on CUDA; so does a diffusers user
            peer += ["--dtype", "fp16"]
        return ours, peer
    instance = photos(work / "photos", 768, 4)
    classes = case.e2e or 4
    if case.e2e:                     # an empty folder: each side makes its own class images
        klass = work / f"class-made-{side}"
        subprocess.call(["rm", "-rf", str(klass)])
    else:
        klass = photos(work / f"class-{case.resolution}", case.resolution, 4)
    lr = "5e-6" if case.method == "full" else "1e-4"
    ours = ["-m", "dreambooth.cli.main", "train", "--model", str(model), "--instance-dir", str(instance),
            "--instance-prompt", "a photo of sks dog", "--class-prompt", "a photo of dog", "--class-dir", str(klass),
            "--num-class-images", str(classes), "--resolution", str(case.resolution), "--batch-size", "1",
            "--max-steps", str(steps), "--method", case.method, "--rank", "4", "--learning-rate", lr,
            "--mixed-precision", case.precision, "--seed", "0", "--output", str(work / "ours-out"), "--overwrite",
            "--no-export-kohya", "--train-text-encoder" if case.te else "--no-train-text-encoder", *case.ours_extra]
    script = PEER_SCRIPT["sdxl-lora" if case.model.endswith("sdxl") else case.method]
    peer = [str(peers / "run_peer.py"), str(peers / script), "--pretrained_model_name_or_path", str(model),
            "--instance_data_dir", str(instance), "--instance_prompt", "a photo of sks dog",
            "--class_data_dir", str(klass), "--class_prompt", "a photo of dog", "--with_prior_preservation",
            "--num_class_images", str(classes), "--resolution", str(case.resolution), "--train_batch_size", "1",
            "--max_train_steps", str(steps), "--learning_rate", lr, "--mixed_precision", case.precision,
            "--seed", "0", "--output_dir", str(work / "peer-out")]
    if case.method == "lora":
        peer += ["--rank", "4"]
    if case.te:
        peer += ["--train_text_encoder"]
    if "--gradient-checkpointing" in case.ours_extra:
        peer += ["--gradient_checkpointing"]
    return ours, peer


def gpu() -> bool:
    import torch
    return torch.cuda.is_available()


def measure(case: Case, work: Path, peers: Path, env: dict, deadline: float, repeat: int = 1) -> dict:
    """{side: {"per": s/step (s/batch; end to end: wall s), "peak": GiB}} or {side: {"error": text}}.
    Each repeat runs the two sides' commands in turn (ours at N1 steps, the peer at N1, ours at N2, the
    peer at N2), so a machine that slows down or speeds up during a case weighs on both sides alike;
    each command keeps its least wall (other tenants of the machine only ever add)."""
    model = work / f"model-{case.model}"
    if not (model / "model_index.json").exists():
        print(f"  building {model} (random weights) ...", flush=True)
        BUILDERS[case.model](model)
    for weights in model.rglob("*.safetensors"):      # warm the page cache: the first run must not pay for disk
        with open(weights, "rb") as f:
            while f.read(1 << 26):
                pass
    sides = ("ours", "peer") if case.peer else ("ours",)
    counts = case.steps[1:] if case.e2e else case.steps
    walls = {side: [float("inf")] * len(counts) for side in sides}
    peaks, failed = {side: 0.0 for side in sides}, {}
    for _ in range(repeat):
        for i, steps in enumerate(counts):
            for side in (x for x in sides if x not in failed):
                command = commands(case, model, work, steps, peers, side)[side == "peer"]
                tag = f"{side}-{case.name.replace(' ', '_').replace(',', '').replace('+', '')}-{steps}"
                try:
                    wall, gib = run(command, work / f"{tag}.json", work / f"{tag}.log", env, max(10.0, deadline - time.time()))
                except RunFailed as exc:
                    failed[side] = str(exc)
                    print(f"  {side}: {exc}", flush=True)
                    continue
                walls[side][i], peaks[side] = min(walls[side][i], wall), max(peaks[side], gib)
                if case.e2e and side == "ours":      # where the run's time went (its summary's line)
                    print("  ours: " + next((x for x in (work / f"{tag}.log").read_text().splitlines()
                                             if x.startswith("time: ")), "no time line"), flush=True)
    figures = {}
    for side in sides:
        if side in failed:
            figures[side] = {"error": failed[side]}
            continue
        w = walls[side]
        per = w[0] if case.e2e else (w[1] - w[0]) / (case.steps[1] - case.steps[0])
        figures[side] = {"per": per, "peak": peaks[side]}
        unit = "s end to end" if case.e2e else f"s/{'batch' if case.method == 'generate' else 'step'}"
        print(f"  {side}: {per:.3f} {unit}, peak {peaks[side]:.2f} GiB (walls {', '.join(f'{x:.1f}' for x in w)} s)", flush=True)
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
    ap.add_argument("--budget", type=float, default=None, help="seconds: skip the cases that would not fit in what is left")
    ap.add_argument("--repeat", type=int, default=1, help="run both sides' commands in turn this many times; each keeps its least wall")
    ap.add_argument("--tiny", action="store_true", help="a dry run of the same commands on tiny models (64 px, 1 and 2 steps)")
    args = ap.parse_args()
    peers = Path(args.peers)
    if not (peers / "run_peer.py").exists():
        sys.exit(f"--peers {peers}: no run_peer.py there; give the folder holding diffusers' DreamBooth scripts")
    every = {c.name: c for cases in SETS.values() for c in cases}
    cases = SETS.get(args.cases) or [every[n.strip()] for n in args.cases.split(";")]
    if args.tiny:
        cases = [replace(c, model="tiny-sdxl" if c.model == "sdxl" else "tiny-sd1", resolution=64, steps=(1, 2),
                         e2e=min(c.e2e, 2), estimate=20) for c in cases]
        if not torch.cuda.is_available():     # CUDA only: the dry run checks the rest of each command
            cases = [replace(c, ours_extra=[a for a in c.ours_extra if a not in ("--cuda-graphs", "--use-8bit-adam")])
                     for c in cases]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", DREAMBOOTH_NO_PROGRESS="1", PYTHONUNBUFFERED="1")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True).stdout.strip()
    deadline = time.time() + (args.budget or 1e9)
    rows = []
    for case in cases:
        if time.time() + case.estimate > deadline:
            print(f"{case.name}: skipped (about {case.estimate:.0f} s; {deadline - time.time():.0f} s of --budget left)", flush=True)
            continue
        what = "batches" if case.method == "generate" else "steps"
        print(f"{case.name} ({f'{case.steps[1]} steps, once' if case.e2e else f'{case.steps[0]} and {case.steps[1]} {what}'})", flush=True)
        rows.append((case, measure(case, work, peers, env, deadline, args.repeat)))
        (work / "results.json").write_text(json.dumps([{"case": c.name, **f} for c, f in rows], indent=1))
    print(f"\n{machine()}, {datetime.date.today()}, commit {commit or '?'}\n")
    print(table(rows))


def table(rows: list) -> str:
    """The markdown table of docs/benchmarks.md, then ours at its best against the peer at its best."""
    unit = lambda c: "s end to end" if c.e2e else "s/batch" if c.method == "generate" else "s/step"
    cell = lambda c, f: f"{f['per']:.3f} {unit(c)}" if "per" in f else "failed"
    lines = ["| case | ours | peer | ours / peer | peak ours / peer (GiB) | peak ratio |", "|---|---|---|---|---|---|"]
    for case, f in rows:
        o, p = f["ours"], f.get("peer", {})
        both = "per" in o and "per" in p
        ratio = f"{o['per'] / p['per']:.2f}" if both else "-"
        peaks = f"{o['peak']:.2f} / {p['peak']:.2f}" if both else f"{o['peak']:.2f} / -" if "peak" in o else "-"
        peak_ratio = f"{o['peak'] / p['peak']:.2f}" if both else "-"
        lines.append(f"| {case.name} | {cell(case, o)} | {cell(case, p) if case.peer else '-'} | {ratio} | {peaks} | {peak_ratio} |")
    # The goals compare each side's faster precision: ours at its best against the peer at its best.
    groups: dict[str, list] = {}
    for case, f in rows:
        if "per" in f["ours"] and "per" in f.get("peer", {}):
            groups.setdefault(case.name.rsplit(",", 1)[0], []).append(f)
    lines.append("")
    for name, fs in groups.items():
        if len(fs) > 1:
            ours, peer = min(f["ours"]["per"] for f in fs), min(f["peer"]["per"] for f in fs)
            lines.append(f"{name}: ours at its best / the peer at its best = {ours:.3f} / {peer:.3f} = {ours / peer:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
