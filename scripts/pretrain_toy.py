#!/usr/bin/env python
"""Pretrain the toy base model (``--model toy``) from scratch on a CPU, reproducibly from a seed.

    python scripts/pretrain_toy.py                       # start, or resume, in .toy-pretrain/
    nohup nice -n 10 python scripts/pretrain_toy.py > .toy-pretrain/log.txt 2>&1 &   # in the background
    python scripts/pretrain_toy.py --export              # copy the best snapshot to src/dreambooth/data/toy_model
    python scripts/pretrain_toy.py --tune-decoder        # then tune the packaged VAE's decoder (about 10 minutes)
    python scripts/pretrain_toy.py --out .toy-distil --teacher toy --unet-channels 32,64,64 \
        --partial-from 0 --steps 6000 --decay-from 3000     # or distil it into a 4x smaller UNet
                                                            # (how the shipped UNet was made, from bf5cdda's)
    python scripts/pretrain_toy.py --out .toy-anneal --init-from toy --partial-from 0 --decay-from 1 \
        --steps 1400 --warmup 100                           # or go on training the shipped weights

Phases (each skipped when done): VAE (500 steps, about 10 minutes on one core), a cached dataset of
30,000 rendered and encoded pictures (about 2 minutes), then text encoder + UNet with EMA (about
1.3 s a step at batch 32 on one core; the shipped model's step count and oracle figures are in
``src/dreambooth/data/toy_model/toy_figures.json``). One thread by default (``--threads``): on a shared
machine it is the polite choice, and small convolutions gain little from more. State is saved every few minutes and on Ctrl-C /
SIGTERM; running the same command again resumes exactly where it stopped. Every ``--eval-every``
steps the EMA weights are measured with the oracle (``evals.jsonl``, ``latest/``, ``best/``).
``--tune-decoder`` trains the packaged VAE's decoder alone (encoder frozen, so the UNet's latents are
unchanged) for ``--decoder-steps``: the shipped VAE had it. ``--teacher DIR`` (``toy``: the packaged
model) distils that pipeline's UNet into a new one of ``--unet-channels``, keeping the teacher's VAE
and text encoder (about 0.7 s a step on one core for 32,64,64); ``--export`` then ships the student.
See ``dreambooth.toy.pretrain`` for the recipe.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from dreambooth.errors import UserError
from dreambooth.toy.pretrain import PretrainConfig, export, pretrain, tune_packaged_decoder


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    defaults = PretrainConfig()
    for f in fields(PretrainConfig):
        default = getattr(defaults, f.name)
        kind = float if f.name == "max_minutes" else type(default)
        parser.add_argument("--" + f.name.replace("_", "-"), type=kind, default=default,
                            help=f"(default: {default})")
    parser.add_argument("--export", action="store_true",
                        help="do not train: copy <out>/best (or --which) to the package's toy/model folder")
    parser.add_argument("--tune-decoder", action="store_true",
                        help="do not train: tune the decoder of the packaged (or --dest) toy model's VAE in place")
    parser.add_argument("--which", default="best", choices=["best", "latest"])
    parser.add_argument("--dest", default=None, help="export here instead of src/dreambooth/data/toy_model")
    args = parser.parse_args(argv)
    cfg = PretrainConfig(**{f.name: getattr(args, f.name) for f in fields(PretrainConfig)})
    if args.tune_decoder:
        print(tune_packaged_decoder(cfg, args.dest))
        return 0
    if args.export:
        print(export(cfg.out, args.dest, args.which))
        return 0
    pretrain(cfg)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as exc:     # a bad --teacher, say: one line, as the dreambooth command prints it
        sys.exit(f"error: {exc}")
