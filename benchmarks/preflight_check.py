"""The memory preflight's estimate against the measured peak of real `dreambooth train` runs.

    python benchmarks/preflight_check.py              # mid-size SD1, 128 px, prior: LoRA and full, fp32 and bf16
    python benchmarks/preflight_check.py --sd15       # also full-size SD1.5 LoRA at 512 px (minutes, ~10 GiB)
    python benchmarks/preflight_check.py --layouts    # bytes autograd keeps per block input (preflight.SAVED_BYTES)

Each case is one `dreambooth train` process with a fresh output (so its class images are made,
as in a first run); its peak is the process's maximum resident set size on the CPU (``os.wait4``),
or its peak allocated GPU memory on CUDA (the trainer's own figure, from its summary). The estimate
is ``dreambooth.training.preflight.estimate`` for the same settings; the done-when of issue 30 is a
ratio within 0.75-1.25. The mid-size model is benchmarks/train_step.py's (``build_mid``): the SD1.5
layout at a quarter of the UNet's width, full-size VAE and CLIP-L, random weights.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import SD15_UNET, SD1_MID_UNET, SDXL_UNET, build_full, build_mid  # noqa: E402

MID_CASES = [("LoRA fp32", dict(method="lora")),
             ("LoRA bf16", dict(method="lora", mixed_precision="bf16")),
             ("full + text encoder fp32", dict(method="full", train_text_encoder=True)),
             ("full + text encoder bf16", dict(method="full", train_text_encoder=True, mixed_precision="bf16"))]


def flags(settings: dict) -> list[str]:
    out = []
    for key, value in settings.items():
        name = "--" + key.replace("_", "-")
        out += [name] if value is True else [f"--no-{key.replace('_', '-')}"] if value is False else [name, str(value)]
    return out


def run_case(model: Path, photos: Path, work: Path, settings: dict) -> tuple[float, float, float]:
    """(estimated GiB, measured GiB, seconds) of one training run."""
    from dreambooth.models.families import adapter_for
    from dreambooth.models.loading import load_pipeline
    from dreambooth.training import preflight
    from dreambooth.training.config import build_config

    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    settings = {**dict(model=str(model), instance_dir=str(photos), instance_prompt="a photo of sks dog",
                       class_prompt="a photo of dog", num_class_images=4, class_steps=2, max_steps=3,
                       export_kohya=False, output=str(out)), **settings}
    cfg = build_config(None, settings)
    pipe = load_pipeline(str(model))
    family = adapter_for(pipe)
    cfg = cfg.resolve_defaults(pipe.unet.config.sample_size * pipe.vae_scale_factor)
    import torch
    device = "cuda" if torch.cuda.is_available() else "cpu"
    estimated = preflight.estimate(preflight.model_sizes(pipe, family), cfg, device).total / 2**30
    del pipe, family
    env = dict(os.environ, DREAMBOOTH_NO_PROGRESS="1")
    started = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "dreambooth", "train", *flags(settings)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status:
        raise SystemExit(f"training failed:\n{output[-2000:]}")
    if device == "cuda":
        measured = float(re.search(r"peak memory ([\d.]+) GiB", output).group(1))
    else:
        measured = usage.ru_maxrss / 2**20            # KiB on Linux
    return estimated, measured, time.time() - started


def layouts() -> None:
    """Bytes autograd keeps per element entering each kind of block, on three layouts (fp32, one
    forward with batch 2 at latent 32): the figures behind preflight.SAVED_BYTES."""
    import collections

    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.transformers.transformer_2d import Transformer2DModel
    kinds = {ResnetBlock2D: "resnet", BasicTransformerBlock: "transformer layer", Transformer2DModel: "transformer model"}
    for name, config in [("SD1 mid", SD1_MID_UNET), ("SD1.5", SD15_UNET),
                         ("SDXL, half width", dict(SDXL_UNET, block_out_channels=(160, 320, 640), attention_head_dim=(2, 4, 8)))]:
        for lora in (False, True):
            unet = UNet2DConditionModel(**config)
            unet.requires_grad_(not lora)
            if lora:
                from peft import LoraConfig
                unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
            stack, inputs, kept, seen = ["other"], collections.Counter(), collections.Counter(), set()
            for module in unet.modules():
                kind = kinds.get(type(module))
                if kind:
                    def enter(mod, args, kwargs, kind=kind):
                        stack.append(kind)
                        x = args[0] if args else kwargs.get("hidden_states")
                        inputs[kind] += x.numel()
                    def leave(*_):
                        stack.pop()              # returns None: the module's output stays as it is
                    module.register_forward_pre_hook(enter, with_kwargs=True)
                    module.register_forward_hook(leave)
            params = {p.untyped_storage().data_ptr() for p in unet.parameters()}

            def pack(t):
                ptr = t.untyped_storage().data_ptr()
                if ptr not in seen and ptr not in params:
                    seen.add(ptr)
                    kept[stack[-1]] += t.untyped_storage().nbytes()
                return t
            batch = 2
            added = {"text_embeds": torch.randn(batch, 1280), "time_ids": torch.randn(batch, 6)} \
                if config.get("addition_embed_type") else None
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                unet(torch.randn(batch, 4, 32, 32), torch.tensor([10] * batch),
                     torch.randn(batch, 77, config["cross_attention_dim"]), added_cond_kwargs=added)
            figures = ", ".join(f"{k} {kept[k] / inputs[k]:.1f}" for k in kinds.values() if inputs[k])
            print(f"{name:18s} {'lora' if lora else 'full'}: bytes kept per input element: {figures}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sd15", action="store_true", help="also full-size SD1.5 LoRA at 512 px (minutes, ~10 GiB)")
    ap.add_argument("--no-mid", action="store_true", help="skip the mid-size cases")
    ap.add_argument("--layouts", action="store_true", help="only the bytes-per-element figures")
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "dreambooth-preflight"))
    args = ap.parse_args()
    if args.layouts:
        return layouts()
    cache = Path(args.cache)
    photos = cache / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(photos / f"{i}.png")
    cases = [] if args.no_mid else [("mid", name, dict(settings, resolution=128)) for name, settings in MID_CASES]
    if args.sd15:
        cases.append(("sd15", "SD1.5 LoRA fp32 512 px", dict(method="lora", resolution=512, max_steps=2)))
    print(f"{'model':6s} {'case':26s} {'estimate':>9s} {'measured':>9s} {'ratio':>6s} {'seconds':>8s}")
    for size, name, settings in cases:
        model = cache / f"sd1-{size}"
        if not (model / "model_index.json").exists():
            model.mkdir(parents=True, exist_ok=True)
            build_mid(model) if size == "mid" else build_full("sd1", model)
        estimated, measured, seconds = run_case(model, photos, cache, settings)
        print(f"{size:6s} {name:26s} {estimated:7.2f} G {measured:7.2f} G {estimated / measured:6.2f} {seconds:8.0f}",
              flush=True)


if __name__ == "__main__":
    main()
