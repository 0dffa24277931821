"""bf16 copies of the trained weights (issue 30): a full fine-tune on a CPU under bf16 trains its linear and
convolution weights through bf16 copies that the optimizer keeps, instead of casting each weight down and
its gradient up every step. The gradients must be the plain path's, the updates AdamW's, and the state
AdamW's, so that checkpoints resume either way."""
import math
import os
import shutil

import pytest
import torch

from dreambooth.training import bf16_copies
from dreambooth.training.bf16_copies import AdamWWithBf16Copies
from dreambooth.training.clipping import clip_gradients

# inductor writes the passes in C++: without a compiler a run trains as before (and these do not apply)
COMPILER = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
pytestmark = pytest.mark.skipif(not COMPILER, reason="no C++ compiler for inductor on this machine")


def test_the_passes_compile_where_there_is_a_compiler():
    assert bf16_copies._kernels() is not None


@pytest.fixture
def accelerator():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(cpu=True)


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.norm = torch.nn.GroupNorm(2, 8)
        self.proj = torch.nn.Linear(8 * 6 * 6, 16)

    def forward(self, x):
        return self.proj(self.norm(self.conv(x)).flatten(1))


def _backward(net, x, weights):
    with weights(), torch.autocast("cpu", dtype=torch.bfloat16):
        net(x).float().square().mean().mul(100).backward()      # gradients with a global norm above 1


def test_copies_give_autocasts_gradients_and_adamws_updates(accelerator):
    import contextlib
    plain, copied = Net(), Net()
    settings = dict(lr=1e-2, weight_decay=1e-2, betas=(0.9, 0.999), eps=1e-8)
    ref = accelerator.prepare(torch.optim.AdamW(plain.parameters(), fused=True, **settings))
    opt = accelerator.prepare(AdamWWithBf16Copies([{"params": list(copied.parameters())}], [copied], **settings))
    inner = opt.optimizer
    assert set(map(id, inner.copies)) == {id(copied.conv.weight), id(copied.proj.weight)}    # not biases, not norms
    x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    for step in range(4):
        with inner.swapped():
            assert copied.proj.weight.dtype == torch.bfloat16          # the module holds the copy in the step
        assert copied.proj.weight.dtype == torch.float32               # and its fp32 weight outside it
        _backward(plain, x, contextlib.nullcontext)
        _backward(copied, x, inner.swapped)
        if step == 0:       # the same gradients bit for bit: autocast's cast is what the copy holds
            assert torch.equal(inner.copies[copied.proj.weight].grad.float(), plain.proj.weight.grad)
            assert copied.proj.weight.grad is None
        clip_gradients(accelerator, ref, list(plain.parameters()), 1.0)
        clip_gradients(accelerator, opt, list(copied.parameters()), 1.0)
        # the norm of bf16 and fp32 gradients together, summed in fp32 (after the first step the weights
        # differ by rounding, and so may the bf16 gradients)
        torch.testing.assert_close(inner.grad_scale, ref.optimizer.grad_scale, rtol=1e-6 if step == 0 else 1e-3, atol=0)
        assert inner.grad_scale.item() > 1
        ref.step()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ref.zero_grad(set_to_none=True)
        assert all(c.grad is None for c in inner.copies.values())
        # AdamW's update up to rounding after one step; after more, bf16's rounding of the slightly different
        # weights feeds back through the gradients (steps of lr 1e-2 per weight), as between any two bf16 runs
        for (name, p), q in zip(plain.named_parameters(), copied.parameters()):
            torch.testing.assert_close(q, p, rtol=0, atol=2e-7 if step == 0 else 2e-3, msg=name)
            assert not torch.equal(q, Net().get_parameter(name)), name      # every weight moved
    for weight, copy in inner.copies.items():
        assert torch.equal(copy, weight.to(torch.bfloat16))             # the copies follow their weights
    # AdamW's state, in AdamW's layout: a checkpoint loads into plain AdamW
    state = inner.state_dict()
    assert state["state"].keys() == ref.optimizer.state_dict()["state"].keys()
    for key, value in state["state"].items():
        theirs = ref.optimizer.state_dict()["state"][key]
        assert value.keys() == theirs.keys() and value["step"].item() == theirs["step"].item() == 4
        for field in ("exp_avg", "exp_avg_sq"):
            assert value[field].dtype == theirs[field].dtype and value[field].shape == theirs[field].shape
            torch.testing.assert_close(value[field], theirs[field], rtol=0.05, atol=1e-3)
    torch.optim.AdamW(Net().parameters(), fused=True, **settings).load_state_dict(state)


def test_a_skipped_step_changes_nothing_and_changed_weights_refresh_their_copies():
    net = Net()
    opt = AdamWWithBf16Copies([{"params": list(net.parameters())}], [net], lr=1e-2)
    x = torch.randn(2, 3, 6, 6)
    with opt.swapped(), torch.autocast("cpu", dtype=torch.bfloat16):
        net(x).float().sum().backward()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt.found_inf = torch.ones(())          # the loss was not finite
    opt.step()
    assert all(torch.equal(p, before[n]) for n, p in net.named_parameters())
    assert not opt.state or all(s["step"].item() == 0 for s in opt.state.values())
    # a weight rewritten outside the optimizer (a checkpoint loaded): its copy follows at the next step
    with torch.no_grad():
        net.proj.weight.mul_(2)
    with opt.swapped():
        assert torch.equal(net.proj.weight, (before["proj.weight"] * 2).to(torch.bfloat16))


def _config(tiny_sd1, dog_photos, out, **over):
    from dreambooth.training.config import build_config
    values = dict(model=str(tiny_sd1), instance_dir=str(dog_photos), instance_prompt="a photo of sks dog",
                  class_prompt="a photo of dog", num_class_images=2, class_steps=1, method="full",
                  train_text_encoder=True, mixed_precision="bf16", resolution=32, max_steps=4, learning_rate=1e-3,
                  center_crop=True, checkpoint_every=0, export_kohya=False, output=str(out))
    return build_config(None, dict(values, **over))


def test_a_bf16_full_run_on_the_cpu_trains_through_copies_as_without(tiny_sd1, dog_photos, tmp_path, monkeypatch):
    """One step of a real run, with copies and without, from the same weights and batch: the same loss
    and the same weights written, up to the rounding of AdamW's arithmetic. (Over more steps bf16's
    rounding of slightly different weights feeds back, and Adam scales gradients that are all rounding
    noise, such as attention's key bias, to full steps: no tight comparison holds there.)"""
    from dreambooth.training import trainables
    from dreambooth.training.trainer import Trainer
    from tests.conftest import saved_weights
    trainer = Trainer(_config(tiny_sd1, dog_photos, tmp_path / "copies", max_steps=1)).setup()
    inner = trainer.optimizer.optimizer
    assert isinstance(inner, AdamWWithBf16Copies)
    # every linear and convolution weight of the UNet and the text encoder
    expected = sum(1 for m in trainer.trainables.values() for mod in m.modules() if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)))
    assert len(inner.copies) == expected > 0
    with_copies = trainer.fit()
    monkeypatch.setattr(trainables, "keeps_copies", lambda *a: False)
    plain = Trainer(_config(tiny_sd1, dog_photos, tmp_path / "plain", max_steps=1)).setup()
    assert type(plain.optimizer.optimizer) is torch.optim.AdamW
    assert with_copies.losses == plain.fit().losses and math.isfinite(with_copies.losses[0])
    a, b = saved_weights(tmp_path / "copies"), saved_weights(tmp_path / "plain")
    assert a.keys() == b.keys()
    for file in a:
        for key in a[file]:
            torch.testing.assert_close(a[file][key], b[file][key], rtol=1.2e-7, atol=1e-7, msg=f"{file} {key}")   # an ulp
    unet, start = "unet/diffusion_pytorch_model.safetensors", saved_weights(tiny_sd1)    # and the step moved them
    assert all(not torch.equal(a[unet][k], start[unet][k]) for k in a[unet] if k.endswith(("to_q.weight", "conv1.weight")))


@pytest.mark.parametrize("over", [dict(mixed_precision="no"), dict(method="lora"), dict(gradient_accumulation=2)])
def test_other_runs_keep_plain_adamw(tiny_sd1, dog_photos, tmp_path, over):
    from dreambooth.training.trainer import Trainer
    trainer = Trainer(_config(tiny_sd1, dog_photos, tmp_path / "o", **over)).setup()
    assert not isinstance(getattr(trainer.optimizer, "optimizer", trainer.optimizer), AdamWWithBf16Copies)
