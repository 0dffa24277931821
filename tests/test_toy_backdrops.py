"""The toy preset's data transform (``dreambooth.toy.backdrops``): a plain backdrop is found exactly,
recoloured away from the subject's colours, only for the share asked, never cached, and the stream
stays reproducible."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dreambooth.toy.backdrops import MIN_DISTANCE, Backdrop, ToyBackdrops
from dreambooth.training.data import Example, ExampleStream
from dreambooth.training.masks import find_backdrop
from dreambooth.toy.world import PALETTE, Subject, render


def _subject_picture(background: str = "red", seed: int = 0) -> tuple[Image.Image, np.ndarray]:
    scene = Subject("triangle", "orange", "dots", "blue").scene(background, np.random.default_rng(seed))
    pixels = render(scene)
    return Image.fromarray(pixels), (pixels == PALETTE[background]).all(-1)


def _example(image: Image.Image) -> Example:
    return Example(image, "a sks triangle", image.size[::-1], Path("x.png"))


def test_a_plain_backdrop_is_found_exactly_and_a_busy_picture_has_none():
    image, truth = _subject_picture()
    assert np.array_equal(find_backdrop(image), truth)
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    assert find_backdrop(noisy) is None
    # a close-up reaching into a corner (a third of the border) still has one
    corner = np.full((32, 32, 3), PALETTE["red"], np.uint8)
    corner[12:, 12:] = PALETTE["blue"]
    truth = np.ones((32, 32), bool)
    truth[12:, 12:] = False
    assert np.array_equal(find_backdrop(Image.fromarray(corner)), truth)
    # a subject touching the border on most of it is not a backdrop picture either
    half = np.zeros((32, 32, 3), np.uint8)
    half[:, 16:] = 255
    assert find_backdrop(Image.fromarray(half)) is None


def test_recoloured_backdrops_keep_the_subject_and_stay_away_from_its_colours():
    image, truth = _subject_picture()
    backdrop = Backdrop.of(image)
    assert {tuple(c) for c in backdrop.avoid} == {PALETTE['orange'], PALETTE['blue']}
    gen = torch.Generator().manual_seed(0)
    original = np.asarray(image)
    colours = set()
    for _ in range(50):
        new = np.asarray(backdrop.recoloured(image, gen))
        assert np.array_equal(new[~truth], original[~truth])          # the subject is untouched
        colour = new[truth][0]
        assert (new[truth] == colour).all()
        for c in (PALETTE["orange"], PALETTE["blue"]):
            assert np.abs(colour.astype(int) - c).sum() >= MIN_DISTANCE
        colours.add(tuple(colour))
    assert len(colours) == 50


def _stream(examples, share, seed=3):
    transform = ToyBackdrops(share, named=False, backdrop_weight=1.0)
    transform.prepare(examples, lambda _: None)
    return ExampleStream(examples, [], 2, 32, True, False, seed, transforms=[transform])


def test_the_stream_recolours_the_share_asked_and_marks_those_pictures_uncacheable():
    pictures = [_subject_picture(bg, i) for i, bg in enumerate(["red", "green", "red", "green"])]
    examples = [_example(im) for im, _ in pictures]
    off, on = _stream(examples, 0.0), _stream(examples, 0.75)
    plain = _stream(examples, 0.0)
    recoloured = total = 0
    for _ in range(200):
        a, b = off.next_batch(), plain.next_batch()
        assert torch.equal(a.pixels, b.pixels) and a.indices == b.indices   # off: the stream as it always was
        batch = on.next_batch()
        for pixels, index in zip(batch.pixels, batch.indices):
            total += 1
            if index is None:
                recoloured += 1
                continue
            # a picture kept as it was carries its index (and may be cached)
            expected = np.asarray(examples[index].image, dtype=np.float32) / 127.5 - 1
            assert np.allclose(pixels.permute(1, 2, 0).numpy(), expected)
    assert 0.68 <= recoloured / total <= 0.82


def test_recolouring_resumes_exactly():
    examples = [_example(_subject_picture(bg, i)[0]) for i, bg in enumerate(["red", "green", "blue"])]
    first = _stream(examples, 0.5)
    for _ in range(7):
        first.next_batch()
    second = _stream(examples, 0.5)
    second.load_state_dict(first.state_dict())
    for _ in range(10):
        a, b = first.next_batch(), second.next_batch()
        assert torch.equal(a.pixels, b.pixels) and a.indices == b.indices


def test_pictures_without_a_backdrop_are_never_changed():
    busy = Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    stream = _stream([_example(busy)], 1.0)
    for _ in range(10):
        batch = stream.next_batch()
        assert batch.indices == [0, 0]


def test_trainer_encodes_recoloured_pictures_without_caching_them(tiny_sd1, backdrop_instances, tmp_path):
    from dreambooth.training.config import TrainConfig
    from dreambooth.training.trainer import Trainer
    cfg = TrainConfig(model=str(tiny_sd1), instance_dir=str(backdrop_instances), instance_prompt="a sks triangle",
                      output=str(tmp_path / "out"), resolution=64, center_crop=True, max_steps=6, batch_size=2,
                      method="full", learning_rate=1e-4)
    transform = ToyBackdrops(0.5, named=False)
    trainer = Trainer(cfg, [], [transform]).setup()
    assert trainer.config.cache_latents and len(transform._backdrops) == 2
    seen = []
    real = trainer.stream.next_batch

    def spy():
        batch = real()
        seen.extend(batch.indices)
        return batch
    trainer.stream.next_batch = spy
    trainer.fit()
    assert None in seen and any(i is not None for i in seen)
    assert {key[0] for key in trainer.latent_cache.kept} == {i for i in seen if i is not None}   # (index, crop, flip)


def test_the_cli_passes_the_toy_transform_only_with_the_toy_preset(tmp_path):
    from dreambooth.toy.backdrops import uses_toy_preset
    from dreambooth.training.config import PRESET_DIR
    assert uses_toy_preset(None, "toy") and uses_toy_preset("toy", "other/model")
    copy = tmp_path / "configs" / "toy.yaml"                  # the repository's configs/toy.yaml is a copy
    copy.parent.mkdir()
    copy.write_bytes((PRESET_DIR / "toy.yaml").read_bytes())
    assert uses_toy_preset(str(copy), "m")
    own = tmp_path / "myproject" / "toy.yaml"                 # a user's own file of that name is not the toy preset
    own.parent.mkdir()
    own.write_text("max_steps: 300\n")
    assert not uses_toy_preset(str(own), "m")
    assert not uses_toy_preset(None, "stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert uses_toy_preset("sd15-lora", "toy")      # any settings on the toy model: the toy preset beneath them


def test_the_toy_preset_lies_beneath_any_settings_on_the_toy_model(tmp_path):
    """``model: toy`` in a user's file, or a toy run's training_args.json as --config, gets the toy
    preset's values where it says nothing, as --model toy does; its own values win."""
    from dreambooth.training.config import build_config
    toy = build_config("toy")
    own = tmp_path / "mine.yaml"
    own.write_text("model: toy\nmax_steps: 3\n")
    mine = build_config(str(own))
    assert mine.max_steps == 3 and (mine.method, mine.learning_rate, mine.identifier_lr) == \
        (toy.method, toy.learning_rate, toy.identifier_lr)
    own.write_text("model: toy\nmethod: lora\n")
    assert build_config(str(own)).identifier_lr == 0            # the toy's is for full fine-tuning: not a warning
    own.write_text("model: toy\nmethod: lora\nidentifier_lr: 0.01\n")
    assert build_config(str(own)).identifier_lr == 0.01          # asked: kept (and warned of by the trainer)
