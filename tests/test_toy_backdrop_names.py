"""The toy transform's named backdrops: a recoloured backdrop is a named basic colour, the prompt
names that colour, a named backdrop weighs fully and one left as it was as asked, and a subject whose
colours rule out every name keeps its prompt."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dreambooth.toy.backdrops import NAMED_COLOURS, Backdrop, ToyBackdrops
from dreambooth.training.data import Example, ExampleStream
from dreambooth.toy.world import PALETTE, Subject, render


def _picture(background: str, seed: int) -> tuple[Example, np.ndarray]:
    pixels = render(Subject("triangle", "orange", "dots", "blue").scene(background, np.random.default_rng(seed)))
    image = Image.fromarray(pixels)
    return Example(image, "a sks triangle", image.size[::-1], Path("x.png")), (pixels == PALETTE[background]).all(-1)


def _stream(examples, seed, **transform):
    t = ToyBackdrops(**transform)
    t.prepare(examples, lambda _: None)
    return ExampleStream(examples, [], 2, 32, True, False, seed, transforms=[t])


def test_recaptioned_pictures_show_the_colour_their_prompt_names():
    pictures = [_picture(bg, i) for i, bg in enumerate(["red", "green", "red"])]
    stream = _stream([e for e, _ in pictures], 5, share=1.0, named=True, backdrop_weight=1.0)
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


def test_unnamed_or_without_a_free_name_the_prompt_is_unchanged():
    example, mask = _picture("red", 0)
    plain = _stream([example], 5, share=1.0, named=False)
    assert plain.next_batch().prompts == ["a sks triangle"] * 2
    crowded = Backdrop(mask, np.array(list(NAMED_COLOURS.values())))     # every name too close to the subject
    image, prompt = crowded.recaptioned(example.image, example.prompt, torch.Generator().manual_seed(0))
    assert prompt == "a sks triangle" and not np.array_equal(np.asarray(image)[mask], np.asarray(example.image)[mask])


def test_a_named_backdrop_weighs_fully_and_an_unnamed_one_as_asked():
    pictures = [_picture(bg, i) for i, bg in enumerate(["red", "green"])]
    stream = _stream([e for e, _ in pictures], 1, share=0.5, named=True, backdrop_weight=0.1)
    seen = set()
    for _ in range(40):
        batch = stream.next_batch()
        # no weights at all when no picture of the batch carries a mask (all named): all weigh 1
        all_weights = batch.loss_weights if batch.loss_weights is not None else torch.ones(2, 1, 32, 32)
        for weights, prompt, index in zip(all_weights, batch.prompts, batch.indices):
            named = prompt != "a sks triangle"
            seen.add(named)
            assert named == (index is None)
            if named:
                assert bool((weights == 1).all())
            else:       # the picture as it was: its own backdrop down-weighted
                assert torch.allclose(weights[0][torch.from_numpy(pictures[index][1])], torch.tensor(0.1))
                assert bool((weights[0][torch.from_numpy(~pictures[index][1])] == 1).all())
    assert seen == {True, False}


def test_share_zero_changes_nothing():
    example, _ = _picture("red", 0)
    stream = _stream([example], 5, share=0.0, named=True, backdrop_weight=1.0)
    plain = ExampleStream([example], [], 2, 32, True, False, 5)
    for _ in range(5):
        batch, same = stream.next_batch(), plain.next_batch()
        assert batch.prompts == ["a sks triangle"] * 2 and batch.indices[0] is not None
        assert torch.equal(batch.pixels, same.pixels)
