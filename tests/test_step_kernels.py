"""How the training step's kernels run (issue 30): gradient clipping folded into fused AdamW, short attention
in fp32 on a CPU training under bf16, and LoRA inputs left to autocast. Each must give the numbers
the plain path gives, and do the work it promises."""
import math
import threading

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from dreambooth.training.clipping import clip_gradients, fused_adamw
from dreambooth.training.cpu_attention import attention_precision


@pytest.fixture
def accelerator():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(cpu=True)


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(64, 32, generator=g)), torch.nn.Parameter(torch.randn(32, generator=g))]
    grads = [torch.randn(p.shape, generator=g) * 5 for p in params]     # a global norm far above 1
    return params, grads


@pytest.mark.parametrize("max_norm", [1.0, 1e6])        # clipping, and a norm under the limit
def test_clipping_folded_into_fused_adamw_matches_clip_then_step(accelerator, max_norm):
    ref, grads = _params()
    folded, _ = _params()
    start = [p.detach().clone() for p in folded]
    ref_opt = accelerator.prepare(torch.optim.AdamW(ref, lr=1e-2, fused=True))
    opt = accelerator.prepare(torch.optim.AdamW(folded, lr=1e-2, fused=True))
    assert fused_adamw(opt) is opt.optimizer
    for _ in range(3):
        for p, q, g in zip(ref, folded, grads):
            p.grad, q.grad = g.clone(), g.clone()
        accelerator.clip_grad_norm_(ref, max_norm)
        clip_gradients(accelerator, opt, folded, max_norm)
        # nothing rewrote the gradients: the factor waits in the optimizer
        assert all(torch.equal(q.grad, g) for q, g in zip(folded, grads))
        norm = torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]))
        assert torch.allclose(opt.optimizer.grad_scale, torch.clamp(norm / max_norm, min=1.0))
        ref_opt.step()
        opt.step()
    for p, q, q0 in zip(ref, folded, start):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-6)
        assert not torch.equal(q, q0)


def test_other_optimizers_are_clipped_in_place(accelerator):
    params, grads = _params()
    opt = accelerator.prepare(torch.optim.AdamW(params, lr=1e-2, foreach=True))
    assert fused_adamw(opt) is None
    for p, g in zip(params, grads):
        p.grad = g.clone()
    clip_gradients(accelerator, opt, params, 1.0)
    assert torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in params])).item() == pytest.approx(1.0, rel=1e-5)
    assert getattr(opt.optimizer, "grad_scale", None) is None


def _qkv(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 4, 64, 16, generator=g).bfloat16().requires_grad_() for _ in range(3)]


def test_cpu_bf16_attention_runs_in_fp32_within_the_forward():
    fp32_attention = attention_precision(torch.device("cpu"), torch.bfloat16)
    q, k, v = _qkv()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        native = F.scaled_dot_product_attention(q, k, v)
        with fp32_attention():
            out = F.scaled_dot_product_attention(q, k, v)
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).bfloat16()
    assert out.dtype == torch.bfloat16 and torch.equal(out, expected)
    assert not torch.equal(native, expected)       # the bf16 kernel's numbers differ: the switch took effect
    with fp32_attention():                         # outside autocast (a frozen bf16 encoder caching): left alone
        assert torch.equal(F.scaled_dot_product_attention(q, k, v), native)
    out.float().square().sum().backward()          # the backward runs through the fp32 kernel
    assert q.grad is not None and q.grad.dtype == torch.bfloat16 and torch.isfinite(q.grad).all()


def test_long_attention_keeps_bf16():
    """Past ``FP32_UP_TO`` positions bf16 is the faster kernel on the CPU (SD1.5 at 512 px: 4096 x 4096)."""
    from dreambooth.training.cpu_attention import FP32_UP_TO
    fp32_attention = attention_precision(torch.device("cpu"), torch.bfloat16)
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 1, 512, 8, generator=g).bfloat16() for _ in range(3))
    assert 512 * 512 > FP32_UP_TO
    with torch.autocast("cpu", dtype=torch.bfloat16):
        native = F.scaled_dot_product_attention(q, k, v)
        with fp32_attention():
            out = F.scaled_dot_product_attention(q, k, v)
    assert torch.equal(out, native)


def test_other_threads_keep_their_attention():
    """Generation in another thread (the server) while a CPU trains keeps the bf16 kernel's numbers."""
    fp32_attention = attention_precision(torch.device("cpu"), torch.bfloat16)
    q, k, v = (t.detach() for t in _qkv(1))
    native = F.scaled_dot_product_attention(q, k, v)
    seen = []
    with fp32_attention():
        worker = threading.Thread(target=lambda: seen.append(F.scaled_dot_product_attention(q, k, v)))
        worker.start()
        worker.join()
    assert torch.equal(seen[0], native)


@pytest.mark.parametrize("device,dtype,compile,checkpointing", [
    ("cuda", torch.bfloat16, False, False), ("cpu", torch.float16, False, False), ("cpu", None, False, False),
    ("cpu", torch.bfloat16, True, False), ("cpu", torch.bfloat16, False, True)])
def test_attention_left_alone_elsewhere(device, dtype, compile, checkpointing):
    """Not on a GPU, not without bf16 autocast, not in compiled blocks (they trace their own), not with
    gradient checkpointing (its recomputation runs outside the mode)."""
    from dreambooth.training.step_kernels import step_kernels
    fp32_attention = step_kernels([], False, False, torch.device("cpu"), torch.bfloat16)
    assert fp32_attention is attention_precision(torch.device("cpu"), torch.bfloat16)
    assert step_kernels([], compile, checkpointing, torch.device(device), dtype) is not fp32_attention


class _Copies(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func is torch.ops.aten._to_copy.default
        return func(*args, **(kwargs or {}))


def test_lora_under_autocast_skips_the_input_casts_bit_for_bit():
    from diffusers import UNet2DConditionModel

    from dreambooth.models.lora import UNET_TARGETS, add_adapters, autocast_adapters

    def unet():
        torch.manual_seed(0)
        model = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
                                     down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), norm_num_groups=8,
                                     up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=4)
        model.to(torch.bfloat16).requires_grad_(False)
        add_adapters(model, 4, 4, UNET_TARGETS)
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
        return model

    def step(model):
        g = torch.Generator().manual_seed(1)
        x, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 7, 32, generator=g).bfloat16()   # a frozen bf16 encoder's
        with _Copies() as copies, torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, torch.tensor([3, 500]), ctx).sample
            out.float().square().mean().backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        return out, grads, copies.count

    plain, adapted = unet(), unet()
    autocast_adapters(adapted)
    layers = sum(1 for n, _ in adapted.named_modules() if n.endswith("lora_A"))   # one per adapted linear
    out0, grads0, copies0 = step(plain)
    out1, grads1, copies1 = step(adapted)
    assert torch.equal(out0, out1) and all(torch.equal(a, b) for a, b in zip(grads0, grads1))
    # forward: peft's cast up and autocast's cast back down, per layer; backward: theirs where gradients flow
    assert layers > 0 and copies0 - copies1 >= 2 * layers, (copies0, copies1, layers)


def test_bf16_lora_run_with_text_encoder_and_validation(tiny_sd1, dog_photos, tmp_path):
    """The three together in a real run: a LoRA on the UNet and text encoder under bf16 on the CPU,
    clipped, validated (sampling the adapted models under autocast) and written."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from dreambooth.training.config import build_config
    from dreambooth.training.trainer import Trainer
    cfg = build_config(None, dict(model=str(tiny_sd1), instance_dir=str(dog_photos), instance_prompt="a photo of sks dog",
                                  class_prompt="a photo of dog", num_class_images=2, class_steps=1, method="lora",
                                  train_text_encoder=True, mixed_precision="bf16", resolution=32, max_steps=3,
                                  learning_rate=1e-2, max_grad_norm=1e-3, validate_every=2, validation_prompts=["a sks dog"],
                                  validation_seeds=[0], validation_steps=1, dino_model=None, clip_model=None,
                                  output=str(tmp_path / "out")))
    trainer = Trainer(cfg, []).setup()
    layers = [m for model in trainer.trainables.values() for m in model.modules() if isinstance(m, BaseTunerLayer)]
    assert layers and not any(m.cast_input_dtype_enabled for m in layers)
    result = trainer.fit()
    assert len(result.losses) == 3 and all(map(math.isfinite, result.losses))
    assert fused_adamw(trainer.optimizer).grad_scale.item() > 1          # the tiny limit clipped every step
    assert sorted(p.name for p in (tmp_path / "out" / "validation").glob("step-*.png")) == [
        "step-000000.png", "step-000002.png", "step-000003.png"]
    assert (tmp_path / "out" / "pytorch_lora_weights.safetensors").exists()


# ----- --compile: the repeated blocks, compiled, only within the step ------------------------------------
def _compile_config(tiny_sd1, dog_photos, out, **over):
    from dreambooth.training.config import build_config
    values = dict(model=str(tiny_sd1), instance_dir=str(dog_photos), instance_prompt="a photo of sks dog",
                  method="full", train_text_encoder=True, resolution=32, max_steps=3, learning_rate=1e-4,
                  center_crop=True, checkpoint_every=0, export_kohya=False, output=str(out))
    return build_config(None, dict(values, **over))


def test_compile_finds_the_repeated_blocks_and_swaps_them_only_within_the_step(tiny_sd1, dog_photos, tmp_path):
    from dreambooth.training.step_kernels import CompiledRegions, repeated_blocks
    from dreambooth.training.trainer import Trainer
    trainer = Trainer(_compile_config(tiny_sd1, dog_photos, tmp_path / "o")).setup()
    unet, te = trainer.trainables["unet"], trainer.trainables["text_encoder"]
    unet_blocks, te_blocks = repeated_blocks(unet), repeated_blocks(te)
    assert unet_blocks and {type(b).__name__ for b in unet_blocks} == {"BasicTransformerBlock"}
    assert len(unet_blocks) == sum(1 for m in unet.modules() if type(m).__name__ == "BasicTransformerBlock")
    assert len(te_blocks) == te.config.num_hidden_layers and {type(b).__name__ for b in te_blocks} == {"CLIPEncoderLayer"}
    keys = set(unet.state_dict())
    own = te_blocks[0].forward = lambda *args, **kwargs: None      # a forward set on the block itself
    regions = CompiledRegions([unet, te])
    assert regions.blocks == unet_blocks + te_blocks
    with regions.active():
        assert all(b.forward is f for b, f in zip(regions.blocks, regions._compiled))
    # outside the step each block runs its own forward again; nothing saved changes name
    assert te_blocks[0].forward is own
    assert all("forward" not in vars(b) and b.forward.__func__ is type(b).forward
               for b in regions.blocks if b is not te_blocks[0])
    assert set(unet.state_dict()) == keys


def test_compiled_blocks_train_as_the_eager_ones_with_checkpointing(tiny_sd1, dog_photos, tmp_path):
    """A real compiled run (inductor; most of this test's time is compiling): the compiled blocks run in
    the step, the recomputation of gradient checkpointing included, and the losses are the eager run's."""
    import torch._dynamo
    from dreambooth.training.trainer import train
    eager = train(_compile_config(tiny_sd1, dog_photos, tmp_path / "e"))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = train(_compile_config(tiny_sd1, dog_photos, tmp_path / "c", compile=True, gradient_checkpointing=True))
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert graphs >= 2          # the UNet's blocks and the text encoder's layers, at least
    assert compiled.steps == eager.steps == 3
    assert compiled.losses == pytest.approx(eager.losses, rel=1e-4)
    from safetensors.torch import load_file
    ours, theirs = (load_file(tmp_path / run / "unet" / "diffusion_pytorch_model.safetensors") for run in "ce")
    assert ours.keys() == theirs.keys()                    # the plain modules were saved
    assert all(torch.allclose(ours[k], theirs[k], rtol=1e-3, atol=1e-5) for k in ours)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_gradient_checkpointing_trains_under_bf16_on_the_cpu(tiny_sd1, dog_photos, tmp_path, method):
    """The fp32 short attention is left out under checkpointing: torch's checkpoint recomputes a block
    outside the function mode, and a block recomputed with other dtypes stopped the run (CheckpointError)."""
    from dreambooth.training.trainer import train
    result = train(_compile_config(tiny_sd1, dog_photos, tmp_path / "o", method=method, mixed_precision="bf16",
                                   gradient_checkpointing=True, max_steps=2))
    assert result.steps == 2 and all(math.isfinite(v) for v in result.losses)


def test_compile_that_cannot_compile_stops_in_one_line_and_writes_nothing(tiny_sd1, dog_photos, tmp_path):
    """A machine without a working C++ compiler (inductor's CPU code; triton needs one on a GPU too): the
    first step's compile fails, and the run says so in one line naming --compile."""
    import torch._dynamo
    import torch._inductor.config as inductor
    from dreambooth.errors import UserError
    from dreambooth.training.trainer import train
    # inductor's own patch: pytest's monkeypatch deletes a config key on undo (its module hides them),
    # which broke every later compile in the process. No compiled code from an earlier test either.
    torch._dynamo.reset()
    with inductor.patch({"cpp.cxx": ("no-such-compiler",), "fx_graph_cache": False}), pytest.raises(UserError) as err:
        train(_compile_config(tiny_sd1, dog_photos, tmp_path / "o", method="lora", train_text_encoder=False, compile=True))
    torch._dynamo.reset()
    assert inductor.fx_graph_cache is not None and inductor.cpp.cxx != ("no-such-compiler",)
    message = str(err.value)
    assert message.startswith("--compile: torch.compile cannot compile on this machine (") and "\n" not in message
    assert "no-such-compiler" in message and message.endswith("run without --compile")
    assert not any((tmp_path / "o").rglob("*"))             # nothing written
