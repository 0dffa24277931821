"""--fused-backward-pass (issue 30, SDXL full under 20 GB): each weight stepped as soon as its gradient
is complete, with the same result as one optimizer stepped after the backward pass."""
import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli
from dreambooth.errors import UserError
from dreambooth.training import fused_backward
from dreambooth.training import preflight as pf
from dreambooth.training.callbacks import TrainingCallback
from dreambooth.training.config import build_config
from dreambooth.training.trainer import train


def _config(tiny_sd1, dog_photos, out, **over):
    values = dict(model=str(tiny_sd1), instance_dir=str(dog_photos), instance_prompt="a photo of sks dog",
                  class_prompt="a photo of dog", num_class_images=2, class_steps=1, class_batch_size=2,
                  method="full", train_text_encoder=True, resolution=32, max_steps=5, learning_rate=1e-4,
                  max_grad_norm=0.0, output=str(out))
    return build_config(None, dict(values, **over))


def _weights(folder):
    return {**load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors")),
            **load_file(str(folder / "text_encoder" / "model.safetensors"))}


def test_same_weights_as_one_optimizer_and_one_gradient_at_a_time(tiny_sd1, dog_photos, tmp_path, monkeypatch):
    held = []                          # how many gradients exist each time a weight is stepped
    real = fused_backward.PerWeightOptimizer._stepper

    def counting(optimizer):
        step = real(optimizer)

        def wrapped(param):
            held.append(sum(p.grad is not None for p in counting.params))
            step(param)
        return wrapped

    monkeypatch.setattr(fused_backward.PerWeightOptimizer, "_stepper", staticmethod(counting))
    original_init = fused_backward.PerWeightOptimizer.__init__

    def init(self, groups, make):
        counting.params = [p for g in groups for p in g["params"]]
        original_init(self, groups, make)
    monkeypatch.setattr(fused_backward.PerWeightOptimizer, "__init__", init)

    fused = train(_config(tiny_sd1, dog_photos, tmp_path / "f", fused_backward_pass=True))
    plain = train(_config(tiny_sd1, dog_photos, tmp_path / "p"))
    assert fused.losses == plain.losses
    a, b = _weights(tmp_path / "f"), _weights(tmp_path / "p")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    trained = len(counting.params)
    assert len(held) == 5 * trained and max(held) == 1      # every weight, every step, alone


def test_resume_is_exact(tiny_sd1, dog_photos, tmp_path):
    common = dict(fused_backward_pass=True, max_steps=6, checkpoint_every=3, keep_checkpoints=0)
    straight = train(_config(tiny_sd1, dog_photos, tmp_path / "a", **common))

    class Kill(TrainingCallback):
        def on_step_end(self, run, step):
            if step.step == 4:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_config(tiny_sd1, dog_photos, tmp_path / "b", **common), callbacks=[Kill()])
    resumed = train(_config(tiny_sd1, dog_photos, tmp_path / "b", resume="latest", **common))
    assert resumed.losses == straight.losses
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_what_it_rules_out(tiny_sd1, dog_photos, tmp_path):
    with pytest.raises(UserError, match="--fused-backward-pass .*--gradient-accumulation"):
        _config(tiny_sd1, dog_photos, tmp_path / "x", fused_backward_pass=True, gradient_accumulation=2).validate()
    with pytest.raises(UserError, match="--fused-backward-pass .*bf16"):
        _config(tiny_sd1, dog_photos, tmp_path / "x", fused_backward_pass=True, mixed_precision="fp16").validate()
    code, _, err = run_cli("train", "--model", tiny_sd1, "--instance-dir", dog_photos, "--instance-prompt", "a sks dog",
                           "--method", "full", "--fused-backward-pass", "--gradient-accumulation", "2",
                           "--resolution", "32", "--max-steps", "1", "--output", tmp_path / "y")
    assert code != 0 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    clipped = train(_config(tiny_sd1, dog_photos, tmp_path / "z", fused_backward_pass=True, max_grad_norm=1.0,
                            max_steps=1, class_prompt=None))
    assert any("not clipped" in w for w in clipped.warnings)


def test_preflight_counts_one_gradient_and_offers_it():
    from test_preflight import sd15_sizes
    sizes = pf.ModelSizes(**{**sd15_sizes().__dict__, "largest_weight": 1280 * 1280 * 9})
    cfg = build_config(None, dict(model="m", instance_dir="i", instance_prompt="a sks dog", output="o",
                                  method="full", resolution=512, mixed_precision="bf16"))
    plain, fused = pf.estimate(sizes, cfg, "cuda"), pf.estimate(sizes, cfg.replace(fused_backward_pass=True), "cuda")
    assert plain.gradients == sizes.unet * 4 and fused.gradients == 1280 * 1280 * 9 * 4
    assert fused.total == plain.total - plain.gradients + fused.gradients
    room = plain.total - plain.gradients // 2          # fits only without the whole set of gradients
    assert "--fused-backward-pass" in [flags for flags, _ in pf.fixes(sizes, cfg, "cuda", room, limit=10)]


def test_autocast_keeps_no_copies_of_the_trained_weights(tiny_sd1, dog_photos, tmp_path, monkeypatch):
    """Under bf16 with checkpointing, autocast's cache would hold a bf16 copy of every trained weight
    until the UNet's forward pass returns (SDXL full: 4.8 GiB, the step's peak once the gradients
    go one at a time). The cache is off in the training passes, and the run is the same bit for bit."""
    import accelerate.utils

    from dreambooth.training.trainer import Trainer
    cfg = _config(tiny_sd1, dog_photos, tmp_path / "off", fused_backward_pass=True, mixed_precision="bf16",
                  gradient_checkpointing=True, max_steps=3)
    trainer = Trainer(cfg).setup()
    seen = []
    trainer.trainables["unet"].conv_out.register_forward_hook(
        lambda *_: seen.append((torch.is_autocast_enabled("cpu"), torch.is_autocast_cache_enabled())))
    off = trainer.fit()
    assert seen and all(s == (True, False) for s in seen), seen
    real = accelerate.utils.AutocastKwargs
    monkeypatch.setattr(accelerate.utils, "AutocastKwargs", lambda **kw: real(**{**kw, "cache_enabled": True}))
    on = train(cfg.replace(output=str(tmp_path / "on")))
    assert off.losses == on.losses and len(off.losses) == 3
    a, b = _weights(tmp_path / "off"), _weights(tmp_path / "on")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
