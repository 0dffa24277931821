"""Training-step speed and peak memory through the real loop, on real architectures with random weights.

    python benchmarks/train_step.py --family sd1 --size tiny            # any machine, seconds
    python benchmarks/train_step.py --family sd1 --size full --method lora --mixed-precision fp16   # a GPU
    python benchmarks/train_step.py --family sdxl --size full --gradient-checkpointing --mixed-precision bf16
    python benchmarks/train_step.py --size narrow --prior --mixed-precision bf16 --resolution 64 --profile   # host cost
    python benchmarks/train_step.py --size narrow --prior --mixed-precision bf16 --resolution 64 --free-replay  # its rest

Speed does not depend on weight values, so full-size SD1.5/SDXL layouts with random weights measure
what a real checkpoint would cost. ``--size narrow`` keeps a full-size UNet's layout (every block,
layer and LoRA target) at a few channels: its step launches the same operations with almost no
arithmetic, so on any machine it measures the host's share of a step, which bounds a GPU's LoRA
step (the SD1.5 narrow LoRA step makes the 859 matrix products and 1,500 copies a step that the
H200's profile counted). ``--free-replay`` stands in for ``--cuda-graphs`` with a replay that costs
nothing: what is left is the host's work outside the UNet. The pipeline is built once under --cache (a few GB at full size),
then ``Trainer`` runs --warmup steps and --steps timed steps on generated photos. Prints one line
of figures.
"""
from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# Published configs of the full-size models (layouts only; no weights involved).
SD15_UNET = dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, sample_size=64, cross_attention_dim=768,
                 attention_head_dim=8, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SDXL_UNET = dict(block_out_channels=(320, 640, 1280), layers_per_block=2, sample_size=128, cross_attention_dim=2048,
                 attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
# The mid-size SD1 of the side-by-side benchmark: the SD1.5 layout at a quarter of the UNet's width (142M
# parameters), with the full-size VAE and CLIP-L.
SD1_MID_UNET = dict(SD15_UNET, block_out_channels=(128, 256, 512, 512))
# The same layouts at a few channels (norm groups of 32 and SDXL's head counts still divide them).
NARROW_UNET = {"sd1": dict(SD15_UNET, block_out_channels=(32, 32, 64, 64)),
               "sdxl": dict(SDXL_UNET, block_out_channels=(160, 160, 160))}
VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
           down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12, hidden_act="quick_gelu")
CLIP_G = dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32, hidden_act="gelu",
              projection_dim=1280)


def build_full(family: str, directory: Path, unet: dict | None = None) -> Path:
    """A diffusers folder of the full-size ``family`` layout (``unet``: another UNet config), random weights."""
    from dreambooth.testing.tiny import TINY_WORDS
    from dreambooth.testing.vocab import write_clip_tokenizer
    tok = write_clip_tokenizer(list(TINY_WORDS), directory / "_tok")
    ids = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):    # random init of 3B weights: seconds on a GPU
        pipe = _full_pipeline(family, tok, ids, unet)
    pipe.save_pretrained(directory, safe_serialization=True)
    return directory


def _full_pipeline(family: str, tok, ids: dict, unet: dict | None):
    from diffusers import (AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline,
                           StableDiffusionXLPipeline, UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    if family == "sd1":
        pipe = StableDiffusionPipeline(
            vae=AutoencoderKL(**VAE, sample_size=512), text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L, **ids)),
            tokenizer=tok, unet=UNet2DConditionModel(**(unet or SD15_UNET)),
            scheduler=DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    else:
        pipe = StableDiffusionXLPipeline(
            vae=AutoencoderKL(**VAE, sample_size=1024), text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L, **ids)),
            text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G, **ids)), tokenizer=tok, tokenizer_2=tok,
            unet=UNet2DConditionModel(**(unet or SDXL_UNET)),
            scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"))
    return pipe


def build_mid(directory: Path) -> Path:
    return build_full("sd1", directory, SD1_MID_UNET)


def stand_in_for_graphs() -> None:
    """--free-replay: ``make_graphed_callables`` stood in for by a replay that runs nothing and returns
    a fixed prediction and fixed weight gradients, as a CUDA graph's replay costs the host one launch.
    What the step then takes is the host's work outside the UNet (noise, loss, clipping, optimizer),
    on any machine. The trainer's one-process check is told it has a GPU; the losses are meaningless."""
    from dreambooth.training import trainer as trainer_module

    def capture(module, sample, allow_unused_input=False):
        weights = [p for p in module.parameters() if p.requires_grad]
        with torch.no_grad(), torch.autocast(sample[0].device.type, torch.bfloat16):
            prediction = module(*sample).detach()
        grads = [torch.zeros_like(p) for p in weights]

        class Replay(torch.autograd.Function):
            @staticmethod
            def forward(ctx, *tensors):
                ctx.inputs = len(tensors) - len(weights)
                return prediction.view_as(prediction)

            @staticmethod
            def backward(ctx, _):
                return (None,) * ctx.inputs + tuple(g.detach() for g in grads)   # as torch's: no copy
        return lambda *inputs: Replay.apply(*inputs, *weights)

    torch.cuda.make_graphed_callables = capture
    check = trainer_module.check_one_process_options
    trainer_module.check_one_process_options = lambda cfg, *rest: check(cfg.replace(cuda_graphs=False), *rest)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", choices=["sd1", "sd2", "sdxl"], default="sd1")
    ap.add_argument("--size", choices=["tiny", "mid", "full", "narrow"], default="tiny",
                    help="narrow: a full-size UNet layout at a few channels, for the host's share of a step")
    ap.add_argument("--method", choices=["full", "lora"], default="lora")
    ap.add_argument("--train-text-encoder", action="store_true")
    ap.add_argument("--mixed-precision", default="no")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--use-8bit-adam", action="store_true")
    ap.add_argument("--resolution", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--prior", action="store_true", help="prior preservation (doubles the batch; 4 class images)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "dreambooth-bench"))
    ap.add_argument("--output", default=None, help="the run's output folder (default: OUT under --cache)")
    ap.add_argument("--model", default=None, help="a diffusers folder to use instead of building one under --cache")
    ap.add_argument("--profile", action="store_true", help="profile the timed steps: top ops, and how busy the GPU was")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--cuda-graphs", action="store_true")
    ap.add_argument("--free-replay", action="store_true",
                    help="any machine: --cuda-graphs with a replay that costs nothing, for what the rest of the step "
                         "costs the host once the UNet is a graph (use with --size narrow)")
    ap.add_argument("--fused-backward-pass", action="store_true")
    ap.add_argument("--gpu-memory", type=float, default=None, metavar="GIB",
                    help="act as a card of this size: torch's allocator refuses more (set_per_process_memory_fraction) "
                         "and the preflight sees it as the card's memory")
    ap.add_argument("--validate", action="store_true",
                    help="validation images (one prompt, one seed, 10 sampling steps) before the first step and "
                         "after the last, outside the timed steps; the line counts those made")
    ap.add_argument("--sync-every-step", action="store_true",
                    help="read each step's loss at once (a host sync per step), as before the loss was read a step late")
    args = ap.parse_args()
    if args.free_replay:
        args.cuda_graphs = True
        stand_in_for_graphs()
    if args.size in ("full", "narrow") and args.family not in NARROW_UNET:
        ap.error(f"--size {args.size}: the full-size layouts are sd1 (SD1.5) and sdxl")
    os.environ.setdefault("DREAMBOOTH_NO_PROGRESS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")            # random weights: nothing to fetch (validation's metrics off)

    from dreambooth.training.config import build_config
    from dreambooth.testing.tiny import save_tiny
    from dreambooth.training.callbacks import TrainingCallback
    from dreambooth.training.trainer import Trainer
    model = Path(args.model or Path(args.cache) / f"{args.family}-{args.size}")
    if not (model / "model_index.json").exists():
        model.mkdir(parents=True, exist_ok=True)
        {"tiny": lambda: save_tiny(args.family, model), "mid": lambda: build_mid(model),
         "full": lambda: build_full(args.family, model),
         "narrow": lambda: build_full(args.family, model, NARROW_UNET[args.family])}[args.size]()
    photos = Path(args.cache) / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (1024, 1024, 3), dtype=np.uint8)).save(photos / f"{i}.png")
    cfg = build_config(None, dict(
        model=str(model), instance_dir=str(photos), instance_prompt="a photo of sks dog",
        class_prompt="a photo of dog" if args.prior else None, num_class_images=4, class_steps=2,
        method=args.method, train_text_encoder=args.train_text_encoder, mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing, use_8bit_adam=args.use_8bit_adam,
        compile=args.compile, cuda_graphs=args.cuda_graphs, fused_backward_pass=args.fused_backward_pass,
        resolution=args.resolution, batch_size=args.batch_size, max_steps=args.warmup + args.steps,
        output=args.output or str(Path(args.cache) / "out"), overwrite=True, export_kohya=False,
        **(dict(validate_every=args.warmup + args.steps, validation_prompts=["a photo of sks dog"], validation_seeds=[0],
                validation_steps=10) if args.validate else {})))
    if args.gpu_memory and torch.cuda.is_available():     # the model built here, if it was, is gone: the run alone
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.set_per_process_memory_fraction(args.gpu_memory * 2**30 / torch.cuda.mem_get_info()[1])
    trainer = Trainer(cfg, []).setup()
    if args.sync_every_step:     # the trainer reads losses late only with fused AdamW
        getattr(trainer.optimizer, "optimizer", trainer.optimizer).defaults["fused"] = False
    cuda = torch.cuda.is_available()

    class Clock(TrainingCallback):
        """Times the steps after the warm-up, not the writing of weights that follows them."""

        def on_step_end(self, run, step):
            if step.step in (args.warmup, args.warmup + args.steps):
                if cuda:
                    torch.cuda.synchronize()
                if step.step == args.warmup:
                    if cuda:
                        self.setup_peak = torch.cuda.max_memory_allocated() / 2**30
                        torch.cuda.reset_peak_memory_stats()
                    if args.profile:
                        self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU] + (
                            [torch.profiler.ProfilerActivity.CUDA] if cuda else []))
                        self.profiler.__enter__()
                    self.start = time.perf_counter()
                else:
                    self.end = time.perf_counter()
                    if args.profile:
                        self.profiler.__exit__(None, None, None)

        validations = 0

        def on_validation(self, run, validation):
            self.validations += 1        # one skipped for want of memory is not counted

    clock = Clock()
    trainer.callbacks.append(clock)
    trainer.fit()
    elapsed = clock.end - clock.start
    if args.profile:
        events = clock.profiler.key_averages()
        key = "self_device_time_total" if cuda else "self_cpu_time_total"
        print(events.table(sort_by=key, row_limit=20))
        if cuda:       # kernels' time against the wall: below 1, the GPU waits for the host
            busy = sum(e.self_device_time_total for e in events) / 1e6 / elapsed
            print(f"GPU busy {busy:.0%} of the timed wall (profiled; the profiler itself slows the host)")
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    # replayed graphs allocate nothing: their activations show in what the allocator holds (reserved)
    reserved = torch.cuda.max_memory_reserved() / 2**30 if cuda else float("nan")
    device = torch.cuda.get_device_name() if cuda else f"cpu x{torch.get_num_threads()}"
    validated = (f"validations={clock.validations} validation-parking={trainer.memory.validation_parking} "
                 if args.validate else "")
    print(f"{args.family}-{args.size} {args.method} te={args.train_text_encoder} res={trainer.config.resolution} "
          f"batch={args.batch_size}{'+prior' if args.prior else ''} mp={args.mixed_precision} gc={args.gradient_checkpointing} "
          f"8bit={args.use_8bit_adam} compile={args.compile} graphs={args.cuda_graphs} fused={args.fused_backward_pass} sync={args.sync_every_step} "
          f"card={(args.gpu_memory or 'all') if cuda else '-'} GiB class-parking={trainer.memory.class_parking} "
          f"{validated}| {elapsed / args.steps:.3f} s/step, {args.steps / elapsed:.2f} it/s, "
          f"peak GPU memory {peak:.2f} GiB (before the timed steps {getattr(clock, 'setup_peak', float('nan')):.2f}), "
          f"reserved {reserved:.2f} GiB | {device}")


if __name__ == "__main__":
    main()
