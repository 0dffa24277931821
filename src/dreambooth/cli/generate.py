"""``dreambooth generate``: the WebUI's txt2img / img2img on any model we can load or train."""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import UserError


def _explicit(ctx: click.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


@click.command("generate", context_settings={"show_default": True})
@click.option("--model", "-m", help="Base model (folder, .safetensors, hub id, toy), a full training output, "
              "or a LoRA training output folder (its base model comes from training_args.json).")
@click.option("--lora", "loras", multiple=True, metavar="DIR_OR_FILE[:WEIGHT]",
              help="LoRA to apply (diffusers or kohya format), weight 1 by default; repeatable.")
@click.option("--vae", help="Replacement VAE (folder, file or hub id).")
@click.option("--prompt", "-p", help="Prompt, in the WebUI's syntax: (emphasis:1.2), [from:to:when], [a|b], BREAK.")
@click.option("--negative-prompt", "-n", default="", help="Negative prompt, same syntax.")
@click.option("--sampler", default="Euler a", help="WebUI sampler name (see --list-samplers).")
@click.option("--schedule", default="Automatic", help="Schedule type: Automatic, Uniform, Karras, Exponential, "
              "SGM Uniform, Beta (where the sampler supports it).")
@click.option("--steps", default=20, type=int, help="Sampling steps.")
@click.option("--cfg", "cfg_scale", default=7.0, type=float, help="CFG scale.")
@click.option("--seed", default=-1, type=int, help="Seed of the first image (image i gets seed+i); -1: random.")
@click.option("--width", type=int, help="Width in pixels (multiple of 8). Default: the model's size.")
@click.option("--height", type=int, help="Height in pixels (multiple of 8). Default: the model's size.")
@click.option("--batch-size", default=1, type=int, help="Images per batch.")
@click.option("--batch-count", default=1, type=int, help="Number of batches.")
@click.option("--output", "-o", default="outputs", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the images (NNNNN-<seed>.png, never overwritten).")
@click.option("--init-image", type=click.Path(path_type=Path), help="img2img: start from this image.")
@click.option("--strength", default=0.75, type=float, help="img2img/inpaint denoising strength.")
@click.option("--mask", type=click.Path(path_type=Path), help="Inpainting mask for --init-image (white = repaint).")
@click.option("--prompt-matrix", is_flag=True, help="Treat 'a|b|c' as a prompt matrix: every combination, one seed, "
              "and a labelled grid.")
@click.option("--x", "x_axis", metavar="'NAME: V1, V2'", help="X/Y/Z plot axis, e.g. 'Sampler: Euler a, DDIM', "
              "'CFG scale: 3, 7, 11', 'Steps: 10-30 (+10)', 'Prompt S/R: dog, cat'.")
@click.option("--y", "y_axis", metavar="'NAME: V1, V2'", help="Y axis of the plot.")
@click.option("--z", "z_axis", metavar="'NAME: V1, V2'", help="Z axis of the plot (one grid per value).")
@click.option("--from-image", type=click.Path(path_type=Path), help="Re-create an image from the infotext in its "
              "PNG; options given explicitly override it.")
@click.option("--list-samplers", is_flag=True, help="Print the sampler table and exit.")
@click.option("--device", help="Device (cuda, cuda:1, mps, cpu). Default: the best available.")
@click.option("--fast-batches", is_flag=True, help="Run a batch through the UNet at once (faster on GPUs); an image may "
              "then differ slightly from the same seed made alone. Default: image by image, bit-exact.")
@click.pass_context
def generate_command(ctx, model, loras, vae, prompt, negative_prompt, sampler, schedule, steps, cfg_scale, seed,
                     width, height, batch_size, batch_count, output, init_image, strength, mask, prompt_matrix,
                     x_axis, y_axis, z_axis, from_image, list_samplers, device, fast_batches):
    """Generate images like the AUTOMATIC1111 WebUI's txt2img / img2img."""
    from ..samplers import sampler_table
    if list_samplers:
        click.echo(sampler_table())
        return

    from ..generate import (GenerationParams, generate_images, load_generation_pipeline, parse_lora_spec,
                            sources_from_infotext)
    from ..grids import parse_axis, run_prompt_matrix, run_xyz
    from ..infotext import parse_generation_parameters, read_infotext
    from ..samplers import resolve

    values = dict(prompt=prompt, negative_prompt=negative_prompt, sampler=sampler, schedule=schedule, steps=steps,
                  cfg_scale=cfg_scale, seed=seed, width=width, height=height, batch_size=batch_size,
                  batch_count=batch_count, init_image=init_image, strength=strength, mask=mask)
    if from_image is not None:
        if not Path(from_image).is_file():
            raise UserError(f"--from-image {from_image}: no such file")
        text = read_infotext(from_image)
        if not text:
            raise UserError(f"--from-image {from_image}: the image carries no generation parameters")
        info = parse_generation_parameters(text)
        explicit = {k: v for k, v in values.items() if _explicit(ctx, k)}
        params = GenerationParams.from_infotext(info, **explicit)
        recorded_model, recorded_loras = sources_from_infotext(info)
        if model is None:
            model = recorded_model
            if model is None:
                raise UserError(f"--from-image {from_image}: made with Model: {info.get('Model', '?')} "
                                f"(hash {info.get('Model hash', '?')}), not found here; pass --model")
            if not loras and recorded_loras:
                loras = tuple(f"{spec}:{weight:g}" for spec, weight in recorded_loras)
        if info.get("Lora weights") and not loras:
            click.echo(f"note: the image was made with LoRAs ({info['Lora weights']}); pass --lora to apply them",
                       err=True)
    else:
        if model is None:
            raise UserError("--model: required (or --from-image PNG, or --list-samplers)")
        if prompt is None:
            raise UserError("--prompt: required")
        params = GenerationParams(**values)

    # Check what can be checked before the (slow) model load.
    if prompt_matrix and (x_axis or y_axis or z_axis):
        raise UserError("--prompt-matrix and --x/--y/--z: use one or the other")
    resolve(params.sampler, params.schedule)
    for flag, axis in (("--x", x_axis), ("--y", y_axis), ("--z", z_axis)):
        if axis:
            parse_axis(axis, flag)
    for flag, path in (("--init-image", params.init_image), ("--mask", params.mask)):
        if path is not None and not Path(path).is_file():
            raise UserError(f"{flag} {path}: no such file")
    lora_specs = [parse_lora_spec(s) for s in loras]
    for spec, _ in lora_specs:
        if not Path(spec).expanduser().exists():
            raise UserError(f"--lora {spec}: no such file or folder")

    pipe = load_generation_pipeline(model, lora_specs, vae=vae, device=device)
    if prompt_matrix:
        result = run_prompt_matrix(pipe, params, output, fast_batches=fast_batches)
        images, grid = result.images, result.grid_path
    elif x_axis or y_axis or z_axis:
        result = run_xyz(pipe, params, x_axis, y_axis, z_axis, output, fast_batches=fast_batches)
        images, grid = result.images, result.grid_path
    else:
        images, grid = generate_images(pipe, params, output, fast_batches=fast_batches), None
    click.echo(f"wrote {len(images)} image{'s' if len(images) != 1 else ''}" + (" and a grid" if grid else "")
               + f" to {output}:", err=True)
    for image in images:
        click.echo(str(image.path))
    if grid:
        click.echo(str(grid))


def register(group: click.Group) -> None:
    group.add_command(generate_command)
