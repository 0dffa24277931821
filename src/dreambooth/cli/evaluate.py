"""``dreambooth evaluate`` (DINO, CLIP-I, CLIP-T, PRES, DIV of a folder of generations) and
``dreambooth bench`` (the DreamBench protocol for one trained subject)."""
from __future__ import annotations

from pathlib import Path

import click

from ..devices import DTYPES
from ..errors import UserError
from ..evaluation.dreambench import (PROTOCOL, bench_photos, check_bench_output, check_bench_settings,
                                     protocol_params, run_bench, subject_settings)
from ..evaluation.folders import generated_identifier
from ..evaluation.metrics import Evaluator, evaluate_dirs, format_summary
from ..evaluation.prompts import DEFAULT_IDENTIFIER
from ..evaluation.trained import check_identifier_known, first_trained_subject
from ..generation.loras import parse_lora_spec
from ..generation.params import GenerationParams
from ..generation.pipeline import load_generation_pipeline
from ..models.specs import is_lora_output, resolve_model, trained_clip_skip

DINO_HELP = "DINO ViT: a folder or a hub id in the local cache (default facebook/dino-vits16)."
CLIP_HELP = "CLIP model: a folder or a hub id in the local cache (default openai/clip-vit-base-patch32)."


@click.command("evaluate")
@click.option("--real", required=True, type=click.Path(file_okay=False), help="Folder of real photos of the subject.")
@click.option("--generated", required=True, type=click.Path(file_okay=False),
              help="Folder of generated images (grid-*.png, the grids of a prompt matrix or a plot, are left out).")
@click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False),
              help="Prompts of the generated images: a text file, one line per image in sorted file-name order, "
                   "a JSON list in that order, or a JSON object file name -> prompt (default: each image's infotext).")
@click.option("--identifier", default=None, help="Identifier token removed from prompts for CLIP-T (any case) "
              "[default: a bench run's own, else sks].")
@click.option("--keep-identifier", is_flag=True, help="Keep the identifier in the prompt for CLIP-T.")
@click.option("--class-generated", type=click.Path(file_okay=False),
              help="Generations of the class prompt (e.g. 'a dog') by the fine-tuned model: adds PRES (lower is better).")
@click.option("--div", is_flag=True, help="Also compute DIV (mean pairwise LPIPS per prompt; needs the lpips package).")
@click.option("--dino-model", default=None, help=DINO_HELP)
@click.option("--clip-model", default=None, help=CLIP_HELP)
@click.option("--device", default=None, help="torch device (default: cuda when available, else cpu).")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1), help="Images per forward pass.")
@click.option("--output", required=True, type=click.Path(file_okay=False), help="Folder for metrics.json.")
@click.option("--overwrite", is_flag=True, help="Replace the metrics.json an earlier evaluation left in --output.")
def evaluate_cmd(real, generated, prompts_file, identifier, keep_identifier, class_generated, div, dino_model,
                 clip_model, device, batch_size, output, overwrite):
    """Score generated images against real photos of the subject, as the DreamBooth paper does.

    DINO and CLIP-I: mean cosine similarity over all (generated, real) pairs of image embeddings.
    CLIP-T: mean cosine between each generated image and its prompt (identifier removed), as a raw
    cosine, not x100. Writes OUTPUT/metrics.json.
    """
    identifier = identifier or generated_identifier(generated) or DEFAULT_IDENTIFIER
    result = evaluate_dirs(real, generated, output, prompts_file=prompts_file, identifier=identifier,
                           keep_identifier=keep_identifier, class_generated_dir=class_generated, div=div,
                           dino_model=dino_model, clip_model=clip_model, device=device, batch_size=batch_size,
                           overwrite=overwrite)
    click.echo(format_summary(result))
    click.echo(f"wrote {Path(output) / 'metrics.json'}")


@click.command("bench")
@click.option("--model", required=True, help="The trained output: a full model (diffusers folder, single file or "
                                            "cached hub id) or a LoRA training output folder (its base model is read "
                                            "from training_args.json); or a base model with --lora.")
@click.option("--model-config", help="For a single-file --model: the diffusers folder or cached hub id of its configs.")
@click.option("--lora", "loras", multiple=True, help="LoRA file or folder to apply, PATH or PATH:WEIGHT (repeatable).")
@click.option("--vae", default=None, help="Replace the VAE.")
@click.option("--real", required=True, type=click.Path(file_okay=False),
              help="Folder of the subject's real photos (DreamBench's: github.com/google/dreambooth, dataset/SUBJECT).")
@click.option("--subject", default=None, help="A DreamBench subject name (e.g. dog, backpack): sets --class and --kind.")
@click.option("--class", "class_name", default=None,
              help="The subject's class noun, e.g. dog (default: from the model's class prompt, if trained with one).")
@click.option("--kind", type=click.Choice(["object", "live"]), default=None,
              help="live (pets and other animals) or object: picks the paper's 25 prompts.")
@click.option("--identifier", default=None,
              help="The identifier the model was trained with (default: from its training_args.json, else sks).")
@click.option("--max-prompts", default=None, type=click.IntRange(min=1),
              help="Only the first N of the 25 prompts: a quick check, off the protocol (report.md says so).")
@click.option("--images-per-prompt", default=PROTOCOL["images_per_prompt"], show_default=True,
              type=click.IntRange(min=1), help="Images per prompt (the paper: 4).")
@click.option("--sampler", default=GenerationParams.sampler, show_default=True, help="WebUI sampler name.")
@click.option("--schedule", default=GenerationParams.schedule, show_default=True, help="Schedule type.")
@click.option("--steps", default=PROTOCOL["steps"], show_default=True, type=click.IntRange(min=1), help="Sampling steps.")
@click.option("--cfg", default=PROTOCOL["cfg_scale"], show_default=True, type=float, help="Classifier-free guidance scale.")
@click.option("--seed", default=PROTOCOL["seed"], show_default=True, type=int,
              help="First seed; image j of each prompt uses seed+j.")
@click.option("--size", default=None, type=click.IntRange(min=8), help="Image size (default: the model's).")
@click.option("--negative-prompt", default="", help="Negative prompt.")
@click.option("--clip-skip", default=None, type=int,
              help="The WebUI's Clip skip (SD1). Default: a training output's own, else 1.")
@click.option("--fast-batches/--one-by-one", default=True, show_default=True,
              help="Each prompt's images through the UNet at once (--from-image replays the batch), or one by one.")
@click.option("--pres", is_flag=True, help="Also generate class-prompt images ('a dog') and report PRES.")
@click.option("--pres-images", default=16, show_default=True, type=click.IntRange(min=1), help="Class images for PRES.")
@click.option("--div", is_flag=True, help="Also report DIV (LPIPS; needs the lpips package and its weights).")
@click.option("--dino-model", default=None, help=DINO_HELP)
@click.option("--clip-model", default=None, help=CLIP_HELP)
@click.option("--device", default=None, help="torch device (default: cuda when available, else cpu).")
@click.option("--dtype", type=click.Choice(list(DTYPES)), default="auto", show_default=True,
              help="Pipeline precision (auto: fp16 on CUDA, bf16 on a CPU that has it in hardware, else fp32).")
@click.option("--output", required=True, type=click.Path(file_okay=False), help="Folder for images, grids and reports.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier run's images, grids and reports in --output.")
def bench_cmd(model, model_config, loras, vae, real, subject, class_name, kind, identifier, max_prompts, images_per_prompt, sampler,
              schedule, steps, cfg, seed, size, negative_prompt, clip_skip, fast_batches, pres, pres_images, div,
              dino_model, clip_model, device, dtype, output, overwrite):
    """Run the DreamBench protocol for one subject: the paper's 25 prompts x N images, scored with
    DINO, CLIP-I and CLIP-T; writes report.json, report.md and a grid per prompt.

    DreamBench's photos (--real) are the DreamBooth dataset: github.com/google/dreambooth, folder
    dataset/, one folder per subject.
    """
    lora_specs = [parse_lora_spec(s) for s in loras]
    if not is_lora_output(model):                # a model that is not there, named before anything else
        resolve_model(model, "--model")
    trained = first_trained_subject([spec for spec, _ in lora_specs] + [model])
    class_name, kind = subject_settings(subject, class_name, kind, trained and trained.class_name)
    check_identifier_known(trained, identifier)
    check_bench_settings(images_per_prompt, div, seed)             # before the models load
    if size is not None and size % 8:
        raise UserError(f"--size {size}: must be a multiple of 8")
    check_bench_output(output, overwrite, [real])
    real_files = bench_photos(real)
    if clip_skip is None:                                   # a training output, sampled as it was trained
        clip_skip = trained_clip_skip(model) or 1
    params = protocol_params(negative_prompt=negative_prompt, sampler=sampler, schedule=schedule, steps=steps,
                             cfg_scale=cfg, seed=seed, width=size, height=size, clip_skip=clip_skip).check()
    evaluator = Evaluator(dino_model, clip_model, device).load()
    pipeline = load_generation_pipeline(model, lora_specs, vae, device, DTYPES[dtype],
                                        model_config=model_config)
    settings = {"subject": subject, "model": model, "loras": list(loras), "vae": vae, "size": size, "real": str(real)}
    report = run_bench(pipeline, params, real_files, class_name, kind, output, identifier, images_per_prompt,
                       pres, pres_images, div, evaluator, settings, fast_batches, max_prompts, overwrite)
    click.echo(format_summary({**report["metrics"], "unavailable": report.get("unavailable", {})}))
    click.echo(f"wrote {Path(output) / 'report.md'}")


def register(group: click.Group) -> None:
    group.add_command(evaluate_cmd)
    group.add_command(bench_cmd)
