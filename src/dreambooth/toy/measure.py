"""What the toy base model knows, measured with the oracle.

For prompts ``a {colour} {shape} on a {background} background`` (a fixed random draw of the 224 the
world has, one seed each) it samples at CFG 5 with 30 DDIM steps at 32x32 and reports the share of
samples whose background, object colour and shape the oracle reads as requested.

    python -m dreambooth.toy.measure [--model toy|DIR] [--n 128] [--seed 0]
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from . import oracle
from .world import all_prompts, caption, partial_caption

RESOLUTION = 32


def prompt_set(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    combos = all_prompts()
    rng = np.random.default_rng(seed)
    picks = rng.permutation(len(combos))
    picks = np.concatenate([picks] * (n // len(combos) + 1))[:n]
    return [combos[i] for i in picks]


@torch.no_grad()
def sample(pipe, prompts: list[str], seeds: list[int], steps: int = 30, cfg: float = 5.0,
           batch: int = 64) -> list[np.ndarray]:
    """uint8 (32, 32, 3) pictures, one per (prompt, seed)."""
    out = []
    for i in range(0, len(prompts), batch):
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds[i:i + batch]]
        images = pipe(prompts[i:i + batch], num_inference_steps=steps, guidance_scale=cfg,
                      height=RESOLUTION, width=RESOLUTION, generator=gens, output_type="np").images
        out += [oracle.to_array(im) for im in images]
    return out


def measure(pipe, n: int = 128, seed: int = 0, steps: int = 30, cfg: float = 5.0, batch: int = 64,
            return_images: bool = False) -> dict:
    combos = prompt_set(n, seed)
    prompts = [caption(c, s, b) for c, s, b in combos]
    images = sample(pipe, prompts, [seed * 100_003 + i for i in range(n)], steps, cfg, batch)
    readings = [oracle.read(im) for im in images]
    bg = np.mean([r.background == b for r, (c, s, b) in zip(readings, combos)])
    col = np.mean([r.colour == c for r, (c, s, b) in zip(readings, combos)])
    shp = np.mean([r.shape == s for r, (c, s, b) in zip(readings, combos)])
    both = np.mean([r.background == b and r.colour == c for r, (c, s, b) in zip(readings, combos)])
    patterned = np.mean([r.patterned for r in readings])
    result = {"n": n, "cfg": cfg, "steps": steps, "background": float(bg), "object_colour": float(col),
              "shape": float(shp), "background_and_colour": float(both), "patterned": float(patterned)}
    if return_images:
        result["images"] = images
        result["prompts"] = prompts
    return result


def measure_partial(pipe, n: int = 32, seed: int = 0, steps: int = 30, cfg: float = 5.0) -> dict:
    """How well the base follows partial captions, ``n`` samples per form: the background of
    ``a {shape} on a {background} background``, the colour of ``a {colour} {shape}`` and the shape
    of ``a {shape}`` (each as a share read right by the oracle)."""
    combos = prompt_set(n, seed)
    seeds = [seed * 100_003 + i for i in range(n)]
    # what each of world.PARTIAL_FORMS still names, and so what is checked
    checks = {"colour": lambda r, c, s, b: r.colour == c, "background": lambda r, c, s, b: r.background == b,
              "shape": lambda r, c, s, b: r.shape == s}
    result = {}
    for form, (name, right) in enumerate(checks.items()):
        images = sample(pipe, [partial_caption(*combo, form) for combo in combos], seeds, steps, cfg)
        result[name] = float(np.mean([right(oracle.read(im), *combo) for im, combo in zip(images, combos)]))
    return result


def grid(images: list[np.ndarray], cols: int = 16, scale: int = 2):
    from PIL import Image
    rows = (len(images) + cols - 1) // cols
    h, w = images[0].shape[:2]
    canvas = np.full((rows * (h + 2), cols * (w + 2), 3), 255, dtype=np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        canvas[r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w] = im
    img = Image.fromarray(canvas)
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy")
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cfg", type=float, default=5.0)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--grid", help="write the samples as a PNG grid here")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from ..models import load_pipeline
    pipe = load_pipeline(args.model, dtype=torch.float32)
    res = measure(pipe, args.n, args.seed, args.steps, args.cfg, return_images=bool(args.grid))
    if args.grid:
        grid(res.pop("images")).save(args.grid)
        res.pop("prompts")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
