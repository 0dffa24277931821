"""Sampling in bf16 on a CPU with AMX runs the UNet's and the VAE's convolutions channels-last
(models/conv_layout.py), and so does the latent cache's encoding: a generation pipeline for good, a
trainer's modules for each pass only, their weights coming back as they were, usable by autograd."""
import pytest
import torch
from PIL import Image

from dreambooth.generation.params import GenerationParams
from dreambooth.generation.pipeline import load_generation_pipeline
from dreambooth.generation.sampling import generate
from dreambooth.models import conv_layout
from dreambooth.models.conv_layout import channels_last_convs
from dreambooth.training.latents import LatentCache


def strided_channels_last(weight) -> bool:
    return weight.stride() == weight.clone(memory_format=torch.channels_last).stride()


def channels_last(module) -> list[bool]:
    return [strided_channels_last(m.weight) for m in module.modules() if isinstance(m, torch.nn.Conv2d)]


@pytest.fixture
def amx(monkeypatch):
    monkeypatch.setattr(conv_layout, "cpu_has_amx", lambda: True)


def convs_seen(vae) -> list[tuple[str, bool]]:
    """(encoder or decoder, whether its first convolution's weight was channels-last) of each VAE pass."""
    seen = []
    for part in ("encoder", "decoder"):
        getattr(vae, part).conv_in.register_forward_pre_hook(
            lambda m, a, part=part: seen.append((part, strided_channels_last(m.weight))))
    return seen


def test_inside_channels_last_afterwards_as_before_and_trainable(amx):
    # 1x1 convolutions too: their weights count as contiguous in either layout, but run as strided
    net = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(8, 4, 1)).bfloat16()
    before = [p.detach().clone() for p in net.parameters()]
    with torch.inference_mode(), channels_last_convs(net):       # entered under inference mode, as sampling may be
        assert all(channels_last(net))
        net(torch.randn(1, 4, 8, 8, dtype=torch.bfloat16))
    assert not any(channels_last(net))
    assert all(p.stride() == b.stride() and torch.equal(p, b) for p, b in zip(net.parameters(), before))
    net(torch.randn(1, 4, 8, 8, dtype=torch.bfloat16)).sum().backward()      # not inference tensors
    assert all(p.grad is not None for p in net.parameters())


def test_only_bf16_on_a_cpu_with_amx(monkeypatch):
    net = torch.nn.Conv2d(4, 4, 3)
    for amx_here, dtype, expected in [(True, torch.bfloat16, True), (True, torch.float32, False),
                                      (False, torch.bfloat16, False)]:
        monkeypatch.setattr(conv_layout, "cpu_has_amx", lambda: amx_here)
        net.to(dtype)
        with channels_last_convs(net):
            assert channels_last(net) == [expected]


def test_a_generation_pipeline_keeps_its_convolutions_channels_last(amx, tiny_sd1):
    pipeline = load_generation_pipeline(str(tiny_sd1), dtype=torch.bfloat16)
    vae, unet = pipeline.pipe.vae, pipeline.pipe.unet
    assert all(channels_last(vae)) and all(channels_last(unet))      # once, at loading
    seen = convs_seen(vae)
    made = generate(pipeline, GenerationParams("a dog", steps=2, width=16, height=16, seed=1))
    assert seen == [("decoder", True)]
    seen.clear()
    generate(pipeline, GenerationParams("a dog", steps=2, width=16, height=16, seed=1, init_image=made[0].image))
    assert seen == [("encoder", True), ("decoder", True)]       # img2img: encoded and decoded so
    assert all(channels_last(vae)) and all(channels_last(unet))


@pytest.mark.parametrize("autocast", [False, True])
def test_a_trainers_modules_only_during_each_pass(amx, tiny_sd1, autocast):
    # a trainer's pipeline is not moved by GenerationPipeline.to: validation and the latent cache put
    # its modules in channels-last for their passes only; under bf16 autocast its fp32 UNet too
    from dreambooth.generation.pipeline import GenerationPipeline
    from dreambooth.models.loading import load_pipeline
    pipe = load_pipeline(str(tiny_sd1), dtype=torch.bfloat16)
    if autocast:
        pipe.unet.float()
    seen = convs_seen(pipe.vae)
    unet_seen = []
    pipe.unet.conv_in.register_forward_pre_hook(lambda m, a: unet_seen.append(
        "gave way" if m.weight.numel() == 0 else strided_channels_last(m.weight)))
    generate(GenerationPipeline(pipe), GenerationParams("a dog", steps=2, width=16, height=16, seed=1),
             autocast=torch.bfloat16 if autocast else None)
    # bf16: from the second call on, the prepacked copy stands in for the weight (fp32: not packed)
    assert seen == [("decoder", True)] and unet_seen == [True, True if autocast else "gave way"]
    assert not any(channels_last(pipe.vae)) and not any(channels_last(pipe.unet))
    # no prepacked copies kept between passes: the weights train in between
    assert not any("_packed" in m.__dict__ or "forward" in m.__dict__ for m in [*pipe.unet.modules(), *pipe.vae.modules()])
    seen.clear()
    LatentCache(pipe.vae, torch.device("cpu")).encode(torch.zeros(1, 3, 16, 16))
    assert seen == [("encoder", True)] and not any(channels_last(pipe.vae))


def test_fp32_sampling_leaves_the_layout(amx, tiny_sd1):
    pipeline = load_generation_pipeline(str(tiny_sd1), dtype=torch.float32)
    seen = convs_seen(pipeline.pipe.vae)
    generate(pipeline, GenerationParams("a dog", steps=2, width=16, height=16, seed=1))
    assert seen == [("decoder", False)] and not any(channels_last(pipeline.pipe.unet))


def test_prepacked_weights_compute_the_same_bits_and_stand_in_for_the_weight(amx):
    """Within the pass, a convolution whose weight is at least as large as its input runs from oneDNN's
    prepacked copy of it, the same bits as the channels-last convolution; the copy takes the weight's
    place until the pass ends (then any input runs from it), and the weight comes back bit for bit.
    A layer that wraps the convolution (peft's) may read the weight: that one keeps it."""
    if not conv_layout._packing_works():
        pytest.skip("torch's prepacked oneDNN convolutions are not available here")
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(32, 32, 3, padding=1).bfloat16()
    conv_layout.to_channels_last(conv)                  # a generation pipeline's: channels-last for good
    weight = conv.weight.detach().clone()
    small, large = (torch.randn(2, 32, n, n, dtype=torch.bfloat16) for n in (4, 16))
    expected = [torch.nn.functional.conv2d(x, weight, conv.bias, padding=1) for x in (small, large)]
    with torch.inference_mode():
        for _ in range(2):                                   # a second pass packs afresh
            with channels_last_convs(conv):
                assert torch.equal(conv(small), expected[0])
                assert conv.weight.numel() == 0 and "_packed" in conv.__dict__      # it gave way
                assert torch.equal(conv(large), expected[1])
            assert torch.equal(conv.weight, weight) and strided_channels_last(conv.weight)
            assert not any(k in conv.__dict__ for k in ("_packed", "forward", "_keeps_weight"))
        with torch.no_grad():
            conv.weight.mul_(2)
        with channels_last_convs(conv):
            assert torch.equal(conv(small), torch.nn.functional.conv2d(small, 2 * weight, conv.bias, padding=1))
        wrapper = torch.nn.Module()
        wrapper.base_layer = conv
        with channels_last_convs(wrapper):
            assert torch.equal(conv(small), torch.nn.functional.conv2d(small, 2 * weight, conv.bias, padding=1))
            assert torch.equal(conv.weight, 2 * weight)                   # kept: the wrapper may read it
    with torch.inference_mode(), channels_last_convs(conv):
        assert torch.equal(conv(large), torch.nn.functional.conv2d(large, 2 * weight, conv.bias, padding=1))
        assert "_packed" not in conv.__dict__                    # a larger input first: not packed


def test_prepacked_sampling_makes_the_same_images(amx, tiny_sd1, monkeypatch):
    if not conv_layout._packing_works():
        pytest.skip("torch's prepacked oneDNN convolutions are not available here")
    pipeline = load_generation_pipeline(str(tiny_sd1), dtype=torch.bfloat16)
    params = GenerationParams("a dog", steps=3, width=32, height=32, seed=1, batch_size=2)
    unet = pipeline.pipe.unet
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    during = []
    unet.conv_out.register_forward_hook(lambda m, a, out: during.append(any("_packed" in c.__dict__ for c in unet.modules())))
    packed = [img.image.tobytes() for img in generate(pipeline, params)]
    assert during and all(during)
    assert not any("_packed" in c.__dict__ for c in unet.modules())          # nothing held between calls
    assert all(torch.equal(v, before[k]) and v.stride() == before[k].stride() for k, v in unet.state_dict().items())
    monkeypatch.setattr(conv_layout, "_prepacked", lambda conv, x, **_: torch.nn.Conv2d.forward(conv, x))
    assert [img.image.tobytes() for img in generate(pipeline, params)] == packed


def test_checking_the_prepacked_ops_draws_nothing_from_the_global_stream():
    # it runs at a run's first sampling pass (class images): a draw there would move dropout's stream
    conv_layout._packing_works.cache_clear()
    state = torch.random.get_rng_state()
    conv_layout._packing_works()
    assert torch.equal(torch.random.get_rng_state(), state)


def test_a_run_that_makes_its_class_images_trains_as_one_that_finds_them(amx, tiny_sd1, dog_photos, tmp_path):
    """Sampling class images must not touch the global random stream that LoRA's initial weights and
    dropout draw from: the same command trains the same whether its class images were there or not.
    (The first check of the prepacked ops drew from it once, and runs differed from their second step.)"""
    from dreambooth.training.config import build_config
    from dreambooth.training.trainer import Trainer

    def losses(out, class_dir=None):
        cfg = build_config(None, dict(model=str(tiny_sd1), instance_dir=str(dog_photos), instance_prompt="a photo of sks dog",
                                      class_prompt="a photo of dog", num_class_images=2, class_steps=1, method="lora",
                                      rank=4, resolution=32, max_steps=4, learning_rate=1e-3, mixed_precision="bf16",
                                      checkpoint_every=0, output=str(out), class_dir=class_dir))
        return Trainer(cfg).setup().fit().losses

    conv_layout._packing_works.cache_clear()          # checked afresh, as in a new process: while making them
    made = losses(tmp_path / "made")
    assert losses(tmp_path / "found", str(tmp_path / "made" / "class_images")) == made
