"""``--backdrop-loss-weight``: an instance picture's plain backdrop weighs that much in the loss,
class pictures and pictures without a backdrop weigh fully, and the trainer's loss uses the weights."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dreambooth.data import Example, ExampleStream
from dreambooth.toy.world import PALETTE, Subject, render
from dreambooth.train import per_example_mse


def _picture(background: str = "red", seed: int = 0) -> tuple[Image.Image, np.ndarray]:
    pixels = render(Subject("triangle", "orange", "dots", "blue").scene(background, np.random.default_rng(seed)))
    return Image.fromarray(pixels), (pixels == PALETTE[background]).all(-1)


def _example(image: Image.Image, prompt: str) -> Example:
    return Example(image, prompt, image.size[::-1], Path("x.png"))


def test_weights_are_the_weight_on_the_backdrop_and_one_elsewhere():
    image, backdrop = _picture()
    weights = ExampleStream([_example(image, "a sks triangle")], [], 1, 32, True, False, 0,
                            backdrop_loss_weight=0.1).next_batch().loss_weights[0]
    assert weights.shape == (1, 32, 32)
    assert torch.allclose(weights[0][torch.from_numpy(backdrop)], torch.tensor(0.1))
    assert bool((weights[0][torch.from_numpy(~backdrop)] == 1).all())
    busy = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    busy_weights = ExampleStream([_example(busy, "a sks triangle")], [], 1, 32, True, False, 0,
                                 backdrop_loss_weight=0.1).next_batch().loss_weights
    assert bool((busy_weights == 1).all())


def test_the_backdrop_is_cropped_and_flipped_with_the_picture():
    image, backdrop = _picture()
    big = Image.fromarray(np.pad(np.asarray(image), ((0, 0), (0, 16), (0, 0)), mode="edge"))   # 32x48, more backdrop
    truth = np.pad(backdrop, ((0, 0), (0, 16)), mode="edge")
    stream = ExampleStream([_example(big, "a sks triangle")], [], 1, 32, False, True, 0, backdrop_loss_weight=0.0)
    seen = set()
    for _ in range(20):
        batch = stream.next_batch()
        pixels = batch.pixels[0].permute(1, 2, 0).numpy()
        top, left = batch.crop_top_left[0]
        cut = truth[top:top + 32, left:left + 32]
        flipped = not np.allclose(pixels, np.asarray(big, np.float32)[top:top + 32, left:left + 32] / 127.5 - 1)
        expected = cut[:, ::-1] if flipped else cut
        assert np.array_equal(batch.loss_weights[0, 0].numpy() == 0, expected)
        seen.add((left, flipped))
    assert {f for _, f in seen} == {False, True} and len({c for c, _ in seen}) > 5   # flips and crops were tried


def test_the_stream_weights_instance_backdrops_only_and_nothing_when_off():
    instance = [_example(_picture(bg, i)[0], "a sks triangle") for i, bg in enumerate(["red", "green"])]
    prior = [_example(_picture("blue", 5)[0], "a triangle")]
    off = ExampleStream(instance, prior, 2, 32, True, False, 0).next_batch()
    assert off.loss_weights is None
    batch = ExampleStream(instance, prior, 2, 32, True, False, 0, backdrop_loss_weight=0.0).next_batch()
    assert batch.loss_weights.shape == (4, 1, 32, 32)
    for weights, is_prior in zip(batch.loss_weights, batch.is_prior):
        share_zero = float((weights == 0).float().mean())
        assert (share_zero == 0) if is_prior else (0.3 < share_zero < 0.95)
    assert torch.equal(off.pixels, batch.pixels)     # the same pictures, in the same order


def test_recoloured_backdrops_are_weighted_too():
    instance = [_example(_picture(bg, i)[0], "a sks triangle") for i, bg in enumerate(["red", "green"])]
    stream = ExampleStream(instance, [], 2, 32, True, False, 0, backdrop_augment=1.0, backdrop_loss_weight=0.0)
    for _ in range(5):
        batch = stream.next_batch()
        assert batch.indices == [None, None]                                   # both recoloured
        assert all(0.3 < float((w == 0).float().mean()) < 0.95 for w in batch.loss_weights)


def test_weighted_error_ignores_what_weighs_nothing_and_keeps_its_scale():
    target = torch.zeros(2, 4, 8, 8)
    pred = target.clone()
    pred[:, :, :4] = 1.0                                  # wrong on the top half only
    weights = torch.ones(2, 1, 16, 16)                    # pixel weights, pooled to the 8x8 latents
    weights[:, :, :8] = 0.0
    assert torch.equal(per_example_mse(pred, target, weights), torch.zeros(2))
    assert torch.allclose(per_example_mse(pred, target, torch.full((2, 1, 16, 16), 0.3)), per_example_mse(pred, target))
    assert torch.allclose(per_example_mse(pred, target), torch.full((2,), 0.5))


def test_the_trainers_loss_uses_the_weights(tiny_sd1, backdrop_instances, tmp_path):
    from dreambooth.config import TrainConfig
    from dreambooth.train import Trainer
    cfg = TrainConfig(model=str(tiny_sd1), instance_dir=str(backdrop_instances), instance_prompt="a sks triangle",
                      output=str(tmp_path / "out"), resolution=64, center_crop=True, max_steps=2, batch_size=2,
                      backdrop_loss_weight=0.0, method="full", learning_rate=1e-4)
    trainer = Trainer(cfg, []).setup()
    batch = trainer.stream.next_batch()
    assert batch.loss_weights is not None and float(batch.loss_weights.min()) == 0.0
    state = trainer.noise_gen.get_state()

    def loss_with(weights):
        trainer.noise_gen.set_state(state)
        with torch.no_grad():
            return float(trainer.loss(batch.__class__(**{**batch.__dict__, "loss_weights": weights})))
    unweighted = loss_with(None)
    assert loss_with(torch.ones_like(batch.loss_weights)) == pytest.approx(unweighted, rel=1e-5)
    assert loss_with(batch.loss_weights) != pytest.approx(unweighted, rel=1e-3)


def test_backdrop_loss_weight_is_checked():
    from dreambooth.config import TrainConfig
    from dreambooth.errors import UserError
    with pytest.raises(UserError, match="--backdrop-loss-weight"):
        TrainConfig(instance_dir="x", instance_prompt="a sks dog", output="o", backdrop_loss_weight=1.5).validate()
