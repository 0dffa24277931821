"""Sampling in bf16 on a CPU with AMX runs the UNet's linear layers with their bias fused and plain
attention without its division by one (models/lean_ops.py): the same images, bit for bit, and the
modules as they were afterwards. The VAE runs without prepacked copies."""
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from dreambooth.generation.params import GenerationParams
from dreambooth.generation.pipeline import load_generation_pipeline
from dreambooth.generation.sampling import generate
from dreambooth.models import conv_layout, lean_ops


@pytest.fixture
def amx(monkeypatch):
    monkeypatch.setattr(conv_layout, "cpu_has_amx", lambda: True)
    if not lean_ops._exact():
        pytest.skip("torch's oneDNN linear is not available here")


def images(pipeline, prompt="a dog", **kw):
    params = GenerationParams(prompt, steps=3, width=32, height=32, seed=1, batch_size=2, **kw)
    return [img.image.tobytes() for img in generate(pipeline, params)]


@pytest.mark.parametrize("family", ["tiny_sd1", "tiny_sdxl"])
def test_the_same_images_and_the_modules_as_they_were(amx, family, request, monkeypatch):
    pipeline = load_generation_pipeline(str(request.getfixturevalue(family)), dtype=torch.bfloat16)
    unet = pipeline.pipe.unet
    processors = dict(unet.attn_processors)
    seen = {"fused": 0, "plain": 0, "output": 0}
    fused, plain_class, output = lean_ops._linear, lean_ops._attention_processor()[0], lean_ops._transformer_output

    def counting(x, weight, bias):
        seen["fused"] += lean_ops._plain(x, weight, bias)
        return fused(x, weight, bias)

    def counting_output(layer, **kwargs):
        seen["output"] += 1
        return output(layer, **kwargs)
    monkeypatch.setattr(lean_ops, "_linear", counting)
    monkeypatch.setattr(lean_ops, "_transformer_output", counting_output)
    unet.mid_block.register_forward_pre_hook(
        lambda m, a: seen.__setitem__("plain", sum(type(p) is plain_class for p in unet.attn_processors.values())))
    lean = images(pipeline) + images(pipeline, sampler="DPM++ 2M") + images(pipeline, prompt="a [dog:cat:1]")
    assert seen["fused"] > 0 and seen["plain"] == len(processors)       # they ran
    assert (seen["output"] > 0) == (family == "tiny_sd1")               # SD1's 1x1-convolution projections
    assert unet.attn_processors == processors
    assert not any("forward" in m.__dict__ or "_get_output_for_continuous_inputs" in m.__dict__
                   for m in unet.modules() if not isinstance(m, torch.nn.Conv2d))
    monkeypatch.setattr(lean_ops, "wanted", lambda module, dtype=None: False)
    assert images(pipeline) + images(pipeline, sampler="DPM++ 2M") + images(pipeline, prompt="a [dog:cat:1]") == lean
    assert not any("_packed" in m.__dict__ for m in pipeline.pipe.vae.modules())    # the VAE: no copies


def test_a_cross_attention_computes_its_keys_once_a_pass_and_again_for_a_new_prompt(amx, tiny_sd1):
    """The prompt embeddings stay the same tensor through the steps, so their keys and values stay
    the same; prompt editing gives new ones."""
    pipeline = load_generation_pipeline(str(tiny_sd1), dtype=torch.bfloat16)
    unet = pipeline.pipe.unet
    cross = [m for name, m in unet.named_modules() if name.endswith("attn2")]
    calls, contexts = [], []
    for layer in cross:
        layer.to_k.register_forward_hook(lambda m, a, out: calls.append(m))
    unet.register_forward_pre_hook(lambda m, a, kw: contexts.append(kw["encoder_hidden_states"]), with_kwargs=True)
    images(pipeline)                                          # 3 steps, one UNet call each
    assert len(contexts) == 3 and len(calls) == len(cross)
    calls.clear(), contexts.clear()
    images(pipeline, prompt="a [dog:cat:2]")                 # "cat" from step 2 on
    changes = sum(a is not b for a, b in zip(contexts, contexts[1:]))
    assert changes >= 1 and len(calls) == (1 + changes) * len(cross)


def test_each_op_gives_diffusers_bits_and_leaves_the_rest_to_it(amx):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 24, 32, generator=gen).bfloat16()
    context = torch.randn(2, 7, 16, generator=gen).bfloat16()
    linear = torch.nn.Linear(32, 48).bfloat16()
    self_attn = Attention(32, heads=4, dim_head=8, bias=True).bfloat16()
    cross_attn = Attention(32, cross_attention_dim=16, heads=2, dim_head=16).bfloat16()
    scaled = Attention(32, heads=4, dim_head=8, rescale_output_factor=2.0, residual_connection=True).bfloat16()
    mask = torch.ones(2, 24).bfloat16()
    with torch.inference_mode():
        cases = [(linear, (x,), {}), (linear, (x.transpose(0, 1),), {}), (self_attn, (x,), {}), (cross_attn, (x,), {"encoder_hidden_states": context}),
                 (scaled, (x,), {}), (self_attn, (x,), {"attention_mask": mask})]
        expected = [m(*a, **k) for m, a, k in cases]
        with lean_ops.lean_ops(torch.nn.ModuleList([m for m, _, _ in cases])):
            assert "forward" in linear.__dict__ and type(self_attn.processor) is not AttnProcessor2_0
            assert all(torch.equal(m(*a, **k), e) for (m, a, k), e in zip(cases, expected))
    assert type(self_attn.processor) is AttnProcessor2_0 and "forward" not in linear.__dict__


def test_gradients_and_other_dtypes_run_as_ever(amx):
    layer = torch.nn.Linear(8, 8).bfloat16()
    x = torch.randn(3, 8).bfloat16()
    with lean_ops.lean_ops(layer):
        assert not lean_ops._plain(x.requires_grad_(), layer.weight, layer.bias)       # training: torch's own
        layer(x).sum().backward()
        assert layer.weight.grad is not None
    assert not lean_ops._plain(torch.randn(3, 8), layer.weight.float(), layer.bias.float())
    with torch.no_grad(), lean_ops.lean_ops(torch.nn.Linear(8, 8)):      # fp32 module: nothing patched
        assert not lean_ops._plain(torch.randn(3, 8), torch.randn(8, 8), torch.randn(8))


def test_a_lora_on_a_linear_layer_is_applied(amx, tiny_sd1):
    """peft wraps the layer; its base layer runs fused, and the LoRA's own product beside it."""
    from peft import LoraConfig
    pipeline = load_generation_pipeline(str(tiny_sd1), dtype=torch.bfloat16)
    unet = pipeline.pipe.unet
    unet.add_adapter(LoraConfig(r=4, target_modules=["ff.net.0.proj", "to_out.0"], init_lora_weights=False))
    unet.to(torch.bfloat16)
    with_lora = images(pipeline)
    unet.disable_adapters()
    assert images(pipeline) != with_lora


def test_checking_the_ops_draws_nothing_from_the_global_stream():
    lean_ops._exact.cache_clear()
    state = torch.random.get_rng_state()
    lean_ops._exact()
    assert torch.equal(torch.random.get_rng_state(), state)
