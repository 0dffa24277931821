"""Generation's peak GPU memory and time a batch: every part on the GPU against ``--medvram`` (the
text encoders, the UNet and the VAE taking turns), full-size layouts with random weights.

    python benchmarks/generate_memory.py --family sdxl --gpu-memory 7.45    # SDXL 1024 px as an 8 GB card
    python benchmarks/generate_memory.py --family sd1                        # SD1.5 at 512 px, the whole card
    python benchmarks/generate_memory.py --tiny                              # any machine: a dry run, tiny model

Each way loads the model afresh and makes one batch to warm up and one timed; the peak
(``torch.cuda.max_memory_allocated``) covers the loading and both batches. ``--gpu-memory`` acts as a
smaller card (torch's per-process fraction): a way that needs more fails with out of memory and says
so. The models are the ones ``train_step.py`` builds under --cache (its text encoders have a small
vocabulary: about 0.1 GiB less than CLIP's own in fp16). One line per way.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", choices=["sd1", "sdxl"], default="sdxl")
    ap.add_argument("--resolution", type=int, default=None, help="default: 512 (sd1), 1024 (sdxl); 64 with --tiny")
    ap.add_argument("--steps", type=int, default=10, help="sampling steps (Euler a, CFG 7)")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--gpu-memory", type=float, default=None, metavar="GIB", help="act as a card of this size")
    ap.add_argument("--cache", default="/tmp/gpu-variants", help="where the models are built once")
    ap.add_argument("--tiny", action="store_true", help="a tiny model: a dry run on any machine")
    args = ap.parse_args()
    os.environ.setdefault("DREAMBOOTH_NO_PROGRESS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from dreambooth.generation.params import GenerationParams
    from dreambooth.generation.pipeline import load_generation_pipeline
    from dreambooth.generation.sampling import generate
    from dreambooth.testing.tiny import save_tiny
    from train_step import build_full
    size = "tiny" if args.tiny else "full"
    model = Path(args.cache) / f"{args.family}-{size}"
    if not (model / "model_index.json").exists():
        model.mkdir(parents=True, exist_ok=True)
        save_tiny(args.family, model) if args.tiny else build_full(args.family, model)
    side = args.resolution or (64 if args.tiny else 1024 if args.family == "sdxl" else 512)
    cuda = torch.cuda.is_available()
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        if args.gpu_memory:
            torch.cuda.set_per_process_memory_fraction(args.gpu_memory * 2**30 / torch.cuda.mem_get_info()[1])
    params = GenerationParams("a photo of a dog", sampler="Euler a", steps=args.steps, cfg_scale=7.0, width=side,
                              height=side, seed=1, batch_size=args.batch_size)
    card = f"{args.gpu_memory} GiB" if args.gpu_memory and cuda else "all" if cuda else "-"
    for medvram in (True, False):
        pipeline = None
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        head = f"generate_memory {args.family}-{size} {side} px, {args.steps} steps, batch {args.batch_size}, " \
               f"{'--medvram' if medvram else 'every part on the device'}, card={card}"
        try:
            pipeline = load_generation_pipeline(str(model), medvram=medvram)
            generate(pipeline, params)                       # warm-up: kernels, allocator
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            generate(pipeline, params)
            if cuda:
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
        except torch.cuda.OutOfMemoryError as exc:
            print(f"{head} | out of GPU memory ({str(exc).splitlines()[0][:120]})", flush=True)
            continue
        finally:
            del pipeline
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        device = torch.cuda.get_device_name() if cuda else f"cpu x{torch.get_num_threads()}"
        print(f"{head} | {elapsed:.2f} s a batch, peak GPU memory {peak:.2f} GiB | {device}", flush=True)


if __name__ == "__main__":
    main()
