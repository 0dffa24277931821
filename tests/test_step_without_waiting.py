"""The step that never waits for the GPU (issue 30): losses read one step late with non-finite steps
skipped by the optimizer itself, and frozen parts parked on the CPU once everything is cached.

Both exist for CUDA; here on the CPU they must change nothing a user can see: the same losses and the
same weights as the loop that reads every loss at once, and a run that parks its parts trains and
validates as one that does not."""
import pytest
import torch
from safetensors.torch import load_file

from dreambooth import parking as parking_module
from dreambooth.training.callbacks import TrainingCallback
from dreambooth.training.config import build_config
from dreambooth.parking import Parking
from dreambooth.training.trainer import Trainer


def _config(tiny_sd1, dog_photos, out, **over):
    values = dict(model=str(tiny_sd1), instance_dir=str(dog_photos), instance_prompt="a photo of sks dog",
                  class_prompt="a photo of dog", num_class_images=2, class_steps=1, class_batch_size=2,
                  method="lora", rank=4, resolution=32, max_steps=7, learning_rate=1e-3, center_crop=True,
                  checkpoint_every=3, keep_checkpoints=0, output=str(out))
    return build_config(None, dict(values, **over))


class Clock(TrainingCallback):
    """Which step each on_step_end saw, and whether the weights had that many updates then."""

    def __init__(self):
        self.steps = []

    def on_step_end(self, run, step):
        inner = getattr(run.optimizer, "optimizer", run.optimizer)
        updates = {int(s["step"]) for s in inner.state.values()}   # AdamW counts its applied steps
        self.steps.append((step.step, updates))


def _run(config, read_at_once: bool):
    clock = Clock()
    trainer = Trainer(config, [clock]).setup()
    if read_at_once:     # the loop reads losses late only with fused AdamW: this takes the other branch
        getattr(trainer.optimizer, "optimizer", trainer.optimizer).defaults["fused"] = False
    result = trainer.fit()
    weights = load_file(str(result.output / "pytorch_lora_weights.safetensors"))
    return result, weights, clock.steps


def test_late_loss_reading_changes_nothing(tiny_sd1, dog_photos, tmp_path):
    late, late_w, late_steps = _run(_config(tiny_sd1, dog_photos, tmp_path / "late"), read_at_once=False)
    now, now_w, now_steps = _run(_config(tiny_sd1, dog_photos, tmp_path / "now"), read_at_once=True)
    assert late.losses == now.losses and len(late.losses) == 7
    assert late_w.keys() == now_w.keys() and all(torch.equal(late_w[k], now_w[k]) for k in late_w)
    # every callback once, in order, seeing the weights after exactly that many updates
    assert [s for s, _ in late_steps] == list(range(1, 8))
    assert all(updates == {s} for s, updates in late_steps), late_steps
    assert late_steps == now_steps
    # the checkpoints of steps 3, 6 and the last (read at once: their step is seen before the next is drawn)
    assert sorted(p.name for p in (tmp_path / "late" / "checkpoints").iterdir()) == ["checkpoint-000003", "checkpoint-000006", "checkpoint-000007"]


def test_parking_keeps_track_and_brings_back():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    parking = Parking("cpu", enabled=True)
    parking.park(a)
    parking.park(a)
    assert parking.parked == [a]
    with parking.all_back():
        assert parking.parked == []
    assert parking.parked == [a]
    assert parking.ready(a) is a and parking.parked == [] and not parking.is_parked(b)
    assert Parking("cpu").enabled is False and Parking("cuda").enabled is True


@pytest.fixture
def parking_on_cpu(monkeypatch):
    """Parking as on a GPU (here the CPU is both places: nothing moves, the bookkeeping is what is tested)."""
    real = parking_module.Parking.__init__
    monkeypatch.setattr(parking_module.Parking, "__init__", lambda self, device, enabled=None: real(self, device, True))


def test_what_is_parked_and_when(tiny_sd1, dog_photos, tmp_path, parking_on_cpu):
    lora = Trainer(_config(tiny_sd1, dog_photos, tmp_path / "a", checkpoint_every=0)).setup()
    parked = lora.parking.parked
    assert any(m is lora.pipe.vae for m in parked) and any(m is lora.pipe.text_encoder for m in parked)
    # a text encoder that trains stays; random crops of non-square photos need the VAE every step
    te = Trainer(_config(tiny_sd1, dog_photos, tmp_path / "b", checkpoint_every=0, train_text_encoder=True,
                         center_crop=False)).setup()
    assert te.parking.parked == []
    # a prompt that missed the cache brings the encoder back, for good
    lora.conditioning(["a new prompt nobody cached"])
    assert not lora.parking.is_parked(lora.pipe.text_encoder)


def test_the_unet_waits_while_the_frozen_parts_cache(tiny_sd1, dog_photos, tmp_path, parking_on_cpu, monkeypatch):
    """SDXL LoRA's whole-run peak was set while its latents were cached (the VAE at 1024 px on top of the
    UNet's 5 GB): the UNet is parked while the text encoders and the VAE cache, and back for the steps."""
    from dreambooth.training import latents, trainer as trainer_module
    seen = {}
    real_fill, real_conditioning = latents.LatentCache.fill, trainer_module.Trainer.conditioning

    def fill(cache, pictures):
        seen["latents"] = [type(m).__name__ for m in trainer.parking.parked]
        return real_fill(cache, pictures)

    def conditioning(self, prompts):
        seen.setdefault("prompts", [type(m).__name__ for m in self.parking.parked])
        return real_conditioning(self, prompts)

    monkeypatch.setattr(latents.LatentCache, "fill", fill)
    monkeypatch.setattr(trainer_module.Trainer, "conditioning", conditioning)
    trainer = Trainer(_config(tiny_sd1, dog_photos, tmp_path / "u", checkpoint_every=0))
    trainer.setup()
    assert seen["prompts"] == ["UNet2DConditionModel"]
    assert seen["latents"] == ["UNet2DConditionModel", "CLIPTextModel"]
    assert not trainer.parking.is_parked(trainer.trainables["unet"])      # back before the first step
    assert any(m is trainer.pipe.vae for m in trainer.parking.parked)


def test_validation_sees_every_part_back(tiny_sd1, dog_photos, tmp_path, parking_on_cpu):
    config = _config(tiny_sd1, dog_photos, tmp_path / "v", checkpoint_every=0, max_steps=4, validate_every=2,
                     validation_seeds=[0], validation_steps=1, dino_model=None, clip_model=None)
    trainer = Trainer(config).setup()
    seen = []
    real = trainer.validator.validate

    def validate(step):
        seen.append(list(trainer.parking.parked))
        return real(step)

    trainer.validator.validate = validate
    result = trainer.fit()
    assert result.steps == 4 and seen and all(parked == [] for parked in seen)
    assert (tmp_path / "v" / "validation" / "step-000002.png").exists()
    assert trainer.parking.parked == []          # and all back once the run is over


def test_pictures_whose_latents_are_kept_are_not_made(dog_photos):
    """A step's host work is the GPU's idle time: a kept picture is not cut and converted again,
    and the stream draws exactly as it did (same crops, flips, keys, prompts)."""
    from dreambooth.training.data import ExampleStream, load_examples
    examples = load_examples(str(dog_photos), "a sks dog", 64)

    def stream(needs):
        s = ExampleStream(examples, [], 2, 64, False, True, seed=3)
        s.needs_pixels = needs
        return [s.next_batch() for _ in range(6)]

    every, none = stream(lambda key: True), stream(lambda key: False)
    some = stream(lambda key: key[0] % 2 == 0)          # even examples' pictures only
    for a, b, c in zip(every, none, some):
        assert a.cache_keys == b.cache_keys == c.cache_keys and a.prompts == b.prompts == c.prompts
        assert b.pixels is None
        for row, key in enumerate(a.cache_keys):
            want = a.pixels[row] if key[0] % 2 == 0 else torch.zeros_like(a.pixels[row])
            assert torch.equal(c.pixels[row], want)


def test_a_part_reaches_the_device_in_its_own_precision():
    """Every weight is cast on its way: the device never holds the part at the checkpoint's precision
    (an SDXL LoRA's frozen UNet, moved in fp32 and cast there, put 9.6 GiB on the GPU, more than its
    steps hold). The meta device stands in for the GPU: what is made there, and in which dtype."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from dreambooth.training.trainables import move

    class Made(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.dtypes = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and out.is_meta:
                self.dtypes.append(out.dtype)
            return out

    module = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Conv2d(4, 4, 1))
    module.dtype = torch.float32          # as diffusers' and transformers' models tell theirs
    with Made() as made:
        move(module, "meta", torch.bfloat16)
    assert made.dtypes == [torch.bfloat16] * 4 and all(p.is_meta and p.dtype == torch.bfloat16 for p in module.parameters())
