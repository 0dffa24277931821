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

from .. import progress
from ..generation.params import GenerationParams
from ..generation.pipeline import GenerationPipeline
from ..generation.sampling import generate
from ..grid import annotated_grid
from . import oracle
from .world import all_prompts, caption, partial_caption

RESOLUTION = 32
SAMPLER = "DDIM"        # the toy model's own scheduler: what it was pretrained and measured with


def prompt_set(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    combos = all_prompts()
    rng = np.random.default_rng(seed)
    picks = rng.permutation(len(combos))
    picks = np.concatenate([picks] * (n // len(combos) + 1))[:n]
    return [combos[i] for i in picks]


def sample(pipe, prompts: list[str], seeds: list[int], steps: int = 30, cfg: float = 5.0,
           sampler: str = SAMPLER) -> list[np.ndarray]:
    """uint8 (32, 32, 3) pictures, one per (prompt, seed), through the one sampling path
    (``pipe``: a GenerationPipeline, or a diffusers pipeline to wrap)."""
    pipeline = pipe if isinstance(pipe, GenerationPipeline) else GenerationPipeline(pipe)
    out = []
    with progress.task("sampling", len(prompts)) as bar:
        for prompt, seed in zip(prompts, seeds):
            params = GenerationParams(prompt, sampler=sampler, steps=steps, cfg_scale=cfg, seed=int(seed),
                                      width=RESOLUTION, height=RESOLUTION)
            out.append(oracle.to_array(generate(pipeline, params, task=bar)[0].image))
    return out


def measure(pipe, n: int = 128, seed: int = 0, steps: int = 30, cfg: float = 5.0,
            return_images: bool = False) -> dict:
    combos = prompt_set(n, seed)
    prompts = [caption(c, s, b) for c, s, b in combos]
    images = sample(pipe, prompts, [seed * 100_003 + i for i in range(n)], steps, cfg)
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
    """The pictures in rows of ``cols``, each scaled up ``scale`` times (nearest neighbour)."""
    from PIL import Image
    tiles = [Image.fromarray(im).resize((im.shape[1] * scale, im.shape[0] * scale), Image.NEAREST) for im in images]
    return annotated_grid(tiles, cols, pad=2 * scale)


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
    from ..models.loading import load_pipeline
    pipe = load_pipeline(args.model, dtype=torch.float32)
    res = measure(pipe, args.n, args.seed, args.steps, args.cfg, return_images=bool(args.grid))
    if args.grid:
        grid(res.pop("images")).save(args.grid)
        res.pop("prompts")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
