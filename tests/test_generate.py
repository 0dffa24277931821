"""txt2img / img2img / inpainting as in the WebUI: seeds, batches, prompts, LoRAs, files, CLI."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_cli
from dreambooth.errors import UserError
from dreambooth.generation.infotext import parse_generation_parameters, read_infotext
from dreambooth.generation.loras import parse_lora_spec
from dreambooth.generation.params import GenerationParams
from dreambooth.generation.pipeline import load_generation_pipeline
from dreambooth.generation.sampling import generate, resolve_params
from dreambooth.outputs import next_number

SMALL = dict(steps=2, width=16, height=16)


@pytest.fixture(scope="module")
def sd1(tiny_sd1):
    return load_generation_pipeline(str(tiny_sd1))


@pytest.fixture(scope="module")
def sdxl(tiny_sdxl):
    return load_generation_pipeline(str(tiny_sdxl))


def pixels(result_or_image):
    image = getattr(result_or_image, "image", result_or_image)
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def gen(pipe, prompt="a dog", **kw):
    return generate(pipe, GenerationParams(prompt, **{**SMALL, "seed": 7, **kw}))


# ---- seeds and batches ------------------------------------------------------------------------------------------

def test_same_seed_same_pixels(sd1):
    a, b = gen(sd1)[0], gen(sd1)[0]
    assert np.array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(gen(sd1, seed=8)[0]))


def test_batches_seeds_files_and_reproduction_alone(sd1, tmp_path):
    params = GenerationParams("a photo of sks dog", sampler="Euler a", seed=1000, batch_size=2, batch_count=2,
                              steps=8)                     # the model's own size: 64 px
    out = generate(sd1, params, tmp_path)
    assert [r.seed for r in out] == [1000, 1001, 1002, 1003]
    assert [r.path.name for r in out] == ["00001-1000.png", "00002-1001.png", "00003-1002.png", "00004-1003.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [r.path.name for r in out]
    for r in out:
        assert parse_generation_parameters(read_infotext(r.path))["Seed"] == str(r.seed)
    assert [parse_generation_parameters(r.infotext)["Batch"] for r in out] == ["1/2", "2/2", "1/2", "2/2"]
    for k in (2, 1):               # the infotext replays the image's batch and keeps only the image
        replay = GenerationParams.from_infotext(parse_generation_parameters(read_infotext(out[k].path)))
        assert (replay.seed, replay.batch_size, replay.keep) == (1000 + k - k % 2, 2, k % 2)
        (again,) = generate(sd1, replay)
        assert np.array_equal(pixels(again), pixels(Image.open(out[k].path))) and again.infotext == out[k].infotext
    assert len({pixels(r).tobytes() for r in out}) == 4
    one_by_one = generate(sd1, params, fast_batches=False)
    alone = generate(sd1, replace(params, seed=1002, batch_size=1, batch_count=1))[0]
    assert np.array_equal(pixels(alone), pixels(one_by_one[2])) and "Batch" not in parse_generation_parameters(alone.infotext)


def test_an_explicit_seed_or_batch_ends_the_replay():
    info = {"Prompt": "a dog", "Seed": "12", "Batch": "3/4"}
    assert GenerationParams.from_infotext(info).replace(prompt="").seed == 10
    assert GenerationParams.from_infotext(info, seed=5).keep is None
    assert GenerationParams.from_infotext(info, batch_size=1).seed == 12


def test_batch_unet_runs_image_by_image(sdxl):
    """One by one, each image of a batch goes through the UNet as a batch of one would: [uncond_i,
    cond_i]; by default (fast batches) the whole batch at once."""
    shapes = []
    handle = sdxl.pipe.unet.register_forward_pre_hook(
        lambda m, a, kw: shapes.append(kw["encoder_hidden_states"].shape[0]), with_kwargs=True)
    try:
        out = generate(sdxl, GenerationParams("a dog", **{**SMALL, "seed": 7, "batch_size": 3, "steps": 2}),
                       fast_batches=False)
        exact = list(shapes)
        shapes.clear()
        fast = generate(sdxl, GenerationParams("a dog", **{**SMALL, "seed": 7, "batch_size": 3, "steps": 2}),
                        fast_batches=True)
    finally:
        handle.remove()
    assert len(out) == 3 and exact == [2] * 6 and shapes == [6, 6]
    alone = gen(sdxl, seed=9, steps=2)[0]            # image 3 matches its seed alone exactly
    assert np.array_equal(pixels(alone), pixels(out[2]))
    assert [r.seed for r in fast] == [7, 8, 9]


def test_the_vae_decodes_and_encodes_a_batch_image_by_image(sd1, sdxl):
    """In a batch's one pipeline call the VAE still decodes (and img2img encodes) one image at a time,
    as the WebUI does: the decoder at full size is a batch's peak, and a batch must fit where one image
    does. Its own setting is as before afterwards."""
    for pipeline in (sd1, sdxl):
        vae = pipeline.pipe.vae
        batches = []
        hooks = [getattr(vae, part).register_forward_pre_hook(lambda m, a, part=part: batches.append((part, a[0].shape[0])))
                 for part in ("encoder", "decoder")]
        try:
            made = gen(pipeline, batch_size=3)
            assert batches == [("decoder", 1)] * 3
            batches.clear()
            gen(pipeline, batch_size=2, init_image=made[0].image, strength=0.6)
            assert batches == [("encoder", 1)] * 2 + [("decoder", 1)] * 2
        finally:
            for hook in hooks:
                hook.remove()
        assert vae.use_slicing is False


def test_random_seed_is_recorded(sd1):
    (r,) = gen(sd1, seed=-1)
    assert 0 <= r.seed < 2**32 and f"Seed: {r.seed}," in r.infotext
    assert np.array_equal(pixels(r), pixels(gen(sd1, seed=r.seed)[0]))


def test_numbering_continues_and_never_overwrites(sd1, tmp_path):
    (tmp_path / "00007-5.png").write_bytes(b"not ours")
    (tmp_path / "grid-00042-1.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    assert next_number(tmp_path) == 8
    (r,) = generate(sd1, GenerationParams("a dog", seed=5, **SMALL), tmp_path)
    assert r.path.name == "00008-5.png"
    assert (tmp_path / "00007-5.png").read_bytes() == b"not ours"


def test_default_size_is_the_models(sd1, sdxl):
    for pipe in (sd1, sdxl):
        params, _, _ = resolve_params(pipe, GenerationParams("x"))
        size = pipe.pipe.unet.config.sample_size * pipe.pipe.vae_scale_factor
        assert (params.width, params.height) == (size, size)


# ---- prompts --------------------------------------------------------------------------------------------------

def _words(n):
    return " ".join(["dog", "cat", "red", "blue"] * (n // 4))


def test_word_after_token_75_changes_the_image(sd1):
    head = _words(96)
    a = gen(sd1, head + " dog dog dog dog", negative_prompt="blurry")[0]
    b = gen(sd1, head + " dog dog cat dog", negative_prompt="blurry")[0]
    assert not np.array_equal(pixels(a), pixels(b))


def test_emphasis_one_is_plain_and_other_weights_differ(sd1):
    plain = pixels(gen(sd1, "a dog on the beach")[0])
    assert np.array_equal(pixels(gen(sd1, "a (dog:1.0) on the beach")[0]), plain)
    assert not np.array_equal(pixels(gen(sd1, "a (dog:1.5) on the beach")[0]), plain)


def _record_text_conditioning(pipe):
    """Record the encoder_hidden_states of every UNet call."""
    calls = []

    def hook(module, args, kwargs):
        calls.append(kwargs["encoder_hidden_states"].detach().clone())
    return calls, pipe.pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("sampler, order", [("Euler a", 1), ("Heun", 2)])
def test_prompt_editing_switches_conditioning_per_step(sd1, sampler, order):
    from dreambooth.generation.conditioning import PromptEncoder
    enc = PromptEncoder(sd1.pipe)
    dog, cat = enc.encode("a dog").embeds, enc.encode("a cat").embeds
    calls, handle = _record_text_conditioning(sd1)
    try:
        gen(sd1, "a [dog:cat:1]", steps=4, sampler=sampler, negative_prompt="[red:blue:2]")
    finally:
        handle.remove()
    steps = [k // order for k in range(len(calls))]
    assert steps[-1] == 3
    for step, hidden in zip(steps, calls):
        assert torch.equal(hidden[1:], dog if step <= 1 else cat)          # positive half
        assert torch.equal(hidden[:1], enc.encode("red" if step <= 2 else "blue").embeds)


def test_alternation_cycles_every_step(sd1):
    from dreambooth.generation.conditioning import PromptEncoder
    enc = PromptEncoder(sd1.pipe)
    calls, handle = _record_text_conditioning(sd1)
    try:
        gen(sd1, "a [dog|cat|red]", steps=5, sampler="DPM++ 2M")
    finally:
        handle.remove()
    # WebUI timeline: step s (0-based) uses the entry ending at s, alternation entries end at 1, 2, 3...
    expected = ["a dog", "a dog", "a cat", "a red", "a dog"]
    assert [next(t for t in ("a dog", "a cat", "a red") if torch.equal(h[1:], enc.encode(t).embeds))
            for h in calls] == expected


def test_prompt_editing_changes_the_image(sd1):
    dog = pixels(gen(sd1, "a dog", steps=4)[0])
    cat = pixels(gen(sd1, "a cat", steps=4)[0])
    edited = pixels(gen(sd1, "a [cat:dog:1]", steps=4)[0])
    assert not np.array_equal(edited, dog) and not np.array_equal(edited, cat)
    assert np.array_equal(pixels(gen(sd1, "a [dog:cat:9]", steps=4)[0]), dog)     # switch after the last step


def test_editing_without_cfg(sd1):
    from dreambooth.generation.conditioning import PromptEncoder
    enc = PromptEncoder(sd1.pipe)
    calls, handle = _record_text_conditioning(sd1)
    try:
        gen(sd1, "a [dog:cat:1]", cfg_scale=1.0, steps=3)
    finally:
        handle.remove()
    assert [h.shape[0] for h in calls] == [1, 1, 1]                       # no unconditional half
    assert torch.equal(calls[0], enc.encode("a dog").embeds) and torch.equal(calls[2], enc.encode("a cat").embeds)


def test_sdxl_batch_editing_and_long_prompts(sdxl):
    params = GenerationParams("a [dog:cat:1] " + _words(80), **{**SMALL, "seed": 7, "batch_size": 2, "steps": 3,
                                                                   "sampler": "DPM++ 2M"})
    out = generate(sdxl, params)
    assert [r.seed for r in out] == [7, 8]
    # an image of a batch is remade alone from its seed by the one-by-one path (a batch's own matrix
    # products may round differently, as with AMX: the batched image replays through its batch)
    one_by_one = generate(sdxl, params, fast_batches=False)
    alone = gen(sdxl, "a [dog:cat:1] " + _words(80), seed=8, steps=3, sampler="DPM++ 2M")[0]
    assert np.array_equal(pixels(alone), pixels(one_by_one[1]))
    replay = GenerationParams.from_infotext(parse_generation_parameters(out[1].infotext))
    assert np.array_equal(pixels(generate(sdxl, replay)[0]), pixels(out[1]))


def test_sd2_v_prediction_runs(tiny_sd2):
    pipe = load_generation_pipeline(str(tiny_sd2))
    (r,) = gen(pipe, sampler="DPM++ 2M")
    assert r.image.size == (16, 16)


# ---- img2img and inpainting ------------------------------------------------------------------------------------

def _noise_image(w, h, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def test_img2img(sd1, tmp_path):
    init = tmp_path / "init.png"
    _noise_image(24, 16).save(init)
    params = GenerationParams("a dog", init_image=str(init), strength=0.5, steps=4, seed=3)
    (r,) = generate(sd1, params)
    assert r.image.size == (24, 16)                        # the init image's size by default
    assert "Denoising strength: 0.5" in r.infotext and "Size: 24x16" in r.infotext
    (again,) = generate(sd1, params)
    assert np.array_equal(pixels(r), pixels(again))
    (stronger,) = generate(sd1, replace(params, strength=1.0))
    (other_init,) = generate(sd1, replace(params, init_image=_noise_image(24, 16, seed=5)))
    assert not np.array_equal(pixels(stronger), pixels(r))
    assert not np.array_equal(pixels(other_init), pixels(r))                 # the init image matters


def test_sdxl_img2img(sdxl):
    init = _noise_image(16, 24, seed=2)
    (r,) = generate(sdxl, GenerationParams("a dog", init_image=init, strength=0.6, steps=3, seed=1,
                                                  sampler="DPM++ 2M SDE"))
    assert r.image.size == (16, 24)


def test_params_from_webui_infotext():
    info = parse_generation_parameters("a cat\nNegative prompt: dull\nSteps: 12, Sampler: DPM++ 2M Karras, "
                                       "CFG scale: 6.5, Seed: 42, Size: 512x768, Denoising strength: 0.4")
    p = GenerationParams.from_infotext(info, seed=1)
    assert (p.prompt, p.negative_prompt, p.steps, p.cfg_scale, p.seed, p.width, p.height, p.strength) == \
        ("a cat", "dull", 12, 6.5, 1, 512, 768, 0.4)
    from dreambooth.generation.samplers import resolve
    assert resolve(p.sampler, p.schedule)[1] == "Karras"


def test_model_hash_of_a_folder(tiny_sd1, tmp_path):
    from dreambooth.models.hashes import model_hash
    h = model_hash(tiny_sd1)
    assert len(h) == 10 and model_hash(tiny_sd1) == h
    single = tmp_path / "m.safetensors"
    single.write_bytes(b"abc")
    assert model_hash(single) == "ba7816bf8f"                     # sha256("abc")[:10], as the WebUI


def test_inpaint_keeps_unmasked_pixels(sd1, sdxl):
    """Beyond the mask and its feather (the WebUI's Mask blur, 2.5 standard deviations wide) every
    pixel is the init image's; the feather blends; the PNG records the blur."""
    init = _noise_image(16, 16, seed=1)
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[:, :8] = 255
    for pipe in (sd1, sdxl):
        for blur, kept in ((0, 8), (2, 13)):
            (r,) = generate(pipe, GenerationParams("a dog", init_image=init, mask=Image.fromarray(mask),
                                                   strength=0.9, steps=3, seed=1, mask_blur=blur))
            out = pixels(r)
            assert np.array_equal(out[:, kept:], pixels(init)[:, kept:]), blur
            assert not np.array_equal(out[:, :8], pixels(init)[:, :8])
            assert f"Mask blur: {blur}," in r.infotext
            if blur:
                assert not np.array_equal(out[:, 8:kept], pixels(init)[:, 8:kept])       # feathered


def test_only_masked_samples_the_masked_area_and_puts_it_back(sd1, monkeypatch):
    """The WebUI's "Inpaint area: Only masked": the box around the mask (with padding, in the sampling
    size's proportions) is sampled at the full sampling size and put back; the image keeps the init
    image's size, and every pixel outside the mask is the init image's."""
    init = _noise_image(64, 48, seed=2)
    mask = np.zeros((48, 64), dtype=np.uint8)
    mask[8:16, 40:48] = 255
    params = GenerationParams("a dog", init_image=init, mask=Image.fromarray(mask), strength=0.9, steps=3, seed=1,
                              width=32, height=32, mask_blur=0, only_masked=True, masked_padding=4)
    (r,) = generate(sd1, params)
    out, before = pixels(r), pixels(init)
    assert r.image.size == (64, 48) and "Inpaint area: Only masked, Masked area padding: 4" in r.infotext
    assert np.array_equal(out[mask == 0], before[mask == 0])
    assert not np.array_equal(out[8:16, 40:48], before[8:16, 40:48])
    (whole,) = generate(sd1, params.replace(only_masked=False))
    assert whole.image.size == (32, 32) and "Inpaint area" not in whole.infotext
    blank = params.replace(mask=Image.new("L", (64, 48), 0))
    resized = pixels(init.resize((32, 32), resample=Image.BICUBIC))      # nothing masked: the whole picture,
    said = []
    monkeypatch.setattr("dreambooth.progress.warn", said.append)
    assert np.array_equal(pixels(generate(sd1, blank)[0]), resized)       # with nothing repainted, and said
    assert said == ["--mask: black all over, so nothing is repainted"]


def test_fill_paints_the_masked_area_with_the_colours_around_it(sd1):
    from dreambooth.generation.masks import fill
    image = np.zeros((32, 64, 3), dtype=np.uint8)
    image[:, :32] = (200, 30, 30)
    image[:, 32:] = (30, 30, 200)
    image[12:20, 12:20] = (30, 200, 30)                 # a green square in the red half, masked
    mask = np.zeros((32, 64), dtype=np.uint8)
    mask[10:22, 10:22] = 255
    filled = np.asarray(fill(Image.fromarray(image), Image.fromarray(mask)))
    assert np.array_equal(filled[mask == 0], image[mask == 0])
    square = filled[12:20, 12:20].reshape(-1, 3).mean(axis=0)
    assert square[0] > 150 and square[1] < 60, square   # red, as around it; no green left
    init = Image.fromarray(image)
    params = GenerationParams("a dog", init_image=init, mask=Image.fromarray(mask), strength=0.5, steps=4, seed=1,
                              width=64, height=32)
    (original,), (filled_start,) = generate(sd1, params), generate(sd1, params.replace(masked_content="fill"))
    assert "Masked content: fill" in filled_start.infotext and "Masked content" not in original.infotext
    assert not np.array_equal(pixels(original)[12:20, 12:20], pixels(filled_start)[12:20, 12:20])


def test_latent_noise_and_latent_nothing_replace_the_latents_under_the_mask(sd1, sdxl):
    """The WebUI's other two Masked content settings: the colours around it (as "fill"), then the latents
    under the mask replaced by the seed's noise or by zeros. Each is recorded and made again from its
    infotext; beyond the mask, the init image."""
    from dreambooth.generation.infotext import parse_generation_parameters
    init = _noise_image(32, 32, seed=7)
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[8:24, 8:24] = 255
    for pipe in (sd1, sdxl):
        params = GenerationParams("a dog", init_image=init, mask=Image.fromarray(mask), strength=0.6, steps=3, seed=4,
                                  mask_blur=0)
        made = {content: generate(pipe, params.replace(masked_content=content))[0]
                for content in ("fill", "latent noise", "latent nothing")}
        assert len({pixels(r)[8:24, 8:24].tobytes() for r in made.values()}) == 3
        for content, r in made.items():
            assert f"Masked content: {content}" in r.infotext
            assert np.array_equal(pixels(r)[mask == 0], pixels(init)[mask == 0])
            again = GenerationParams.from_infotext(parse_generation_parameters(r.infotext), init_image=init,
                                                   mask=Image.fromarray(mask))
            assert again.masked_content == content and np.array_equal(pixels(generate(pipe, again)[0]), pixels(r))
        assert "_encode_vae_image" not in vars(pipe.for_task("inpaint"))          # the pipeline as it was


def test_the_masked_region_is_the_webuis():
    from dreambooth.generation.masks import masked_region

    def region(box, size=(64, 48), padding=0, width=32, height=32):
        mask = Image.new("L", size, 0)
        mask.paste(255, box)
        return masked_region(mask, padding, width, height)
    assert region((10, 5, 20, 9)) == (10, 2, 20, 12)                   # grown to a square, centred
    assert region((10, 5, 20, 9), padding=3) == (7, 0, 23, 16)          # padded, then kept inside
    assert region((0, 0, 4, 30)) == (0, 0, 30, 30)                      # moved back inside at the border
    assert region((60, 40, 64, 48)) == (56, 40, 64, 48)
    assert region((28, 0, 36, 48), width=64, height=32) == (0, 0, 64, 48)   # wider than the image: all of it
    assert masked_region(Image.new("L", (8, 8), 0), 4, 32, 32) is None


def test_mask_blur_is_the_webuis_gaussian():
    """Along x, then y: a Gaussian kernel of radius int(2.5 sigma + 0.5), mirrored at the borders
    (OpenCV's default), rounded to 8 bits after each pass."""
    from dreambooth.generation.masks import feather
    rng = np.random.default_rng(0)
    mask = (rng.random((20, 30)) > 0.7).astype(np.uint8) * 255
    for sigma in (1, 4):
        r = int(2.5 * sigma + 0.5)
        kernel = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * sigma ** 2))
        kernel /= kernel.sum()
        values = mask.astype(np.float64)
        for axis in (1, 0):
            padded = np.pad(values, [(0, 0), (r, r)] if axis == 1 else [(r, r), (0, 0)], mode="reflect")
            values = np.round(sum(w * np.take(padded, range(k, k + values.shape[axis]), axis=axis)
                                  for k, w in enumerate(kernel)))
        assert np.array_equal(np.asarray(feather(Image.fromarray(mask), sigma)), values.astype(np.uint8)), sigma
    assert feather(Image.fromarray(mask), 0).tobytes() == mask.tobytes()


def test_resize_modes_are_the_webuis():
    """Crop and resize: scaled to cover, the overhang cut evenly; Resize and fill: scaled to fit, centred,
    the bars filled with the edge rows (columns) stretched out; Just resize: stretched."""
    from dreambooth.generation.resizing import resized
    wide = _noise_image(96, 32, seed=4)                     # 3:1 into a square
    crop = pixels(resized(wide, 32, 32, "Crop and resize"))
    assert np.array_equal(crop, pixels(wide.resize((96, 32), Image.BICUBIC))[:, 32:64])
    fitted = pixels(resized(wide, 48, 48, "Resize and fill"))
    scaled = pixels(wide.resize((48, 16), Image.BICUBIC))
    assert np.array_equal(fitted[16:32], scaled)
    assert (fitted[:16] == scaled[0]).all() and (fitted[32:] == scaled[-1]).all()
    tall = wide.transpose(Image.Transpose.ROTATE_90)         # 1:3 into a square: bars left and right
    fitted = pixels(resized(tall, 48, 48, "Resize and fill"))
    scaled = pixels(tall.resize((16, 48), Image.BICUBIC))
    assert np.array_equal(fitted[:, 16:32], scaled)
    assert (fitted[:, :16] == scaled[:, :1]).all() and (fitted[:, 32:] == scaled[:, -1:]).all()
    assert np.array_equal(pixels(resized(tall, 32, 32, "Crop and resize")), pixels(tall.resize((32, 96), Image.BICUBIC))[32:64])
    assert np.array_equal(pixels(resized(wide, 40, 24)), pixels(wide.resize((40, 24), Image.BICUBIC)))


def test_img2img_resize_modes_and_inverted_masks_are_recorded_and_replayed(sd1):
    """``resize_mode`` meets an init image of other proportions as the WebUI's Resize mode; ``invert_mask``
    repaints what the mask leaves (Mask mode "Inpaint not masked"). Both are in the infotext, and the
    infotext makes the same image again."""
    from dreambooth.generation.infotext import parse_generation_parameters
    from dreambooth.generation.resizing import resized
    wide = _noise_image(64, 32, seed=5)
    base = GenerationParams("a dog", init_image=wide, strength=0.5, steps=3, seed=2, width=32, height=32)
    (plain,) = generate(sd1, base)
    assert "Resize mode" not in plain.infotext
    made = {}
    for mode in ("Crop and resize", "Resize and fill"):
        (made[mode],) = generate(sd1, base.replace(resize_mode=mode))
        assert f"Resize mode: {mode}," in made[mode].infotext
        again = GenerationParams.from_infotext(parse_generation_parameters(made[mode].infotext), init_image=wide)
        assert again.resize_mode == mode and np.array_equal(pixels(generate(sd1, again)[0]), pixels(made[mode]))
    assert len({pixels(r).tobytes() for r in (plain, *made.values())}) == 3
    # inpainting, the whole picture under a resize mode: beyond the mask and its feather, the init image
    # as that mode resizes it; inverted, the other side is repainted
    mask = np.zeros((32, 64), dtype=np.uint8)
    mask[:, 32:] = 255                                      # the right half (of the crop's 16-48)
    keep = pixels(resized(wide, 32, 32, "Crop and resize"))
    painted = base.replace(mask=Image.fromarray(mask), resize_mode="Crop and resize", mask_blur=0, strength=0.9)
    (right,), (left,) = generate(sd1, painted), generate(sd1, painted.replace(invert_mask=True))
    assert np.array_equal(pixels(right)[:, :16], keep[:, :16]) and not np.array_equal(pixels(right)[:, 16:], keep[:, 16:])
    assert np.array_equal(pixels(left)[:, 16:], keep[:, 16:]) and not np.array_equal(pixels(left)[:, :16], keep[:, :16])
    assert "Mask mode: Inpaint not masked" in left.infotext and "Mask mode" not in right.infotext
    assert GenerationParams.from_infotext(parse_generation_parameters(left.infotext)).invert_mask


def test_an_only_masked_box_the_image_cannot_widen_is_fitted_not_stretched():
    """The WebUI fits the "Only masked" box into the sampling size as "Resize and fill" (and the sample
    back as "Crop and resize"): a box wider than the image allows is not stretched."""
    from dreambooth.generation.masks import prepare
    from dreambooth.generation.resizing import resized
    init = _noise_image(64, 16, seed=6)
    mask = Image.new("L", (64, 16), 0)
    mask.paste(255, (20, 4, 44, 12))
    job = prepare(init, mask, 32, 32, blur=0, only_masked=True, padding=0)
    x1, y1, x2, y2 = job.region
    assert (y1, y2) == (0, 16) and x2 - x1 == 24                   # as square as the image's 16 rows allow
    start = pixels(job.init)
    band = pixels(init.crop(job.region).resize((32, 21), Image.LANCZOS))
    assert job.init.size == (32, 32) and np.array_equal(start[6:27], band)
    assert (start[:6] == band[0]).all() and (start[27:] == band[-1]).all()
    back = job.finish(job.init)                                     # the start image put back as it came
    assert back.size == (64, 16)
    assert np.array_equal(pixels(back)[4:12, 20:44], pixels(resized(job.init, 24, 16, "Crop and resize", Image.LANCZOS))[4:12])


def test_a_mask_with_transparency_is_read_by_its_alpha(tmp_path):
    """As the WebUI reads a mask: a stroke painted on a clear layer repaints where it is opaque (whatever
    its colour); a mask without transparency by its grey levels."""
    from dreambooth.generation.masks import as_mask
    stroke = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    stroke.paste((0, 0, 0, 255), (4, 4, 12, 12))                      # black, opaque
    stroke.save(tmp_path / "stroke.png")
    for given in (stroke, tmp_path / "stroke.png"):
        mask = np.asarray(as_mask(given))
        assert mask[4:12, 4:12].min() == 255 and mask.sum() == 255 * 64
    grey = Image.new("RGB", (16, 16), (255, 255, 255))
    assert np.asarray(as_mask(grey)).min() == 255
    assert np.asarray(as_mask(grey.convert("RGBA"))).min() == 255      # opaque everywhere: its grey levels


def test_seeds_never_run_past_the_largest(sd1):
    """Image i gets seed + i, and must be made again from that seed alone: a run whose last seed would
    pass 2**32 - 1 is refused; a random seed leaves room for every image."""
    with pytest.raises(UserError, match=r"--seed 4294967295: its 2 images would run to seed 4294967296"):
        GenerationParams("x", seed=2**32 - 1, batch_size=2).check()
    GenerationParams("x", seed=2**32 - 2, batch_size=2).check()
    assert all(GenerationParams("x", batch_count=10_000).with_seed().check() for _ in range(20))


def test_an_xyz_cell_beyond_the_familys_size_is_refused_before_any_image(sd1, tmp_path):
    from dreambooth.generation.xyz import run_xyz
    too_wide = sd1.max_side + 8
    with pytest.raises(UserError, match=rf"--x Width: {too_wide}: --width {too_wide}: must be from 8 to {sd1.max_side}"):
        run_xyz(sd1, GenerationParams("a dog", steps=1, width=32, height=32, seed=1), f"Width: 32, {too_wide}",
                output_dir=tmp_path)
    assert not list(tmp_path.iterdir())


def test_the_hires_fix_upscales_and_denoises_again_as_recorded(sd1, sdxl):
    """txt2img's Hires. fix: made at its size, upscaled (latents or picture), denoised again at the
    larger size; the infotext says so as the WebUI's does, and remakes the image bit for bit."""
    from dreambooth.generation.infotext import parse_generation_parameters
    base = GenerationParams("a dog", steps=3, seed=5, width=16, height=16, hires=True, strength=0.6)
    for pipe in (sd1, sdxl):
        made = {}
        for upscaler in ("Latent", "Latent (nearest-exact)", "Lanczos"):
            (made[upscaler],) = generate(pipe, base.replace(hires_upscaler=upscaler))
            r = made[upscaler]
            assert r.image.size == (32, 32)
            assert f"Size: 16x16, " in r.infotext and "Denoising strength: 0.6" in r.infotext
            assert f"Hires upscale: 2, Hires upscaler: {upscaler}," in r.infotext
            again = GenerationParams.from_infotext(parse_generation_parameters(r.infotext))
            assert again.hires and again.hires_upscaler == upscaler
            assert np.array_equal(pixels(generate(pipe, again)[0]), pixels(r))
        assert len({pixels(r).tobytes() for r in made.values()}) == 3
        (first,) = generate(pipe, base.replace(hires=False, strength=0.75))
        upscaled = pixels(first.image.resize((32, 32), Image.LANCZOS))
        assert not np.array_equal(pixels(made["Lanczos"]), upscaled)             # denoised again, not only resized
    (cut,) = generate(sd1, base.replace(hires_width=48, hires_height=24, hires_steps=2))
    assert cut.image.size == (48, 24) and "Hires resize: 48x24, Hires steps: 2," in cut.infotext
    info = parse_generation_parameters(cut.infotext)
    assert GenerationParams.from_infotext(info).replace(seed=5) == base.replace(hires_width=48, hires_height=24,
                                                                                  hires_steps=2, width=16, height=16)


def test_hires_targets_are_the_webuis():
    from dreambooth.generation.hires import hires_target
    assert hires_target(512, 512, 1.5).size == (768, 768)
    assert hires_target(512, 768, 2, 1024, 0).size == (1024, 1536)       # one side: the other in proportion
    assert hires_target(512, 768, 2, 0, 1024).size == (680, 1024)
    wide = hires_target(512, 512, 2, 1024, 512)                           # other proportions: cover, then cut
    assert wide.upscaled == (1024, 1024) and wide.size == (1024, 512) and wide.crop(8) == (0, 32, 128, 96)


def test_eta_is_ddims_and_recorded(sd1):
    """The WebUI's eta: DDIM's noise (0, its default, is deterministic and unrecorded); a stochastic
    sampler draws at 1 and refuses another; a deterministic one is unchanged by it."""
    from dreambooth.generation.infotext import parse_generation_parameters

    def made(**kw):
        (r,) = generate(sd1, GenerationParams("a dog", steps=4, seed=3, width=32, height=32, **kw))
        return r
    plain, noisy = made(sampler="DDIM"), made(sampler="DDIM", eta=1.0)
    assert not np.array_equal(pixels(plain), pixels(noisy)) and "Eta" not in plain.infotext
    assert np.array_equal(pixels(noisy), pixels(made(sampler="DDIM", eta=1.0)))                 # seeded
    assert np.array_equal(pixels(plain), pixels(made(sampler="DDIM", eta=0.0)))
    again = GenerationParams.from_infotext(parse_generation_parameters(noisy.infotext))
    assert again.eta == 1.0 and "Eta DDIM: 1," in noisy.infotext
    assert np.array_equal(pixels(made(sampler="DPM++ 2M", eta=0.3)), pixels(made(sampler="DPM++ 2M")))
    assert np.array_equal(pixels(made(sampler="Euler a", eta=1.0)), pixels(made(sampler="Euler a")))
    with pytest.raises(UserError, match=r"--eta 0.5: Euler a draws its noise at eta 1"):
        made(sampler="Euler a", eta=0.5)


def test_bad_inputs_are_one_line_errors(sd1, tmp_path):
    cases = [
        (GenerationParams("x", sampler="Foo"), "--sampler Foo: unknown; valid: "),
        (GenerationParams("x", init_image=str(tmp_path / "missing.png")), "--init-image"),
        (GenerationParams("x", mask=str(tmp_path / "m.png")), "--mask"),
        (GenerationParams("x", width=20), "--width 20: must be a multiple of 8"),
        (GenerationParams("x", cfg_scale=float("nan")), "--cfg nan: must be a finite number"),
        (GenerationParams("x", seed=-2), "--seed -2"),
        (GenerationParams("x", seed=2**70), "--seed"),
        (GenerationParams("x", steps=0), "--steps 0"),
        (GenerationParams("x", mask_blur=65), "--mask-blur 65: must be from 0 to 64"),
        (GenerationParams("x", only_masked="yes"), "--only-masked 'yes'"),
        (GenerationParams("x", resize_mode="Stretch"), "--resize-mode 'Stretch': one of Just resize, Crop and resize"),
        (GenerationParams("x", hires=True, init_image=_noise_image(8, 8)), "--hires is for txt2img"),
        (GenerationParams("x", hires_scale=1.5), "--hires-scale is for the hires fix: give --hires too"),
        (GenerationParams("x", hires=True, hires_scale=9), "--hires-scale 9"),
        (GenerationParams("x", hires=True, hires_upscaler="ESRGAN_4x"), "--hires-upscaler 'ESRGAN_4x': one of Latent"),
        (GenerationParams("x", hires=True, hires_width=33), "--hires-width 33: must be a multiple of 8 (or 0)"),
        (GenerationParams("x", hires=True, width=1024, height=1024, hires_scale=4), "--hires: 1024x1024 upscaled is 4096x4096"),
        (GenerationParams("x", resize_mode="Crop and resize"), "--resize-mode is for img2img: give --init-image"),
        (GenerationParams("x", init_image=_noise_image(8, 8), invert_mask=True), "--invert-mask is for inpainting"),
        (GenerationParams("x", init_image=_noise_image(8, 8), mask=Image.new("L", (8, 8)), only_masked=True,
                          resize_mode="Resize and fill"), "--resize-mode with --only-masked"),
        (GenerationParams("x", sampler="DDIM", schedule="Karras"), "allowed: Automatic"),
    ]
    for params, message in cases:
        with pytest.raises(UserError) as err:
            generate(sd1, params)
        assert message in str(err.value) and "\n" not in str(err.value)


# ---- LoRAs -------------------------------------------------------------------------------------------------------

def _make_lora(base_dir, out_dir):
    """A random (non-zero) LoRA on the tiny SD1 UNet, saved as `dreambooth train` saves LoRAs,
    plus the same weights in kohya's key format."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file
    pipe = StableDiffusionPipeline.from_pretrained(base_dir)
    torch.manual_seed(0)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    out_dir.mkdir()
    StableDiffusionPipeline.save_lora_weights(out_dir, unet_lora_layers=state)
    (out_dir / "training_args.json").write_text(json.dumps({"model": str(base_dir), "rank": 4}))
    kohya = {}
    for key, value in state.items():
        module, which = key.rsplit(".lora.", 1)
        name = "lora_unet_" + module.replace(".", "_")
        kohya[f"{name}.lora_{'down' if which.startswith('down') else 'up'}.weight"] = value.contiguous()
        kohya[f"{name}.alpha"] = torch.tensor(4.0)
    kohya_file = out_dir.parent / "sks_kohya.safetensors"
    save_file(kohya, str(kohya_file))
    return out_dir, kohya_file


def test_loras(tiny_sd1, sd1, tmp_path):
    lora_dir, kohya_file = _make_lora(tiny_sd1, tmp_path / "sks_lora")
    base = pixels(gen(sd1)[0])

    from_output = load_generation_pipeline(str(lora_dir))          # base model from training_args.json
    (r,) = gen(from_output)
    assert not np.array_equal(pixels(r), base)
    info = parse_generation_parameters(r.infotext)
    assert info["Prompt"] == "a dog <lora:sks_lora:1>" and info["Lora hashes"].startswith("sks_lora: ")
    assert info["Model"] == tiny_sd1.name

    kohya = load_generation_pipeline(str(tiny_sd1), [(str(kohya_file), 1.0)])
    assert np.array_equal(pixels(gen(kohya)[0]), pixels(r))        # same weights, other key format

    # named twice: applied at the sum of its weights, in either order (as the WebUI applies it twice)
    twice = [pixels(gen(kohya, f"a dog {tags}")[0]) for tags in ("<lora:sks_kohya:1> <lora:sks_kohya:0.5>",
                                                                 "<lora:sks_kohya:0.5> <lora:sks_kohya:1>")]
    assert np.array_equal(twice[0], twice[1]) and np.array_equal(twice[0], pixels(gen(kohya, "a dog <lora:sks_kohya:1.5>")[0]))

    zero = load_generation_pipeline(str(tiny_sd1), [parse_lora_spec(f"{lora_dir}:0")])
    assert np.array_equal(pixels(gen(zero)[0]), base)

    with pytest.raises(UserError, match="--lora .*no such file"):
        load_generation_pipeline(str(tiny_sd1), [(str(tmp_path / "nope.safetensors"), 1.0)])

    # the infotext says where model and LoRA were: --from-image needs neither --model nor --lora
    (saved,) = generate(from_output, GenerationParams("a dog", seed=7, **SMALL), tmp_path / "out")
    assert json.loads(parse_generation_parameters(saved.infotext)["Lora paths"]) == {"sks_lora": str(lora_dir.resolve())}
    code, stdout, err = run_cli("generate", "--from-image", saved.path, "--output", tmp_path / "again")
    assert code == 0, err
    assert np.array_equal(pixels(Image.open(stdout.split()[0])), pixels(r))


def test_a_lora_that_does_not_fit_is_one_line_and_leaves_the_model_as_it_was(tiny_sd1, sdxl, tmp_path, capfd):
    """A LoRA for another family, or whose layers this model lacks (an SDXL second-text-encoder LoRA on
    SD1): one line naming it and why, without diffusers' per-layer log; the model then works as before,
    other LoRAs included."""
    from safetensors.torch import save_file

    from dreambooth.generation.loras import lora_from_path
    _, kohya_file = _make_lora(tiny_sd1, tmp_path / "sks_lora")
    te2 = tmp_path / "te2_only.safetensors"
    name = "lora_te2_text_model_encoder_layers_0_self_attn_q_proj"
    save_file({f"{name}.lora_down.weight": torch.ones(4, 32), f"{name}.lora_up.weight": torch.ones(32, 4),
               f"{name}.alpha": torch.tensor(4.0)}, str(te2))
    pipe = load_generation_pipeline(str(tiny_sd1))
    for path in (te2, kohya_file):
        pipe.library.add(lora_from_path(path))
    capfd.readouterr()
    with pytest.raises(UserError, match=r"^<lora:te2_only> \(.*\): none of its layers is one of this SD1 model's"):
        generate(pipe, GenerationParams("a dog <lora:te2_only:1>", seed=1, **SMALL))
    pipe.info.share_paths = False            # a server's: its clients read no path of its machine
    with pytest.raises(UserError, match=r"^<lora:te2_only>: none of its layers") as err:
        generate(pipe, GenerationParams("a dog <lora:te2_only:1>", seed=1, **SMALL))
    assert str(tmp_path) not in str(err.value)
    pipe.info.share_paths = True
    (fits,) = generate(pipe, GenerationParams("a dog <lora:sks_kohya:1>", seed=1, **SMALL))
    (alone,) = generate(load_generation_pipeline(str(tiny_sd1), [(str(kohya_file), 1.0)]), GenerationParams("a dog", seed=1, **SMALL))
    assert np.array_equal(pixels(fits), pixels(alone))
    sdxl.library.add(lora_from_path(kohya_file))
    with pytest.raises(UserError, match=r"^<lora:sks_kohya> \(.*\): (cannot apply to this model \(its layers' sizes are "
                                        r"not this SDXL model's|none of its layers is one of this SDXL model's)") as err:
        generate(sdxl, GenerationParams("a dog <lora:sks_kohya:1>", seed=1, **SMALL))
    assert "\n" not in str(err.value) and "size mismatch" not in capfd.readouterr().err
    generate(sdxl, GenerationParams("a dog", seed=1, **SMALL))


def test_parse_lora_spec():
    assert parse_lora_spec("out/lora") == ("out/lora", 1.0)
    assert parse_lora_spec("out/lora:0.6") == ("out/lora", 0.6)
    assert parse_lora_spec("C:\\loras\\x.safetensors") == ("C:\\loras\\x.safetensors", 1.0)
    assert parse_lora_spec("C:\\loras\\x.safetensors:-.5") == ("C:\\loras\\x.safetensors", -0.5)


# ---- CLI ----------------------------------------------------------------------------------------------------------

def test_cli_generate_and_from_image(tiny_sd1, tmp_path):
    out = tmp_path / "out"
    code, stdout, err = run_cli("generate", "--model", tiny_sd1, "--prompt", "a (dog:1.2)", "--negative-prompt",
                                "blurry", "--sampler", "DPM++ 2M", "--schedule", "Karras", "--steps", "2",
                                "--cfg", "5", "--seed", "11", "--width", "16", "--height", "16", "--batch-size", "2",
                                "--output", out)
    assert code == 0, err
    files = stdout.split()
    assert [f.rsplit("/", 1)[-1] for f in files] == ["00001-11.png", "00002-12.png"]
    info = parse_generation_parameters(read_infotext(files[1]))
    assert (info["Prompt"], info["Negative prompt"], info["Sampler"], info["Schedule type"], info["Steps"],
            info["CFG scale"], info["Seed"], info["Size-1"], info["Size-2"]) == \
        ("a (dog:1.2)", "blurry", "DPM++ 2M", "Karras", "2", "5", "12", "16", "16")
    assert len(info["Model hash"]) == 10 and info["Model"] == tiny_sd1.name

    assert info["Model path"] == str(tiny_sd1.resolve())
    again = tmp_path / "again"
    code, stdout, err = run_cli("generate", "--from-image", files[1], "--output", again)
    assert code == 0, err
    (copy,) = stdout.split()
    assert copy.endswith("00001-12.png")
    assert np.array_equal(pixels(Image.open(copy)), pixels(Image.open(files[1])))
    assert "will differ" not in err
    code, stdout, err = run_cli("generate", "--from-image", files[1], "--model", tiny_sd1, "--seed", "3",
                                "--output", again)
    assert code == 0 and stdout.split()[0].endswith("00002-3.png")
    # made by weights the model no longer has (trained on since, or --keep-best put others in place)
    from dreambooth.images import write_png
    changed = write_png(Image.open(files[1]), tmp_path / "changed.png",
                        read_infotext(files[1]).replace(info["Model hash"], "0123456789"))
    code, stdout, err = run_cli("generate", "--from-image", changed, "--output", again)
    assert code == 0 and (f"--from-image {changed}: made with Model hash 0123456789; {tiny_sd1.resolve()} is "
                          f"{info['Model hash']} now (its weights changed since), so the image will differ") in err, err


def test_cli_errors_are_one_line(tiny_sd1, tmp_path):
    base = ["generate", "--model", tiny_sd1, "--prompt", "x", "--steps", "1", "--width", "16", "--height", "16",
            "--output", tmp_path]
    for extra, message in [(["--sampler", "Foo"], "--sampler Foo: unknown; valid: DPM++ 2M, "),
                           (["--init-image", tmp_path / "nope.png"], "--init-image"),
                           (["--x", "Colour: red"], "--x"),
                           (["--schedule", "Karras", "--sampler", "PLMS"], "allowed:")]:
        code, out, err = run_cli(*base, *extra)
        assert code == 2 and message in err and err.count("\n") == 1, err
    code, out, err = run_cli("generate", "--prompt", "x")
    assert code == 2 and "--model" in err
    code, out, err = run_cli("generate", "--from-image", tmp_path / "none.png")
    assert code == 2 and "--from-image" in err
    from dreambooth.images import write_png
    png = write_png(Image.new("RGB", (8, 8)), tmp_path / "other.png", "a\nSteps: 1, Seed: 1, Model: elsewhere")
    code, out, err = run_cli("generate", "--from-image", png)
    assert code == 2 and "Model: elsewhere" in err and "pass --model" in err and err.count("\n") == 1


def test_progress_events_and_the_terminal_bar(sd1, monkeypatch, capsys):
    from dreambooth import progress
    from dreambooth.terminal import TerminalBars
    events = []
    with progress.subscribed(events.append), progress.subscribed(TerminalBars(bars=True)):
        generate(sd1, GenerationParams("a dog", batch_count=2, **SMALL))
    kinds = [e.kind for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("advance") == 2 * SMALL["steps"]
    assert events[-1].task == "generating" and events[-1].total == 2 and events[-1].completed == pytest.approx(2)
    assert events[-1].rate and events[-1].eta == pytest.approx(0)
    err = capsys.readouterr().err
    assert "generating" in err and "2/2" in err


def test_an_output_folder_it_cannot_write_fails_before_the_model_loads(tmp_path, monkeypatch):
    """(A read-only file system, as root too.) One line, and nothing loaded or made."""
    import os

    from conftest import run_cli
    from dreambooth.cli import generate as cli
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path) == str(tmp_path) else real(path, mode))
    monkeypatch.setattr(cli, "load_generation_pipeline", lambda *a, **k: pytest.fail("loaded a model"))
    code, _, err = run_cli("generate", "--model", "toy", "--prompt", "a dog", "--output", tmp_path / "images")
    assert code == 2 and f"--output {tmp_path / 'images'}: cannot write there" in err and err.count("\n") == 1, err
    assert not (tmp_path / "images").exists()


def test_progress_in_a_log_file_is_lines_while_it_runs(sd1, monkeypatch, capsys):
    """(stderr not a terminal: nohup, a CI log.) A rich bar there showed only when the task ended."""
    from dreambooth import progress, terminal
    monkeypatch.setattr(terminal, "LINE_EVERY", 0.0)
    with progress.subscribed(terminal.TerminalBars(bars=True)):
        generate(sd1, GenerationParams("a dog", batch_count=2, **SMALL))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("generating ")]
    assert len(lines) == 2 * SMALL["steps"] + 1 and "ETA" in lines[0] and lines[-1].endswith(" s") and "done in" in lines[-1]
    with progress.subscribed(terminal.TerminalBars(bars=True)), pytest.raises(KeyboardInterrupt):
        with progress.task("training", 10) as bar:              # stopped (Ctrl-C, a server's SIGTERM) at 3 of 10
            bar.advance(3)
            raise KeyboardInterrupt
    (last,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("training 3/10")][-1:]
    assert ", stopped after " in last and "done" not in last
