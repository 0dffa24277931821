"""A server's interrupt or skip ends a step at the UNet's next block, not at the step's end: one step
of a large image on a CPU takes minutes, and every request waits behind it (generation/stopping.py)."""
from __future__ import annotations

import numpy as np
import pytest
from diffusers.models.resnet import ResnetBlock2D

from dreambooth.generation.params import GenerationParams
from dreambooth.generation.pipeline import load_generation_pipeline
from dreambooth.generation.sampling import Controls, generate


@pytest.fixture(scope="module")
def sd1(tiny_sd1):
    return load_generation_pipeline(str(tiny_sd1))


class Counted:
    """``stop()`` answers ``answer`` once ``after`` resnet blocks have run (once only, for a skip)."""
    def __init__(self, pipe, answer: str, after: int):
        self.answer, self.after, self.blocks, self.given = answer, after, 0, False
        for m in pipe.pipe.unet.modules():
            if isinstance(m, ResnetBlock2D):
                m.register_forward_hook(lambda *a: setattr(self, "blocks", self.blocks + 1))

    def __call__(self):
        if self.blocks >= self.after and not (self.answer == "skip" and self.given):
            self.given = True
            return self.answer
        return None


def resnets(pipe) -> int:
    """Resnet blocks a step runs (the UNet once: the prompt and the negative one go as one batch)."""
    return sum(isinstance(m, ResnetBlock2D) for m in pipe.pipe.unet.modules())


def _params(**kw):
    return GenerationParams(**{"prompt": "a dog", "steps": 3, "width": 32, "height": 32, "seed": 4, **kw})


def test_an_interrupt_within_the_first_step_ends_it_there(sd1):
    per_step = resnets(sd1)
    stop = Counted(sd1, "interrupt", after=2)
    try:
        made = generate(sd1, _params(), controls=Controls(stop=stop))
    finally:
        for m in sd1.pipe.unet.modules():
            m._forward_hooks.clear()
    assert made == []                                  # no step had finished: no image
    assert stop.blocks < per_step                      # it stopped inside the first step


def test_a_skip_within_a_step_keeps_the_last_finished_step_and_the_next_image_is_whole(sd1):
    plain = generate(sd1, _params(batch_count=2))
    stop = Counted(sd1, "skip", after=resnets(sd1) + 2)        # in the second step of the first image
    try:
        made = generate(sd1, _params(batch_count=2), controls=Controls(stop=stop))
    finally:
        for m in sd1.pipe.unet.modules():
            m._forward_hooks.clear()
    assert stop.blocks < 2 * resnets(sd1) + 3 * resnets(sd1)       # its second step was not run to its end
    assert [m.seed for m in made] == [4, 5]
    assert not np.array_equal(np.asarray(made[0].image), np.asarray(plain[0].image))   # cut short
    assert np.array_equal(np.asarray(made[1].image), np.asarray(plain[1].image))       # the next, whole


def test_an_interrupt_within_the_hires_passs_first_step_keeps_the_first_pass(sd1):
    first = generate(sd1, _params())                               # the first pass alone: 3 steps at 32 px
    stop = Counted(sd1, "interrupt", after=3 * resnets(sd1) + 2)  # inside the second pass's first step
    try:
        made = generate(sd1, _params(hires=True, hires_scale=2, hires_upscaler="Latent"), controls=Controls(stop=stop))
    finally:
        for m in sd1.pipe.unet.modules():
            m._forward_hooks.clear()
    assert len(made) == 1 and made[0].image.size == (32, 32)     # (its latents kept, decoded outside autocast)
    assert np.abs(np.asarray(made[0].image, dtype=int) - np.asarray(first[0].image, dtype=int)).max() <= 2


def test_a_skip_within_a_cells_first_step_skips_that_cell_only(sd1):
    from dreambooth.generation.xyz import run_prompt_matrix
    stop = Counted(sd1, "skip", after=2)                          # the first cell, in its first step
    try:
        result = run_prompt_matrix(sd1, _params(prompt="a dog|red|blue"), controls=Controls(stop=stop))
    finally:
        for m in sd1.pipe.unet.modules():
            m._forward_hooks.clear()
    assert [r.prompt for r in result.images] == ["a dog, red", "a dog, blue", "a dog, red, blue"]
    assert result.grid is not None                                # the plot went on, the skipped cell blank
