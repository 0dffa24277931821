"""``--masked-loss``: an instance photo's mask (its alpha channel, or NAME.mask.png beside it) weighs
each pixel's loss; the mask is cut and flipped with the photo, class pictures and photos without a
mask weigh fully, and the trainer's loss uses the weights. The toy transform's down-weighted
backdrops ride on the same masks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dreambooth.training.data import Example, ExampleStream
from dreambooth.toy.world import PALETTE, Subject, render
from dreambooth.training.loss import per_example_mse


def _picture(background: str = "red", seed: int = 0) -> tuple[Image.Image, np.ndarray]:
    pixels = render(Subject("triangle", "orange", "dots", "blue").scene(background, np.random.default_rng(seed)))
    return Image.fromarray(pixels), (pixels == PALETTE[background]).all(-1)


def _example(image: Image.Image, prompt: str, mask: np.ndarray | None = None) -> Example:
    return Example(image, prompt, image.size[::-1], Path("x.png"), mask)


def _backdrop_mask(backdrop: np.ndarray, weight: float) -> np.ndarray:
    return np.where(backdrop, np.float32(weight), np.float32(1))


def test_masks_come_from_alpha_or_a_mask_file_and_mask_files_are_no_photos(tmp_path):
    from dreambooth.training.data import load_examples
    rgba = np.zeros((40, 48, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[10:30, 12:36, 3] = 255                          # an opaque subject on a transparent ground
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cutout.png")
    Image.fromarray(np.full((40, 48, 3), 90, np.uint8)).save(tmp_path / "photo.jpg")
    side = np.zeros((40, 48), np.uint8)
    side[:, :24] = 255
    side[:, 24:] = 64
    Image.fromarray(side, "L").save(tmp_path / "photo.mask.png")
    Image.fromarray(np.full((40, 48, 3), 30, np.uint8)).save(tmp_path / "plain.png")
    warnings = []
    examples = {e.path.name: e for e in load_examples(tmp_path, "a sks dog", 40, masks=True, warn=warnings.append)}
    assert set(examples) == {"cutout.png", "photo.jpg", "plain.png"}          # the mask file is not a photo
    cut = examples["cutout.png"].mask
    assert cut.shape == (40, 48) and cut[20, 20] == 1.0 and cut[0, 0] == 0.0
    photo = examples["photo.jpg"].mask
    assert photo[5, 5] == 1.0 and abs(photo[5, 40] - 64 / 255) < 1e-6
    assert examples["plain.png"].mask is None and not warnings
    # without --masked-loss: no masks, and the mask file is named as ignored
    plain = load_examples(tmp_path, "a sks dog", 40, warn=warnings.append)
    assert all(e.mask is None for e in plain) and len(plain) == 3
    assert any("photo.mask.png" in w and "--masked-loss" in w for w in warnings)


def test_black_and_misshapen_masks_are_said(tmp_path):
    """A mask black all over trains nothing of its photo: said, and refused when every mask is; a mask
    file of another size than its photo is stretched to it, and said."""
    from dreambooth.errors import UserError
    from dreambooth.training.data import load_examples
    for name in ("a", "b"):
        Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / f"{name}.png")
        Image.new("L", (64, 64), 0).save(tmp_path / f"{name}.mask.png")
    with pytest.raises(UserError, match="--masked-loss: every mask in .* is black all over"):
        load_examples(tmp_path, "p", 64, masks=True)
    Image.new("L", (10, 30), 255).save(tmp_path / "b.mask.png")
    warnings = []
    examples = load_examples(tmp_path, "p", 64, masks=True, warn=warnings.append)
    assert examples[1].mask.shape == (64, 64) and examples[1].mask.min() == 1.0
    assert any("b.mask.png is 10x30, its photo 64x64; the mask is stretched" in w for w in warnings)
    assert any("a.png's mask is black all over: nothing of it is trained" in w for w in warnings)


def test_masked_loss_is_a_train_flag(tmp_path):
    from conftest import run_cli
    code, out, _ = run_cli("train", "--help")
    assert code == 0 and "--masked-loss" in out and "--backdrop" not in out


def test_the_toy_transform_weighs_a_plain_backdrop_as_asked_and_a_busy_picture_fully():
    from dreambooth.toy.backdrops import ToyBackdrops
    image, backdrop = _picture()
    busy = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    examples = [_example(image, "a sks triangle"), _example(busy, "a sks triangle")]
    ToyBackdrops(0.0, backdrop_weight=0.1).prepare(examples, lambda _: None)
    weights = ExampleStream(examples[:1], [], 1, 32, True, False, 0).next_batch().loss_weights[0]
    assert weights.shape == (1, 32, 32)
    assert torch.allclose(weights[0][torch.from_numpy(backdrop)], torch.tensor(0.1))
    assert bool((weights[0][torch.from_numpy(~backdrop)] == 1).all())
    assert examples[1].mask is None


def test_the_backdrop_is_cropped_and_flipped_with_the_picture():
    image, backdrop = _picture()
    big = Image.fromarray(np.pad(np.asarray(image), ((0, 0), (0, 16), (0, 0)), mode="edge"))   # 32x48, more backdrop
    truth = np.pad(backdrop, ((0, 0), (0, 16)), mode="edge")
    stream = ExampleStream([_example(big, "a sks triangle", _backdrop_mask(truth, 0.0))], [], 1, 32, False, True, 0)
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


def test_the_stream_weights_masked_instances_only_and_nothing_without_masks():
    pictures = [_picture(bg, i) for i, bg in enumerate(["red", "green"])]
    plain = [_example(image, "a sks triangle") for image, _ in pictures]
    masked = [_example(image, "a sks triangle", _backdrop_mask(b, 0.0)) for image, b in pictures]
    prior = [_example(_picture("blue", 5)[0], "a triangle")]
    off = ExampleStream(plain, prior, 2, 32, True, False, 0).next_batch()
    assert off.loss_weights is None
    batch = ExampleStream(masked, prior, 2, 32, True, False, 0).next_batch()
    assert batch.loss_weights.shape == (4, 1, 32, 32)
    for weights, is_prior in zip(batch.loss_weights, batch.is_prior):
        share_zero = float((weights == 0).float().mean())
        assert (share_zero == 0) if is_prior else (0.3 < share_zero < 0.95)
    assert torch.equal(off.pixels, batch.pixels)     # the same pictures, in the same order


def test_recoloured_backdrops_are_weighted_too():
    from dreambooth.toy.backdrops import ToyBackdrops
    instance = [_example(_picture(bg, i)[0], "a sks triangle") for i, bg in enumerate(["red", "green"])]
    transform = ToyBackdrops(1.0, named=False, backdrop_weight=0.0)
    transform.prepare(instance, lambda _: None)
    stream = ExampleStream(instance, [], 2, 32, True, False, 0, transforms=[transform])
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
    from dreambooth.training.config import TrainConfig
    from dreambooth.training.masks import backdrop_weights
    from dreambooth.training.trainer import Trainer
    for photo in sorted(backdrop_instances.glob("*.png")):          # masks as a user would draw them
        weights = backdrop_weights(Image.open(photo).convert("RGB"), 0.0)
        Image.fromarray((weights * 255).astype(np.uint8), "L").save(photo.with_name(photo.stem + ".mask.png"))
    cfg = TrainConfig(model=str(tiny_sd1), instance_dir=str(backdrop_instances), instance_prompt="a sks triangle",
                      output=str(tmp_path / "out"), resolution=64, center_crop=True, max_steps=2, batch_size=2,
                      masked_loss=True, method="full", learning_rate=1e-4)
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


def test_a_mask_file_is_found_in_any_case(tmp_path):
    """NAME.MASK.PNG is kept out of the photos as a mask (images.is_mask_file takes any case), so it
    must also be the photo's mask, not left unread with the photo at full weight."""
    from dreambooth.training.data import load_examples
    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "dog.jpg")
    Image.new("L", (32, 32), 64).save(tmp_path / "dog.MASK.PNG")
    warnings = []
    (example,) = load_examples(tmp_path, "p", 32, masks=True, warn=warnings.append)
    assert example.mask is not None and abs(example.mask.max() - 64 / 255) < 1e-6 and not warnings


def test_a_mask_files_transparency_weighs_zero(tmp_path):
    """A white mask on a transparent ground (as an editor exports a selection): transparent is 0, and
    nothing more is said; an opaque mask is its grey level as before."""
    from dreambooth.training.data import load_examples
    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "dog.png")
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[8:24, 8:24, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "dog.mask.png")
    warnings = []
    (example,) = load_examples(tmp_path, "p", 32, masks=True, warn=warnings.append)
    assert example.mask[16, 16] == 1.0 and example.mask[0, 0] == 0.0 and example.mask.mean() == 0.25
    assert not warnings
    rgba[..., 3], rgba[..., :3] = 255, 128                       # opaque all over: its grey level
    Image.fromarray(rgba, "RGBA").save(tmp_path / "dog.mask.png")
    (example,) = load_examples(tmp_path, "p", 32, masks=True)
    assert np.allclose(example.mask, 128 / 255)
