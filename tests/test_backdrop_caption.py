"""``--backdrop-caption``: a recoloured backdrop is a named basic colour, the prompt names that colour,
and a subject whose colours rule out every name keeps its prompt."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dreambooth.backdrop import NAMED_COLOURS, Backdrop
from dreambooth.data import Example, ExampleStream
from dreambooth.toy.world import PALETTE, Subject, render


def _picture(background: str, seed: int) -> tuple[Example, np.ndarray]:
    pixels = render(Subject("triangle", "orange", "dots", "blue").scene(background, np.random.default_rng(seed)))
    image = Image.fromarray(pixels)
    return Example(image, "a sks triangle", image.size[::-1], Path("x.png")), (pixels == PALETTE[background]).all(-1)


def test_recaptioned_pictures_show_the_colour_their_prompt_names():
    pictures = [_picture(bg, i) for i, bg in enumerate(["red", "green", "red"])]
    stream = ExampleStream([e for e, _ in pictures], [], 2, 32, True, False, 5, backdrop_augment=1.0,
                           backdrop_caption=True)
    names = set()
    for _ in range(60):
        batch = stream.next_batch()
        for pixels, prompt, index in zip(batch.pixels, batch.prompts, batch.indices):
            assert index is None and prompt.startswith("a sks triangle on a ") and prompt.endswith(" background")
            name = prompt.split()[-2]
            names.add(name)
            rgb = ((pixels.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(int)
            # every picture here has its own backdrop mask; the one whose subject pixels match is this one
            masks = [m for e, m in pictures if (rgb[~m] == np.asarray(e.image)[~m]).all()]
            assert masks and (rgb[masks[0]] == NAMED_COLOURS[name]).all()
    # the subject's own orange and blue are never its backdrop; the other six basic colours all appear
    assert names == set(NAMED_COLOURS) - {"orange", "blue"}


def test_without_the_flag_or_without_a_free_name_the_prompt_is_unchanged():
    example, mask = _picture("red", 0)
    plain = ExampleStream([example], [], 2, 32, True, False, 5, backdrop_augment=1.0)
    assert plain.next_batch().prompts == ["a sks triangle"] * 2
    crowded = Backdrop(mask, np.array(list(NAMED_COLOURS.values())))     # every name too close to the subject
    image, prompt = crowded.recaptioned(example.image, example.prompt, torch.Generator().manual_seed(0))
    assert prompt == "a sks triangle" and not np.array_equal(np.asarray(image)[mask], np.asarray(example.image)[mask])


def test_a_named_backdrop_weighs_fully_and_an_unnamed_one_as_asked():
    pictures = [_picture(bg, i) for i, bg in enumerate(["red", "green"])]
    stream = ExampleStream([e for e, _ in pictures], [], 2, 32, True, False, 1, backdrop_augment=0.5,
                           backdrop_loss_weight=0.1, backdrop_caption=True)
    seen = set()
    for _ in range(40):
        batch = stream.next_batch()
        for weights, prompt, index in zip(batch.loss_weights, batch.prompts, batch.indices):
            named = prompt != "a sks triangle"
            seen.add(named)
            assert named == (index is None)
            if named:
                assert bool((weights == 1).all())
            else:       # the picture as it was: its own backdrop down-weighted
                assert torch.allclose(weights[0][torch.from_numpy(pictures[index][1])], torch.tensor(0.1))
                assert bool((weights[0][torch.from_numpy(~pictures[index][1])] == 1).all())
    assert seen == {True, False}


def test_backdrop_caption_without_backdrop_augment_changes_nothing():
    # not an error (the toy preset turns it on, and --backdrop-augment 0 must still work); train warns
    from dreambooth.config import TrainConfig
    TrainConfig(instance_dir="x", instance_prompt="a sks dog", output="o", backdrop_caption=True).validate()
    example, _ = _picture("red", 0)
    stream = ExampleStream([example], [], 2, 32, True, False, 5, backdrop_caption=True)
    for _ in range(5):
        batch = stream.next_batch()
        assert batch.prompts == ["a sks triangle"] * 2 and batch.indices[0] is not None
