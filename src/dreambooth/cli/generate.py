"""``dreambooth generate``: the WebUI's txt2img / img2img on any model we can load or train."""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import click

from .. import progress
from ..devices import DTYPES
from ..errors import UserError
from ..generation.hires import HIRES_UPSCALERS
from ..generation.infotext import not_made_here, parse_generation_parameters, read_infotext
from ..generation.loras import LoraLibrary, lora_from_path, parse_lora_spec
from ..generation.masks import MASKED_CONTENT
from ..generation.params import GenerationParams
from ..generation.pipeline import load_generation_pipeline, recorded_settings, sources_from_infotext
from ..generation.resizing import RESIZE_MODES
from ..generation.samplers import sampler_table
from ..generation.sampling import generate
from ..generation.recorded import located
from ..generation.xyz_infotext import plot_from_infotext
from ..generation.xyz import AXES, check_plot_size, parse_axis, prompt_matrix_prompts, run_prompt_matrix, run_xyz
from ..models.specs import trained_clip_skip
from ..outputs import GRID_PREFIX, TRAINING_ARGS_FILE, check_output_folder


class GenerationInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) while generating; its text, which the CLI prints, says what was already written."""


def _pngs(folder: Path) -> set[str]:
    """The PNG files in ``folder`` that hold something (a name claimed for an image not yet written is empty)."""
    try:
        return {p.name for p in folder.glob("*.png") if p.stat().st_size > 0} if folder.is_dir() else set()
    except OSError:
        return set()


def _interrupted(output: Path, before: set[str]) -> GenerationInterrupted:
    """What an interrupted run leaves: the images it wrote (each is written whole once its batch is made)."""
    new = [name for name in _pngs(output) - before if not name.startswith(GRID_PREFIX)]
    if not new:
        return GenerationInterrupted(f"interrupted before any image was written to {output}/")
    return GenerationInterrupted(f"interrupted: {len(new)} image{'s' if len(new) != 1 else ''} written to {output}/ (kept)")


def _explicit(ctx: click.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


def _check(ctx: click.Context, params: GenerationParams, from_image: Path | None) -> None:
    """``params.check()``; a bad value that came from ``--from-image``'s infotext, not from a flag given,
    is said to be the image's."""
    try:
        params.check()
    except UserError as exc:
        flag = str(exc).split(" ", 1)[0].rstrip(":")
        option = next((p for p in ctx.command.params if flag in p.opts), None)
        if from_image is None or (option is not None and _explicit(ctx, option.name)):
            raise
        raise UserError(f"--from-image {from_image}: its infotext gives {exc}") from None


@click.command("generate", context_settings={"show_default": True})
@click.option("--model", "-m", help="Base model (folder, .safetensors, hub id, toy), a full training output, "
              "or a LoRA training output folder (its base model comes from training_args.json).")
@click.option("--model-config", help="For a single-file --model whose configs are not cached: the diffusers folder "
              "or cached hub id of its base model.")
@click.option("--lora", "loras", multiple=True, metavar="DIR_OR_FILE[:WEIGHT]",
              help="LoRA to apply (diffusers or kohya format), weight 1 by default; repeatable. Recorded in the "
              "infotext's prompt as <lora:name:weight>, as A1111 writes it.")
@click.option("--lora-dir", "lora_dirs", multiple=True, type=click.Path(file_okay=False),
              help="Folder of LoRA files and LoRA training outputs that <lora:name:weight> in a prompt may name "
              "(training outputs made here are found without it); repeatable.")
@click.option("--vae", help="Replacement VAE (folder, file or hub id).")
@click.option("--prompt", "-p", help="Prompt, in the WebUI's syntax: (emphasis:1.2), [from:to:when], [a|b], BREAK, "
              "<lora:name:weight>.")
@click.option("--negative-prompt", "-n", default="", help="Negative prompt, same syntax.")
@click.option("--sampler", default="Euler a", help="WebUI sampler name (see --list-samplers).")
@click.option("--schedule", default="Automatic", help="Schedule type: Automatic, Uniform, Karras, Exponential, "
              "SGM Uniform, Beta (where the sampler supports it).")
@click.option("--steps", default=20, type=int, help="Sampling steps.")
@click.option("--cfg", "cfg_scale", default=7.0, type=float, help="CFG scale.")
@click.option("--seed", default=-1, type=int, help="Seed of the first image (image i gets seed+i); -1: random.")
@click.option("--width", type=int, help="Width in pixels (multiple of 8). Default: the model's size.")
@click.option("--height", type=int, help="Height in pixels (multiple of 8). Default: the model's size.")
@click.option("--clip-skip", default=1, type=int, help="The WebUI's Clip skip: the text encoder stops this many "
              "layers from its end (2 for many anime SD1.5 models; 1 to 12). SD1 only: SD2 and SDXL, as in the WebUI, "
              "are left as they are. Default for a dreambooth training output: the clip skip it was trained at.")
@click.option("--batch-size", default=1, type=int, help="Images per batch.")
@click.option("--batch-count", default=1, type=int, help="Number of batches.")
@click.option("--output", "-o", default="outputs", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the images (NNNNN-<seed>.png, never overwritten).")
@click.option("--init-image", type=click.Path(path_type=Path), help="img2img: start from this image.")
@click.option("--strength", default=0.75, type=float, help="img2img/inpaint (and --hires) denoising strength.")
@click.option("--resize-mode", type=click.Choice(RESIZE_MODES, case_sensitive=False), default="Just resize",
              show_default=True, help="img2img, where --init-image's proportions differ from --width x --height: "
              "stretch it, scale it to cover and crop the overhang, or scale it to fit and fill the bars with its edges "
              "(the WebUI's Resize mode).")
@click.option("--mask", type=click.Path(path_type=Path), help="Inpainting mask for --init-image (white = repaint).")
@click.option("--mask-blur", default=4, type=int, show_default=True,
              help="Inpainting: the mask's edge feathered by a Gaussian of this many pixels (the WebUI's Mask blur; "
              "0: a hard edge).")
@click.option("--only-masked", is_flag=True, help="Inpainting: sample only the masked area (with --masked-padding around "
              "it) at the full --width x --height, then put it back: the WebUI's Inpaint area 'Only masked'.")
@click.option("--masked-padding", default=32, type=int, show_default=True,
              help="--only-masked: pixels of context around the masked area.")
@click.option("--masked-content", type=click.Choice(MASKED_CONTENT, case_sensitive=False), default="original",
              show_default=True, help="Inpainting: start from what is under the mask, from the colours around it "
              "(fill), or from the seed's noise or nothing in the latents under it (the WebUI's Masked content).")
@click.option("--invert-mask", is_flag=True, help="Inpainting: repaint what the mask leaves black and keep what it "
              "paints white (the WebUI's Mask mode 'Inpaint not masked').")
@click.option("--hires", is_flag=True, help="txt2img's Hires. fix, as the WebUI's: each image is upscaled "
              "(--hires-scale, or to --hires-width x --hires-height) and denoised again at --strength.")
@click.option("--hires-scale", default=2.0, type=float, show_default=True, help="--hires: upscale by this much.")
@click.option("--hires-width", default=0, type=int, help="--hires: upscale to this width (0: by --hires-scale; "
              "one of width and height 0: the other in proportion).")
@click.option("--hires-height", default=0, type=int, help="--hires: upscale to this height.")
@click.option("--hires-steps", default=0, type=int, help="--hires: denoising steps of the second pass (0: --steps).")
@click.option("--hires-upscaler", type=click.Choice(HIRES_UPSCALERS, case_sensitive=False), default="Latent",
              show_default=True, help="--hires: resize the latents (Latent ...) or the picture (Lanczos, Nearest).")
@click.option("--eta", type=float, help="DDIM's eta, as the WebUI's (0, its default: deterministic; 1: as much fresh "
              "noise as DDPM). The stochastic samplers (Euler a, the SDE ones) draw at 1.")
@click.option("--prompt-matrix", is_flag=True, help="Treat 'a|b|c' as a prompt matrix: every combination, one seed, "
              "and a labelled grid.")
@click.option("--x", "x_axis", metavar="'NAME: V1, V2'", help="X/Y/Z plot axis, e.g. 'Sampler: Euler a, DDIM', "
              "'CFG scale: 3, 7, 11', 'Steps: 10-30 (+10)', 'Steps: 10-30 [5]', 'Prompt S/R: dog, cat'. NAME: "
              + ", ".join(a.label for a in AXES) + ".")
@click.option("--y", "y_axis", metavar="'NAME: V1, V2'", help="Y axis of the plot.")
@click.option("--z", "z_axis", metavar="'NAME: V1, V2'", help="Z axis of the plot (one grid per value).")
@click.option("--from-image", type=click.Path(path_type=Path), help="Re-create an image from the infotext in its "
              "PNG; options given explicitly override it.")
@click.option("--list-samplers", is_flag=True, help="Print the sampler table and exit.")
@click.option("--device", help="Device (cuda, cuda:1, mps, cpu). Default: the best available.")
@click.option("--dtype", type=click.Choice(list(DTYPES)), default="auto", show_default=True,
              help="Precision (auto: fp16 on CUDA, bf16 on a CPU that has it in hardware, else fp32).")
@click.option("--fast-batches/--one-by-one", default=True, show_default=True,
              help="A batch through the UNet at once, as diffusers and the WebUI do; each PNG records its place in "
              "the batch and --from-image replays the batch, bit for bit. --one-by-one: each image alone.")
@click.option("--medvram", is_flag=True, help="For a GPU short of memory, as the WebUI's: the text encoders, the UNet "
              "and the VAE take turns on it. The same images; each batch moves the parts.")
@click.pass_context
def generate_command(ctx, model, model_config, loras, lora_dirs, vae, prompt, negative_prompt, sampler, schedule,
                     steps, cfg_scale, seed, width, height, clip_skip, batch_size, batch_count, output, init_image,
                     strength, resize_mode, mask, mask_blur, only_masked, masked_padding, masked_content, invert_mask,
                     hires, hires_scale, hires_width, hires_height, hires_steps, hires_upscaler, eta,
                     prompt_matrix, x_axis, y_axis, z_axis, from_image, list_samplers, device, dtype, fast_batches,
                     medvram):
    """Generate images like the AUTOMATIC1111 WebUI's txt2img / img2img."""
    if list_samplers:
        click.echo(sampler_table())
        return

    values = dict(prompt=prompt, negative_prompt=negative_prompt, sampler=sampler, schedule=schedule, steps=steps,
                  cfg_scale=cfg_scale, seed=seed, width=width, height=height, clip_skip=clip_skip,
                  batch_size=batch_size, batch_count=batch_count, init_image=init_image, strength=strength, mask=mask,
                  mask_blur=mask_blur, only_masked=only_masked, masked_padding=masked_padding,
                  masked_content=masked_content, eta=eta, resize_mode=resize_mode, invert_mask=invert_mask, hires=hires,
                  hires_scale=hires_scale, hires_width=hires_width, hires_height=hires_height, hires_steps=hires_steps,
                  hires_upscaler=hires_upscaler)
    library = LoraLibrary(lora_dirs)
    lora_specs = [parse_lora_spec(s) for s in loras]          # a bad weight is said before anything loads
    vae = vae or None                  # --vae '': the model's own
    if from_image is not None:
        text = read_infotext(from_image, "--from-image")
        if not text:
            raise UserError(f"--from-image {from_image}: the image carries no generation parameters")
        info = parse_generation_parameters(text)
        written = parse_generation_parameters(text, defaults=False)      # without the WebUI's defaults
        if dtype == "auto" and info.get("Precision") in DTYPES:      # remade in the precision it was made in
            dtype = info["Precision"]
        try:
            params = GenerationParams.from_infotext(info, **{k: v for k, v in values.items() if _explicit(ctx, k)})
            params.check_replayable(written)
        except UserError as exc:
            raise UserError(f"--from-image {from_image}: {exc}") from None
        plot = plot_from_infotext(info)         # a grid's: the plot again, unless axes are given anew
        if plot and not (x_axis or y_axis or z_axis or prompt_matrix):
            x_axis, y_axis, z_axis = plot.get("x"), plot.get("y"), plot.get("z")
            params = params.replace(keep=None)       # its first cell's "Batch: 1/N": every image of the batch
        info = located(info, from_image)          # paths recorded relative to the folder it was made in
        recorded_model, recorded_loras = sources_from_infotext(info)
        recorded = recorded_settings(info)
        vae = vae or recorded.get("vae")
        model_config = model_config or recorded.get("model_config")
        for name, path in recorded_loras.items():        # <lora:name> in the recorded prompt finds its file
            library.add(replace(lora_from_path(path), name=name))
        if model is None:
            model = recorded_model
            if model is None and not ({"Model", "Model hash"} & set(info)):
                raise UserError(f"--from-image {from_image}: its infotext names no model; pass --model")
            if model is None:
                where = f" at {info['Model path']} (from the folder it was made in)" if info.get("Model path") else ""
                raise UserError(f"--from-image {from_image}: made with Model: {info.get('Model', '?')} "
                                f"(hash {info.get('Model hash', '?')}){where}, not found here; pass --model")
    else:
        if model is None:
            raise UserError("--model: required (or --from-image PNG, or --list-samplers)")
        if prompt is None:
            raise UserError("--prompt: required")
        params = GenerationParams(**values)
        trained = trained_clip_skip(model)
        if not _explicit(ctx, "clip_skip") and trained not in (None, params.clip_skip):   # sampled as it was trained
            params = replace(params, clip_skip=trained)
            click.echo(f"Clip skip {trained}: as {model} was trained (--clip-skip 1 samples without)", err=True)

    # Check what can be checked before the (slow) model load.
    if prompt_matrix and (x_axis or y_axis or z_axis):
        raise UserError("--prompt-matrix and --x/--y/--z: use one or the other")
    for flag, path in (("--init-image", params.init_image), ("--mask", params.mask)):
        if path is not None and Path(path).expanduser().is_dir():
            raise UserError(f"{flag} {path}: a folder; give an image file in it")
        if path is not None and not Path(path).expanduser().is_file():
            raise UserError(f"{flag} {path}: no such file")
    if _explicit(ctx, "strength") and params.init_image is None and not params.hires:
        raise UserError("--strength is for img2img and the hires fix: give --init-image or --hires")
    _check(ctx, params, from_image)
    check_output_folder(output)                 # before the model loads and the images are made
    axes = [parse_axis(axis, flag) for flag, axis in (("--x", x_axis), ("--y", y_axis), ("--z", z_axis)) if axis]
    if axes:
        check_plot_size(math.prod(len(axis.values) for axis in axes), params, "--x/--y/--z")
    if prompt_matrix:
        check_plot_size(len(prompt_matrix_prompts(params.prompt)[0]), params, "--prompt-matrix")

    unmade = [k for k in (not_made_here(written) if from_image is not None else []) if not (vae and k.endswith("(give --vae for it)"))]
    if unmade:                               # (said once every check has passed)
        progress.warn(f"--from-image {from_image}: made with {', '.join(unmade)}, which this project does not "
                      "make; the image will differ")
    before = _pngs(output)
    try:
        pipeline = load_generation_pipeline(model, lora_specs, vae=vae, device=device,
                                            dtype=DTYPES[dtype], model_config=model_config, library=library,
                                            medvram=medvram)
        if from_image is not None:
            _warn_if_weights_differ(from_image, info, pipeline, model, _explicit(ctx, "model"))
            _warn_if_loras_differ(from_image, info, recorded_loras)
        if prompt_matrix:
            result = run_prompt_matrix(pipeline, params, output, fast_batches=fast_batches)
            images, grid = result.images, result.grid_path
        elif x_axis or y_axis or z_axis:
            result = run_xyz(pipeline, params, x_axis, y_axis, z_axis, output, fast_batches=fast_batches)
            images, grid = result.images, result.grid_path
        else:
            images, grid = generate(pipeline, params, output, fast_batches=fast_batches), None
    except KeyboardInterrupt:
        raise _interrupted(output, before) from None
    click.echo(f"wrote {len(images)} image{'s' if len(images) != 1 else ''}" + (" and a grid" if grid else "")
               + f" to {output}:", err=True)
    for image in images:
        click.echo(str(image.path))
    if grid:
        click.echo(str(grid))


def _warn_if_weights_differ(from_image, info: dict, pipeline, model: str, given: bool) -> None:
    """Said before a replay that cannot be bit for bit: the model's hash is not the one recorded (trained
    on since, --keep-best, another --model), or the image was made during training before its output
    was written (a validation image of an earlier step: no hash recorded, and those weights are gone)."""
    made_with, now = info.get("Model hash"), pipeline.info.hash
    if made_with and now and made_with != now:
        progress.warn(f"--from-image {from_image}: made with Model hash {made_with}; "
                      + (f"--model {model} is {now}" if given else f"{model} is {now} now (its weights changed since)")
                      + ", so the image will differ")
    elif not given and not made_with and (Path(model).expanduser() / TRAINING_ARGS_FILE).is_file():
        progress.warn(f"--from-image {from_image}: made during training, before its output was written (an earlier "
                      "step's weights, which the output does not hold); the image will differ unless it is of the "
                      "step the output holds")


def _warn_if_loras_differ(from_image, info: dict, recorded: dict[str, str]) -> None:
    """As ``_warn_if_weights_differ``, for the LoRAs the image recorded: one trained on since, or an
    image a LoRA run made before its file was written (no hash recorded)."""
    hashes = dict(entry.split(": ", 1) for entry in str(info.get("Lora hashes") or "").split(", ") if ": " in entry)
    for name, path in recorded.items():
        now, made_with = lora_from_path(path).hash, hashes.get(name)
        if now and made_with and now != made_with:
            progress.warn(f"--from-image {from_image}: made with LoRA {name} of hash {made_with}; {path} is {now} "
                          "now (its weights changed since), so the image will differ")
        elif now and not made_with and (Path(path).expanduser() / TRAINING_ARGS_FILE).is_file():
            progress.warn(f"--from-image {from_image}: made while LoRA {name} trained, before its file was written "
                          "(an earlier step's weights, which the output does not hold); the image will differ "
                          "unless it is of the step the output holds")


def register(group: click.Group) -> None:
    group.add_command(generate_command)
