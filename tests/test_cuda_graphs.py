"""--cuda-graphs (issue 30: a GPU's LoRA step is bound by launching kernels): the UNet's passes
captured once with torch.cuda.make_graphed_callables and replayed.

CI has no GPU, so capturing is stood in for here by a function that checks what the real one asks
(a module without hooks, no autocast cache around it, copies of the step's tensors) and replays by
calling the module. What is tested is the trainer's side: what it captures, that every step of the
captured shapes goes through the replay with the same results as eager, the eager path for other
shapes, and the refusals. The speed is measured on a GPU (benchmarks/gpu_variants.py)."""
import pytest
import torch
from conftest import assert_same_weights, run_cli
from dreambooth import progress
from dreambooth.errors import UserError
from dreambooth.training import cuda_graphs, trainer as trainer_module
from dreambooth.training.config import build_config
from dreambooth.training.trainer import train


class FakeCapture:
    """Stands in for torch.cuda.make_graphed_callables; counts captures and replays."""

    def __init__(self):
        self.captures, self.replays, self.samples = 0, 0, []

    def __call__(self, module, sample, allow_unused_input=False):
        assert isinstance(module, torch.nn.Module)
        assert not (module._forward_hooks or module._forward_pre_hooks or module._backward_hooks)
        for device in ("cpu", "cuda"):
            assert not (torch.is_autocast_enabled(device) and torch.is_autocast_cache_enabled())
        self.captures += 1
        self.samples.append(sample)
        # The real capture runs warm-up passes, then the recorded one, in this same context: a weight
        # the optimizer changes must be cast again by each pass. An autocast cache that outlived one pass
        # would be recorded as stale casts (pytorch/pytorch#71631).
        trained = [p for p in module.parameters() if p.requires_grad]
        kept = [p.detach().clone() for p in trained]
        with torch.no_grad():
            before = module(*sample).detach().clone()
            torch._foreach_add_(trained, 0.01)
            after = module(*sample)
            torch._foreach_copy_(trained, kept)
        assert not torch.equal(before, after), "a pass used the previous pass's weights"
        # Capturing forbids reading the random number generators' state, which torch's checkpoint does
        # by default in the forward pass and restores in the recomputation.
        def forbidden(*args):
            raise AssertionError("the UNet's passes read the RNG state")
        real_get, real_set = torch.get_rng_state, torch.set_rng_state
        torch.get_rng_state, torch.set_rng_state = forbidden, forbidden
        try:
            out = module(*sample)
            torch.autograd.grad(out.float().sum(), trained, allow_unused=True)    # grads returned, not accumulated
        finally:
            torch.get_rng_state, torch.set_rng_state = real_get, real_set

        def replay(*args):
            self.replays += 1
            assert all(a is not s for a, s in zip(args, sample))      # the step's tensors, not the capture's
            return module(*args)
        return replay


@pytest.fixture
def capture(monkeypatch):
    fake = FakeCapture()
    monkeypatch.setattr(torch.cuda, "make_graphed_callables", fake)
    real = trainer_module.check_one_process_options       # let the CPU stand in for the GPU

    def on_a_gpu(cfg, device, processes, sharded, warn):
        real(cfg.replace(cuda_graphs=False), device, processes, sharded, warn)
    monkeypatch.setattr(trainer_module, "check_one_process_options", on_a_gpu)
    return fake


def _config(model, photos, out, **over):
    values = dict(model=str(model), instance_dir=str(photos), instance_prompt="a photo of sks dog",
                  class_prompt="a photo of dog", num_class_images=2, class_steps=1, class_batch_size=2,
                  resolution=32, max_steps=4, learning_rate=1e-3, mixed_precision="bf16", export_kohya=False,
                  output=str(out))
    return build_config(None, dict(values, **over))


@pytest.mark.parametrize("family, over", [
    ("sd1", dict(method="lora")),
    ("sdxl", dict(method="lora", train_text_encoder=True)),      # added conditioning; embeddings with gradients
    ("sd1", dict(method="full", train_text_encoder=True, mixed_precision="no")),
    ("sd1", dict(method="lora", gradient_checkpointing=True)),     # recomputed without the RNG state
    ("sdxl", dict(method="full", gradient_checkpointing=True)),
])
def test_every_step_replays_what_was_captured_with_eager_results(family, over, capture, tiny_sd1, tiny_sdxl,
                                                                 dog_photos, tmp_path):
    model = tiny_sd1 if family == "sd1" else tiny_sdxl
    graphed = train(_config(model, dog_photos, tmp_path / "g", cuda_graphs=True, **over))
    eager = train(_config(model, dog_photos, tmp_path / "e", **over))
    assert capture.captures == 1 and capture.replays == 4           # captured at the first step, replayed at every one
    sample = capture.samples[0]
    assert sample[0].shape[0] == 2                                   # the instance and the class example, one pass
    assert len(sample) == (5 if family == "sdxl" else 3)             # SDXL: text_embeds and time_ids as tensors
    assert sample[2].requires_grad == bool(over.get("train_text_encoder"))
    assert graphed.losses == eager.losses
    assert_same_weights(tmp_path / "g", tmp_path / "e", "replayed against eager")


def test_other_shapes_run_eager(capture):
    class Out:
        def __init__(self, sample):
            self.sample = sample

    class Unet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(2.0))

        def forward(self, noisy, timesteps, embeds, added_cond_kwargs=None):
            return Out(noisy * self.scale)

    class Accelerator:
        def autocast(self):
            return torch.autocast("cpu", enabled=False)

    pass_ = cuda_graphs.UNetPass(Unet(), Accelerator(), graphs=True)
    small, large = torch.ones(2, 4, 8, 8), torch.ones(2, 4, 16, 16)
    t, e = torch.zeros(2, dtype=torch.long), torch.zeros(2, 77, 8)
    said = []
    with progress.subscribed(lambda event: said.append(event.message)):
        assert torch.equal(pass_(small, t, e, None), small * 2)
    assert said == ["--cuda-graphs: the UNet's passes captured for batch 2 of 4x8x8 latents; "
                    "batches of other shapes run eager"]
    assert torch.equal(pass_(large, t, e, None), large * 2)         # not the captured shapes: eager
    assert torch.equal(pass_(small, t, e, None), small * 2)
    assert capture.captures == 1 and capture.replays == 2


@pytest.mark.parametrize("extra, needle", [
    ([], "--cuda-graphs needs a CUDA GPU"),
    (["--gradient-checkpointing", "--lora-dropout", "0.1"], "--cuda-graphs with --gradient-checkpointing needs --lora-dropout 0"),
    (["--compile"], "--cuda-graphs: not with --compile"),
    (["--gradient-accumulation", "2"], "--cuda-graphs: not with --gradient-accumulation"),
])
def test_refused_in_one_line_before_anything_is_written(extra, needle, tiny_sd1, dog_photos, tmp_path):
    if torch.cuda.is_available() and not extra:
        pytest.skip("this machine has a GPU")
    out = tmp_path / "o"
    code, _, err = run_cli("train", "--model", tiny_sd1, "--instance-dir", dog_photos, "--instance-prompt", "a sks dog",
                           "--resolution", "32", "--max-steps", "2", "--output", out, "--cuda-graphs", *extra)
    assert code != 0 and needle in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("error")]) == 1
    assert not out.exists() or not any(out.rglob("*"))


def test_the_check_names_one_process():
    cfg = build_config(None, dict(instance_dir="x", instance_prompt="a sks dog", output="o", cuda_graphs=True))
    with pytest.raises(UserError, match="--cuda-graphs runs on one process"):
        trainer_module.check_one_process_options(cfg, torch.device("cuda"), 2, False, print)


def test_a_failed_capture_stops_in_one_line_before_any_weight_is_written(capture, tiny_sd1, dog_photos, tmp_path, monkeypatch):
    def cannot(module, sample, allow_unused_input=False):
        raise RuntimeError("operation not permitted when stream is capturing\nCUDA kernel errors might be ...")
    monkeypatch.setattr(torch.cuda, "make_graphed_callables", cannot)
    with pytest.raises(UserError) as err:
        train(_config(tiny_sd1, dog_photos, tmp_path / "o", method="lora", cuda_graphs=True))
    message = str(err.value)
    assert message.startswith("--cuda-graphs: the UNet's passes could not be captured (RuntimeError: operation not permitted")
    assert "\n" not in message and message.endswith("run without --cuda-graphs")
    assert not list((tmp_path / "o").rglob("*.safetensors"))
