"""The one sampling function: every image the project makes comes out of :func:`generate`.

``generate(pipeline, params)`` runs txt2img, img2img (``init_image``) or inpainting (``init_image`` +
``mask``) for ``batch_count`` batches of ``batch_size`` images, the WebUI way:

* image ``i`` of a run uses seed ``seed + i`` and its own CPU ``torch.Generator`` for its initial
  latents and any noise the sampler draws. By default (``fast_batches``) a batch is one pipeline call,
  as in diffusers and the WebUI; an image of a batch of several records its place ("Batch: 3/4"), and
  ``--from-image`` replays that batch, so it is remade bit for bit. ``fast_batches=False`` makes each
  image in a call of its own (the shapes it gets when made alone from its seed);
* the prompts are read with the WebUI grammar (``grammar``): ``<lora:name:weight>`` tags choose the
  LoRAs, emphasis weights and 75-token chunks shape the conditioning (``conditioning``), and prompt
  editing / alternation swap it between steps through diffusers' ``callback_on_step_end``; ``AND`` parts
  are predicted in the same UNet batch and summed (``composable``);
* every image carries the WebUI infotext (``infotext``); with ``output_dir`` it is saved as
  ``00001-<seed>.png`` (``outputs.claim_numbered``). ``dreambooth generate --from-image`` recreates it.
"""
from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from .. import progress
from ..devices import PRECISIONS
from ..errors import UserError, file_operation
from ..images import as_image, write_png
from ..models.conv_layout import channels_last_convs
from ..models.lean_ops import lean_ops
from ..outputs import claim_numbered
from .composable import compose_conditioning, composing
from .conditioning import PromptEncoder
from .grammar import LoraTag, extract_loras
from .hires import LATENT_MODES, hires_target, upscale_image, upscale_latents
from .infotext import format_infotext
from .recorded import infotext_params
from .stopping import StoppedWithinStep, stoppable_within_steps
from .loras import LoraFile
from .masks import as_mask, latent_fill, prepare
from .params import GenerationParams
from .resizing import init_size, resized
from .pipeline import GenerationPipeline
from .samplers import make_scheduler, resolve


@dataclass
class GeneratedImage:
    image: Image.Image
    seed: int
    infotext: str
    path: Path | None = None
    prompt: str = ""               # as recorded: with the <lora:...> tags that made it
    negative_prompt: str = ""


def with_default_loras(prompt: str, defaults: list[LoraTag]) -> str:
    """The prompt as recorded: the default LoRAs (``--lora``) appended as tags, unless named already."""
    named = {tag.name for tag in extract_loras(prompt)[1]}
    extra = " ".join(str(tag) for tag in defaults if tag.name not in named)
    return f"{prompt} {extra}".strip() if extra else prompt


def resolve_params(pipeline: GenerationPipeline, params: GenerationParams):
    """``params`` checked, with its seed and size fixed: returns (params, init image, mask)."""
    params = params.check(pipeline.max_side).with_seed()
    init = as_image(params.init_image, "--init-image")
    mask = as_mask(params.mask)
    width, height = params.width, params.height
    if init is not None and not (width and height):
        width, height = init_size(init, params, pipeline.max_side)
    dw, dh = pipeline.default_size
    row, schedule = resolve(params.sampler, params.schedule)       # as the WebUI names them: "k_euler_a" is "Euler a"
    return params.replace(width=width or dw, height=height or dh, sampler=row.name,
                          schedule=schedule).check(pipeline.max_side), init, mask


def never() -> None:          # Controls' default stop: nothing asks within a step (stopping.py)
    return None


@dataclass
class Controls:
    """What a caller (a server) may do to a running generation: ``stop()`` returns "interrupt" (end
    the run after the current step, keeping what was made) or "skip" (end the current image) or None;
    ``preview(latents)`` receives, every ``preview_every`` steps (not after the last, whose image comes
    at once), the sampler's estimate of the finished latents (``denoised_estimates``): a live preview."""
    stop: Callable[[], str | None] = never
    preview: Callable[[torch.Tensor], None] | None = None
    preview_every: int = 10


def generate(pipeline: GenerationPipeline, params: GenerationParams, output_dir: Path | None = None, *,
             fast_batches: bool = True, autocast: torch.dtype | None = None,
             task: progress.Task | None = None, controls: Controls | None = None) -> list[GeneratedImage]:
    """Make the images ``params`` describe (see the module doc). ``autocast`` runs the denoising in
    that dtype (mixed-precision training: fp32 trainable and low-precision frozen weights); ``task``
    is a progress task shared with other calls (otherwise one is opened: "generating"); ``controls``
    let a server interrupt, skip and preview. Calls on one pipeline from several threads take turns."""
    if not isinstance(params, GenerationParams):
        raise TypeError(f"generate: params must be a GenerationParams, not {type(params).__name__}")
    if not isinstance(pipeline, GenerationPipeline):     # generate('toy', ...): the pipeline is loaded first
        raise TypeError(f"generate: pipeline must be a GenerationPipeline (load_generation_pipeline(model)), "
                        f"not {type(pipeline).__name__}")
    with pipeline.lock:
        return _generate(pipeline, params, output_dir, fast_batches, autocast, task, controls)


def _generate(pipeline: GenerationPipeline, params: GenerationParams, output_dir: Path | None, fast_batches: bool,
              autocast: torch.dtype | None, task: progress.Task | None, controls: Controls | None) -> list[GeneratedImage]:
    params, init, mask = resolve_params(pipeline, params)
    text, _ = extract_loras(params.prompt)
    recorded_prompt = with_default_loras(params.prompt, pipeline.default_loras)
    loras = pipeline.apply_loras(extract_loras(recorded_prompt)[1])
    mode = "inpaint" if mask is not None else "img2img" if init is not None else "txt2img"
    runner = pipeline.for_task(mode)
    precision = PRECISIONS.get(autocast or runner.unet.dtype)
    encoder = PromptEncoder(pipeline.pipe, params.clip_skip)
    pipeline.place_for("encode")
    conditioning = compose_conditioning(encoder, text, params.negative_prompt, params.steps)
    inpainting = None
    if mask is not None:
        if mask.size != init.size:
            progress.warn(f"--mask: {mask.width}x{mask.height}, stretched to the init image's {init.width}x{init.height}")
        inpainting = prepare(init, mask, params.width, params.height, params.mask_blur, params.only_masked,
                             params.masked_padding, params.masked_content != "original", params.invert_mask, params.resize_mode)
        if inpainting.mask.getbbox() is None:
            progress.warn(f"--mask: black all over{' once inverted' if params.invert_mask else ''}, so nothing is "
                          "repainted")
        init, mask = inpainting.init, inpainting.mask
    elif init is not None:
        init = resized(init, params.width, params.height, params.resize_mode)

    second = _second_pass(pipeline, params, encoder, text) if params.hires else None
    opened = contextlib.nullcontext(task) if task is not None else \
        progress.task("generating", params.batch_size * params.batch_count * params.passes)
    results: list[GeneratedImage] = []
    controls = controls or Controls()
    with opened as bar:
        for seeds in params.seeds():
            calls = [seeds] if fast_batches else [[s] for s in seeds]
            images = []
            for call in calls:
                if controls.stop() == "interrupt":
                    break
                done = bar.completed + len(call) * params.passes
                if second is None:
                    images += _call(runner, pipeline, params, call, conditioning,
                                    encoder.family == "sdxl", init, mask, bar, autocast, controls)
                else:
                    first = _call(runner, pipeline, params, call, conditioning, encoder.family == "sdxl", None, None,
                                  bar, autocast, controls, keep_latents=True)
                    images += second(first, call, bar, autocast, controls)
                if bar.completed < done:     # ended early (skipped): the next images count from their first step
                    bar.advance(done - bar.completed)
            batched = fast_batches and len(seeds) > 1
            for k, (seed, image) in enumerate(zip(seeds, images)):
                if params.keep is not None and k != params.keep:
                    continue
                if inpainting is not None:
                    image = inpainting.finish(image)          # beyond the feather: the init's pixels
                infotext = format_infotext(recorded_prompt, params.negative_prompt,
                                           infotext_params(params, seed, pipeline, loras, init is not None,
                                                           f"{k + 1}/{len(seeds)}" if batched else None, precision))
                path = None
                if output_dir is not None:
                    with file_operation("write an image", "--output"):
                        path = write_png(image, claim_numbered(output_dir, seed), infotext)
                results.append(GeneratedImage(image, seed, infotext, path, recorded_prompt, params.negative_prompt))
            if controls.stop() == "interrupt":
                break
    return results


def _embed_kwargs(pos, neg, batch: int, is_xl: bool, dtype, device) -> dict:
    def rep(t):
        return t.to(device=device, dtype=dtype).repeat(batch, *([1] * (t.dim() - 1)))
    kwargs = {"prompt_embeds": rep(pos.embeds), "negative_prompt_embeds": rep(neg.embeds)}
    if is_xl:
        kwargs["pooled_prompt_embeds"] = rep(pos.pooled)
        kwargs["negative_pooled_prompt_embeds"] = rep(neg.pooled)
    return kwargs


def _second_pass(pipeline: GenerationPipeline, params: GenerationParams, encoder: PromptEncoder, text: str):
    """The hires fix's second pass (``hires``): a function of the first pass's latents and its seeds,
    like ``_call``, returning the images."""
    target = hires_target(params.width, params.height, params.hires_scale, params.hires_width, params.hires_height)
    steps = params.hires_steps or params.steps
    # diffusers' img2img denoises int(total x strength) steps of a schedule of ``total``: ``steps`` of them
    upscaled = params.replace(steps=math.ceil(steps / params.strength - 1e-9), width=target.size[0], height=target.size[1])
    conditioning = compose_conditioning(encoder, text, params.negative_prompt, steps, after=params.steps)
    runner = pipeline.for_task("img2img")

    def second(latents: torch.Tensor | None, seeds: list[int], bar, autocast, controls: Controls) -> list[Image.Image]:
        if latents is None:                     # stopped before the first pass's first step ended
            return []
        if controls.stop() is not None:         # interrupted or skipped in the first pass: its images, as they are
            return decode(runner, latents)
        if params.hires_upscaler in LATENT_MODES:
            start = upscale_latents(latents, params.hires_upscaler, target, runner.vae_scale_factor)
        else:
            start = [upscale_image(image, params.hires_upscaler, target) for image in decode(runner, latents)]
        made = _call(runner, pipeline, upscaled, seeds, conditioning, encoder.family == "sdxl", start, None, bar,
                     autocast, controls)
        return made or decode(runner, latents)    # stopped within the second pass's first step: the first's
    return second


def _call(runner, pipeline: GenerationPipeline, params: GenerationParams, seeds: list[int], conditioning, is_xl: bool,
          init, mask, bar: progress.Task, autocast: torch.dtype | None, controls: Controls,
          keep_latents: bool = False) -> list[Image.Image] | torch.Tensor | None:
    """One pipeline call for the images of ``seeds``, with a fresh scheduler for the sampler. ``init``:
    an image for all, or a list of one per seed, or their latents; ``keep_latents``: the latents made,
    not the images."""
    scheduler = make_scheduler(pipeline.scheduler_config, params.sampler, params.schedule, seeds)
    order = max(1, int(getattr(scheduler, "order", 1)))
    pipeline.place_for("sample")
    device = runner._execution_device
    n = len(seeds)
    pos, neg = conditioning.at(0)
    state = {"step": 0}
    stop = None if controls.stop is never else controls.stop       # a caller that may stop asks within steps too
    if controls.preview is not None:
        denoised_estimates(scheduler, state)

    def on_step_end(pipe, i, t, tensors):
        # Called after denoising iteration i; the conditioning returned is used from iteration i+1.
        # Steps count as in the WebUI (0-based); second-order schedulers (Heun, DPM2) take two
        # iterations per step.
        bar.advance(n / max(1, pipe.num_timesteps))
        state["latents"] = tensors["latents"] if stop is not None else None   # what a stop within the next keeps
        if controls.stop() is not None:
            pipe._interrupt = True               # diffusers' documented way to end the denoising loop early
        # (not after the last iteration: the image itself comes next)
        if controls.preview is not None and (i + 1) % max(1, controls.preview_every) == 0 and i + 1 < pipe.num_timesteps:
            estimate = state.get("denoised")
            controls.preview(estimate if estimate is not None else tensors["latents"])
        step = (i + 1) // order
        if not conditioning.changes or step == state["step"]:
            return {}
        state["step"] = step
        p, q = conditioning.at(step)
        current = tensors["prompt_embeds"]
        new = _embed_kwargs(p, q, n, is_xl, current.dtype, current.device)
        cfg = pipe.do_classifier_free_guidance
        out = {"prompt_embeds": torch.cat([new["negative_prompt_embeds"], new["prompt_embeds"]]) if cfg
               else new["prompt_embeds"]}
        if is_xl:
            pooled = torch.cat([new["negative_pooled_prompt_embeds"], new["pooled_prompt_embeds"]]) if cfg \
                else new["pooled_prompt_embeds"]
            out["add_text_embeds"] = pooled.to(tensors["add_text_embeds"].dtype)
        return out

    call = dict(_embed_kwargs(pos, neg, n, is_xl, runner.unet.dtype, device),
                num_inference_steps=params.steps, guidance_scale=params.cfg_scale, eta=params.sampler_eta,
                generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
                output_type="latent" if autocast or keep_latents else "pil", callback_on_step_end=on_step_end,
                callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"] + (["add_text_embeds"] if is_xl else []))
    if init is None:
        call.update(width=params.width, height=params.height)
    else:
        call.update(image=init if isinstance(init, (list, torch.Tensor)) else [init] * n, strength=params.denoising)
        if mask is not None:
            call.update(mask_image=[mask] * n, width=params.width, height=params.height)
    previous, runner.scheduler = runner.scheduler, scheduler
    try:
        with channels_last_convs(runner.unet, autocast), lean_ops(runner.unet, autocast), \
                channels_last_convs(runner.vae, prepack=False), _without_grad(runner.unet), \
                pipeline.turns_inside(runner), one_image_at_a_time(runner.vae), \
                latent_fill(runner, params, mask, seeds), stoppable_within_steps(runner.unet, stop), \
                composing(runner.unet, conditioning, n, state), finite_images(runner):
            if autocast is None and not keep_latents:
                return runner(**call).images
            with torch.autocast(device.type, dtype=autocast) if autocast else contextlib.nullcontext():
                latents = runner(**call).images
            return latents if keep_latents else decode(runner, latents)
    except StoppedWithinStep:             # the last finished step's images, or none before the first
        latents = state.get("latents")
        if latents is None:
            return None if keep_latents else []
        with _without_grad(runner.unet):
            return latents if keep_latents else decode(runner, latents)
    finally:
        runner.scheduler = previous                      # leave the pipeline as we found it


def denoised_estimates(scheduler, state: dict) -> None:
    """After each step, ``state["denoised"]``: the model's estimate of the finished latents, as the
    WebUI's live previews show it (the noisy latents at step 5 of 20 are mostly noise). The Euler,
    Heun, LMS, DPM2, DDIM, DPM++ SDE and LCM schedulers return it; DPM-Solver++ and UniPC keep it as
    their last model output; PLMS has none (None: the preview shows the latents). Wraps this call's
    own scheduler; the steps are unchanged."""
    step = scheduler.step
    config = scheduler.config
    x0_outputs = config.get("algorithm_type") in ("dpmsolver++", "sde-dpmsolver++") or config.get("predict_x0", False)

    @functools.wraps(step)           # its signature: the pipeline passes ``generator`` and ``eta`` by it
    def step_keeping_the_estimate(*args, **kwargs):
        out = step(*args, **kwargs)
        estimate = out[1] if isinstance(out, tuple) and len(out) > 1 else getattr(out, "pred_original_sample", None)
        if estimate is None and x0_outputs and getattr(scheduler, "model_outputs", None):
            estimate = scheduler.model_outputs[-1]
        state["denoised"] = estimate
        return out

    scheduler.step = step_keeping_the_estimate


@contextlib.contextmanager
def one_image_at_a_time(vae):
    """Within: the VAE encodes and decodes a batch one image at a time (diffusers' slicing), as the
    WebUI does. The decoder at full size is the peak of a batch (the mid-size model, batch 4 at 256 px
    in bf16: 0.3 GB off the peak RSS), and each image's pixels then depend on its latents alone, not
    on the batch it was made in."""
    before = getattr(vae, "use_slicing", None)
    if before is None:
        yield
        return
    vae.use_slicing = True
    try:
        yield
    finally:
        vae.use_slicing = before


def _without_grad(unet):
    """inference_mode, except for a UNet sharded by FSDP (validation while training): the whole
    weights it gathers for a forward pass would be inference tensors, which training cannot reuse."""
    sharded = hasattr(next(unet.parameters(), None), "device_mesh")
    return torch.no_grad() if sharded else torch.inference_mode()


def unscaled(vae, latents: torch.Tensor) -> torch.Tensor:
    """The sampler's latents (scaled for the UNet) as the VAE's decoder takes them."""
    return latents / vae.config.scaling_factor + (getattr(vae.config, "shift_factor", None) or 0.0)


@contextlib.contextmanager
def finite_images(pipe):
    """Within: an image that came out NaN or infinite (a black picture once saved) is a one-line error,
    not a PNG: every image of a call passes the pipeline's ``postprocess``, diffusers' and ``decode``'s."""
    processor = pipe.image_processor
    postprocess, own = processor.postprocess, processor.__dict__.get("postprocess")

    def checked(image, *args, **kwargs):
        if torch.is_tensor(image) and not torch.isfinite(image).all():
            raise UserError("the image came out NaN (it would be black): a LoRA that does not fit this model, or a VAE "
                            "that overflows at this precision (try --dtype fp32, or an fp16-fix VAE)")
        return postprocess(image, *args, **kwargs)
    processor.postprocess = checked
    try:
        yield
    finally:
        if own is not None:
            processor.postprocess = own
        else:
            del processor.postprocess


def decode(pipe, latents: torch.Tensor) -> list[Image.Image]:
    """Latents to images with the VAE in its own precision, outside any autocast: the SDXL VAE
    overflows in fp16 (black images), so mixed-precision sampling never autocasts it down. One image
    at a time (``one_image_at_a_time``): a batch must fit where one image does."""
    vae = pipe.vae
    latents = unscaled(vae, latents.to(vae.device, vae.dtype))
    with torch.autocast(vae.device.type, enabled=False), one_image_at_a_time(vae), torch.no_grad():
        images = vae.decode(latents).sample
    return pipe.image_processor.postprocess(images.float(), output_type="pil")
