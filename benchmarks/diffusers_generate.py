"""diffusers' own StableDiffusionPipeline as the generation yardstick of the side-by-side benchmark.

    python benchmarks/diffusers_generate.py MODEL --size 256 --steps 20 --cfg 7 --batch-size 4 --batches 2

Euler a (EulerAncestralDiscreteScheduler), one prompt, ``--batches`` calls of ``--batch-size`` images.
"""
from __future__ import annotations

import argparse

import torch
from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg", type=float, default=7.0)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--batches", type=int, default=1)
    ap.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    args = ap.parse_args()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = StableDiffusionPipeline.from_pretrained(args.model, torch_dtype=dtype, safety_checker=None,
                                                   requires_safety_checker=False).to(device)
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    for i in range(args.batches):
        pipe("a photo of a dog", height=args.size, width=args.size, num_inference_steps=args.steps,
             guidance_scale=args.cfg, num_images_per_prompt=args.batch_size,
             generator=torch.Generator(device).manual_seed(i))


if __name__ == "__main__":
    main()
