"""``--caption-dropout``: that share of the training pictures, instance and class alike, is shown
with an empty prompt (the pictures themselves unchanged); at 0 the stream is exactly as without it."""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from dreambooth.training.data import Example, ExampleStream


def _examples(prompt: str, colours) -> list[Example]:
    out = []
    for c in colours:
        image = Image.new("RGB", (16, 16), c)
        out.append(Example(image, prompt, (16, 16), Path(f"{c}.png")))
    return out


def _stream(dropout: float) -> ExampleStream:
    return ExampleStream(_examples("a sks dog", [(200, 0, 0), (0, 200, 0)]), _examples("a dog", [(0, 0, 200)] * 3),
                         2, 16, True, False, 3, caption_dropout=dropout)


def test_that_share_of_instance_and_class_prompts_is_empty_and_the_pictures_stay():
    stream = _stream(0.3)
    empty = {False: 0, True: 0}
    total = {False: 0, True: 0}
    for _ in range(500):
        batch = stream.next_batch()
        for pixels, prompt, prior in zip(batch.pixels, batch.prompts, batch.is_prior.tolist()):
            total[prior] += 1
            empty[prior] += prompt == ""
            assert prompt in ("", "a dog" if prior else "a sks dog")
            colour = ((pixels[:, 0, 0] + 1) * 127.5).round().tolist()
            assert colour in ([[0, 0, 200]] if prior else [[200, 0, 0], [0, 200, 0]])
    for prior in (False, True):
        assert abs(empty[prior] / total[prior] - 0.3) < 0.05


def test_at_zero_the_stream_is_the_one_without_the_option():
    plain = ExampleStream(_examples("a sks dog", [(200, 0, 0), (0, 200, 0)]), _examples("a dog", [(0, 0, 200)] * 3),
                          2, 16, True, False, 3)
    off = _stream(0.0)
    for _ in range(20):
        a, b = plain.next_batch(), off.next_batch()
        assert a.prompts == b.prompts and a.indices == b.indices and torch.equal(a.pixels, b.pixels)
