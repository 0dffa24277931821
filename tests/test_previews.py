"""Live previews: the full decode, and the cheap linear map fitted to the model's own VAE."""
from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def toy():
    from dreambooth.generation.pipeline import load_generation_pipeline
    return load_generation_pipeline("toy", dtype=torch.float32)


COLOURS = ((200, 40, 40), (30, 160, 60), (40, 60, 200), (230, 220, 90))


def _latents_of(pipe, colour):
    """The scaled latents of a flat colour, as the sampler holds them."""
    vae = pipe.vae
    x = (torch.tensor(colour, dtype=torch.float32) / 127.5 - 1)[None, :, None, None].expand(1, 3, 32, 32)
    with torch.no_grad():
        return vae.encode(x).latent_dist.mean * vae.config.scaling_factor


def test_the_cheap_preview_shows_the_colours_at_the_latents_size(toy):
    from dreambooth.generation.previews import preview_image
    for colour in COLOURS:
        latents = _latents_of(toy.pipe, colour)
        cheap = preview_image(toy.pipe, torch.cat([latents, -latents]), "Approx cheap")      # the first image
        assert cheap.size == (latents.shape[-1], latents.shape[-2])
        mean = np.asarray(cheap, dtype=np.float32).reshape(-1, 3).mean(0)
        nearest = min(COLOURS, key=lambda c: np.abs(mean - np.array(c)).sum())
        assert nearest == colour, (colour, mean)
        full = preview_image(toy.pipe, latents, "Full")
        assert full.size == (32, 32)


def test_a_grid_of_the_batch_when_asked(toy):
    from dreambooth.generation.previews import preview_image
    latents = torch.cat([_latents_of(toy.pipe, c) for c in COLOURS[:3]])
    h, w = latents.shape[-2:]
    assert preview_image(toy.pipe, latents, "Approx cheap").size == (w, h)
    grid = preview_image(toy.pipe, latents, "Approx cheap", grid=True)
    assert grid.size == (2 * w, 2 * h)                                  # 3 images: 2 columns, 2 rows
    cells = np.asarray(grid, dtype=np.float32)
    for k, colour in enumerate(COLOURS[:3]):
        r, c = divmod(k, 2)
        mean = cells[r * h:(r + 1) * h, c * w:(c + 1) * w].reshape(-1, 3).mean(0)
        assert min(COLOURS, key=lambda other: np.abs(mean - np.array(other)).sum()) == colour
    assert preview_image(toy.pipe, latents, "Full", grid=True).size == (64, 64)


def test_the_map_is_fitted_once_per_vae_and_the_same_every_time(toy):
    from dreambooth.generation import previews
    first = previews.rgb_map(toy.pipe)
    assert previews.rgb_map(toy.pipe) is first
    again = previews._fit(toy.pipe.vae, toy.pipe.vae_scale_factor)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    with pytest.raises(ValueError, match="show_progress_type"):
        previews.preview_image(toy.pipe, _latents_of(toy.pipe, COLOURS[0]), "TAESD")


def test_no_preview_after_the_last_step(tiny_sd1):
    """Every ``preview_every`` steps, but not after the last: the image itself comes next."""
    from dreambooth.generation.params import GenerationParams
    from dreambooth.generation.pipeline import load_generation_pipeline
    from dreambooth.generation.sampling import Controls, generate
    pipeline = load_generation_pipeline(str(tiny_sd1), dtype=torch.float32)
    for steps, every, expected in ((6, 2, 2), (6, 4, 1), (5, 1, 4), (3, 10, 0)):
        seen = []
        controls = Controls(preview=lambda latents: seen.append(latents.shape), preview_every=every)
        generate(pipeline, GenerationParams("a dog", steps=steps, width=32, height=32, seed=1), controls=controls)
        assert len(seen) == expected, (steps, every)


def test_previews_show_the_denoised_estimate_and_change_no_step(toy, monkeypatch):
    """The WebUI's previews show the model's estimate of the finished image, not the noisy latents:
    from the scheduler's own step output (Euler a, DDIM), or its last model output (DPM++ 2M, UniPC).
    PLMS has none, and shows the latents. The images are the same with and without previews."""
    from dreambooth.generation import sampling
    from dreambooth.generation.params import GenerationParams

    def run(sampler):
        seen = []
        made = sampling.generate(toy, GenerationParams("a photo of a red ball", sampler=sampler, steps=6, width=32,
                                                       height=32, seed=1),
                                 controls=sampling.Controls(preview=lambda latents: seen.append(latents.float()),
                                                            preview_every=1))
        return seen, made[0].image.tobytes()

    samplers = ("Euler a", "DDIM", "DPM++ 2M", "UniPC", "PLMS")
    estimates = {s: run(s) for s in samplers}
    monkeypatch.setattr(sampling, "denoised_estimates", lambda scheduler, state: None)
    noisy = {s: run(s) for s in samplers}
    for s in samplers:
        assert estimates[s][1] == noisy[s][1], s                          # the same image either way
        assert len(estimates[s][0]) == len(noisy[s][0]) >= 5              # (PLMS: 7 iterations for 6 steps)
        same = all(torch.equal(a, b) for a, b in zip(estimates[s][0], noisy[s][0]))
        assert same == (s == "PLMS"), s
    # Euler a's first latents are noise at the largest sigma; its estimate is an image's latents
    assert estimates["Euler a"][0][0].std() < noisy["Euler a"][0][0].std() / 3
