"""The memory preflight: the estimate moves the right way with each setting, matches the measured
peaks it was calibrated on, is printed before training, and a run that cannot fit stops with one
line naming a fix before anything is written (``--force`` goes on)."""
from __future__ import annotations

import dataclasses

import pytest

from conftest import run_cli
from dreambooth import progress
from dreambooth.training import preflight as pf
from dreambooth.training.config import TrainConfig

# Published UNet layouts (configs only; no weights involved).
SD15_UNET = dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
MID_UNET = dict(SD15_UNET, block_out_channels=(128, 256, 512, 512))
SDXL_UNET = dict(block_out_channels=(320, 640, 1280), layers_per_block=2, transformer_layers_per_block=(1, 2, 10),
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))


def sizes_of(unet_config: dict, unet: int, base_channels: int, lora_per_rank: int) -> pf.ModelSizes:
    """A benchmarks/train_step.py model (CLIP-L with its test tokenizer's small vocabulary, the SD VAE)
    as model_sizes reads it, with the UNet given."""
    layout, largest = pf.unet_layout(unet_config)
    return pf.ModelSizes(family="sd1", unet=unet, text_encoders=(85_425_408,), vae=83_653_863,
                         unet_layout=layout, unet_largest_block=largest, unet_base_channels=base_channels,
                         lora_per_rank=lora_per_rank, text_lora_per_rank=(73_728,), text_layers=((12, 768),),
                         vae_fp32=True, vae_channels=128)


def mid_sizes() -> pf.ModelSizes:
    """The mid-size SD1 of benchmarks/train_step.py (build_mid), its convolution weights as counted there."""
    return dataclasses.replace(sizes_of(MID_UNET, 142_236_036, 128, 94_464), conv_weights=(94_249_984, 81_490_768))


def sd15_sizes() -> pf.ModelSizes:
    """Full-size SD1.5 (benchmarks/train_step.py's build_full)."""
    return sizes_of(SD15_UNET, 859_520_964, 320, 199_296)


def config(**changes) -> TrainConfig:
    base = dict(model="m", instance_dir="i", instance_prompt="a sks dog", class_prompt="a dog", output="o",
                resolution=512, method="full", train_text_encoder=True)
    return TrainConfig(**{**base, **changes}).resolve_defaults(512)


def test_layout_counts_what_enters_each_block():
    # elements per latent pixel entering the resnets and transformer layers, as autograd's hooks saw
    # them in diffusers' own UNets (benchmarks/preflight_check.py --layouts)
    assert pf.unet_layout(SD15_UNET)[0] == (4920.0, 2820.0, 2820.0)
    assert pf.unet_layout(MID_UNET)[0] == (1968.0, 1128.0, 1128.0)
    half_xl = dict(SDXL_UNET, block_out_channels=(160, 320, 640))
    assert pf.unet_layout(half_xl)[0] == (2440.0, 3200.0, 640.0)


def test_class_images_count_only_when_they_are_to_be_made():
    sizes = mid_sizes()
    made = pf.estimate(sizes, config(resolution=1024, method="lora", gradient_checkpointing=True, mixed_precision="fp16"), "cpu")
    there = pf.estimate(sizes, config(resolution=1024, method="lora", gradient_checkpointing=True, mixed_precision="fp16"), "cpu",
                        making_class_images=False)
    assert made.total > there.total          # at 1024 px the VAE (fp32 under fp16) decoding a class image is the peak


def test_estimate_moves_the_right_way_with_each_setting():
    sizes = mid_sizes()

    def total(**changes) -> int:
        return pf.estimate(sizes, config(**changes), "cpu").total

    base = total()
    assert total(resolution=768) > base > total(resolution=256)
    assert total(batch_size=2) > base
    assert total(class_prompt=None) < base                     # prior preservation doubles the batch
    assert total(gradient_checkpointing=True) < base
    assert total(method="lora") < base
    assert total(method="lora", rank=64) > total(method="lora", rank=4)
    assert total(train_text_encoder=False) < base
    assert total(mixed_precision="bf16", method="lora") < total(method="lora")
    assert pf.estimate(sizes, config(use_8bit_adam=True), "cuda").optimizer < pf.estimate(sizes, config(), "cuda").optimizer
    parts = pf.estimate(sizes, config(), "cpu")
    assert parts.optimizer == 2 * parts.gradients == 8 * (sizes.unet + sizes.text_encoders[0])


LORA = dict(method="lora", train_text_encoder=False)


@pytest.mark.parametrize("changes, measured_gib", [
    (dict(LORA), 1.89), (dict(LORA, mixed_precision="bf16"), 1.59), (dict(), 4.73), (dict(mixed_precision="bf16"), 4.73),
    (dict(LORA, resolution=512), 5.07), (dict(LORA, resolution=512, mixed_precision="bf16"), 2.95),
    (dict(LORA, resolution=512, gradient_checkpointing=True), 3.25), (dict(resolution=512), 5.80),
    (dict(resolution=512, mixed_precision="bf16"), 5.37), (dict(resolution=512, gradient_checkpointing=True), 5.02),
])
def test_estimate_is_within_a_quarter_of_the_measured_peak(changes, measured_gib):
    # peak RSS of `dreambooth train` on the mid-size SD1 (full runs train the text encoder), prior
    # preservation, 128 px unless said, 2 CPUs (benchmarks/preflight_check.py; docs/benchmarks.md)
    estimated = pf.estimate(mid_sizes(), config(**{"resolution": 128, **changes}), "cpu").total / pf.GiB
    assert 0.75 <= estimated / measured_gib <= 1.25, (estimated, measured_gib)


def test_estimate_holds_on_full_size_sd15():
    # SD1.5 LoRA fp32, 512 px, prior preservation: 10.14 GiB measured (benchmarks/preflight_check.py --sd15)
    estimated = pf.estimate(sd15_sizes(), config(**LORA), "cpu").total / pf.GiB
    assert 0.75 <= estimated / 10.14 <= 1.25, estimated


def tiny_run(tiny_sd1, photos, out, *extra):
    return run_cli("train", "--model", tiny_sd1, "--instance-dir", photos, "--instance-prompt", "a photo of sks dog",
                   "--class-prompt", "a photo of dog", "--num-class-images", "1", "--class-steps", "1",
                   "--method", "full", "--resolution", "32", "--max-steps", "1", "--output", out, *extra)


@pytest.fixture
def tight_memory(monkeypatch):
    """Free memory one byte short of what the run needs: the preflight must refuse it."""
    seen = {}

    def estimate(sizes, cfg, device="cpu", making_class_images=True, shards=1, processes=None, class_parking=False,
                 validation_parking=False):
        result = real(sizes, cfg, device, making_class_images, shards, processes, class_parking, validation_parking)
        seen.setdefault("first", result.total)     # the run's own estimate comes first
        return result

    real = pf.estimate
    monkeypatch.setattr(pf, "estimate", estimate)
    monkeypatch.setattr(pf, "available_memory", lambda device, held=None, sharers=1: seen["first"] - 1)
    return seen


def test_a_run_that_cannot_fit_stops_with_one_line_naming_the_fix(tiny_sd1, dog_photos, tmp_path, tight_memory):
    out = tmp_path / "out"
    code, _, err = tiny_run(tiny_sd1, dog_photos, out)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: memory preflight: this run needs about")
    assert "--gradient-checkpointing (about" in lines[0] and "--force" in lines[0]
    assert not out.exists()                  # no class images, no folder: nothing was written


def test_force_starts_anyway_and_the_estimate_is_printed(tiny_sd1, dog_photos, tmp_path, tight_memory):
    out = tmp_path / "out"
    messages = []
    with progress.subscribed(lambda e: messages.append(e.message) if e.kind == "message" else None):
        code, _, err = tiny_run(tiny_sd1, dog_photos, out, "--force")
    assert code == 0, err
    assert (out / "model_index.json").is_file()
    shown = [m for m in messages if m.startswith("memory preflight:")]
    assert len(shown) == 1
    assert f"about {pf.gib(tight_memory['first'])} GiB peak (weights" in shown[0]
    assert "free on cpu; going on (--force)" in shown[0]


def test_the_estimate_is_printed_before_training(tiny_sd1, dog_photos, tmp_path):
    events = []
    with progress.subscribed(events.append):
        code, _, err = tiny_run(tiny_sd1, dog_photos, tmp_path / "out")
    assert code == 0, err
    kinds = [(e.kind, e.task, e.message) for e in events]
    shown = [i for i, (kind, _, text) in enumerate(kinds) if kind == "message" and text.startswith("memory preflight: about")]
    assert len(shown) == 1 and "GiB free on cpu" in kinds[shown[0]][2]
    first_task = next(i for i, (kind, _, _) in enumerate(kinds) if kind == "start")
    assert shown[0] < first_task            # before the class images and the training loop


def test_sharding_splits_the_trained_weights_their_gradients_and_adam_state():
    """FSDP over N processes: each holds 1/N of the trained weights, gradients and AdamW state, and
    the whole weights before they are sharded (loading, class images)."""
    sizes = mid_sizes()
    cfg = config(train_text_encoder=False, mixed_precision="bf16", gradient_checkpointing=True)
    one, four = pf.estimate(sizes, cfg, "cuda", False), pf.estimate(sizes, cfg, "cuda", False, shards=4)
    assert four.gradients == one.gradients // 4 and four.optimizer == one.optimizer // 4
    assert one.weights - four.weights == sizes.unet * 4 * 3 // 4
    many = pf.estimate(sizes, cfg, "cuda", False, shards=10_000)
    assert many.total >= one.weights + one.runtime
    assert pf.estimate(sizes, cfg.replace(method="lora"), "cuda", False, shards=4) == \
        pf.estimate(sizes, cfg.replace(method="lora"), "cuda", False)      # LoRA is not sharded


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_combined_fixes_fit_and_carry_no_change_they_do_not_need(device):
    """When no single change fits, the suggestion is a combination that fits, reaches the highest
    resolution any does, and from which no change can be dropped at that resolution."""
    sizes, cfg = sd15_sizes(), config()
    full = pf.estimate(sizes, cfg, device).total
    combined = 0
    for share in (0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45):
        available = int(full * share)
        found = pf.fixes(sizes, cfg, device, available, limit=10)
        if not found or len(found[0][0].split("--")) <= 2:
            continue
        combined += 1
        (flags, est), = found
        assert est.total <= available, flags
        words = flags.split()
        res = int(words[words.index("--resolution") + 1]) if "--resolution" in words else cfg.resolution
        parts = ["--" + p.strip() for p in flags.split("--")[1:] if not p.startswith("resolution")]
        for dropped in parts:
            changes = dict(_change(p) for p in parts if p != dropped)
            assert pf.estimate(sizes, cfg.replace(**changes, resolution=res), device).total > available, (flags, dropped)
    assert combined >= 2


def _change(flag: str) -> tuple[str, object]:
    name, _, value = flag[2:].partition(" ")
    key = name.replace("-", "_")
    return key, (value if key in ("mixed_precision", "method") else True)


def test_with_cuda_graphs_and_lora_dropout_checkpointing_is_suggested_without_the_graphs():
    """A graph cannot record a recomputed dropout (--cuda-graphs refuses checkpointing with --lora-dropout):
    there, the suggestion that turns checkpointing on turns the graphs off, and names a run the settings
    accept. Without dropout, checkpointing goes with the graphs."""
    sizes = sd15_sizes()
    for dropout, suggested in ((0.1, "--gradient-checkpointing --no-cuda-graphs"), (0.0, "--gradient-checkpointing")):
        cfg = config(method="lora", train_text_encoder=False, mixed_precision="bf16", cuda_graphs=True, lora_dropout=dropout)
        with_checkpointing = cfg.replace(gradient_checkpointing=True)
        available = pf.estimate(sizes, with_checkpointing, "cuda").total                     # checkpointing fits
        assert available < pf.estimate(sizes, cfg, "cuda").total
        found = dict(pf.fixes(sizes, cfg, "cuda", available, limit=10))
        assert suggested in found and not any(f.startswith("--gradient-checkpointing") and f != suggested for f in found)
        changes = {"gradient_checkpointing": True, **({"cuda_graphs": False} if "--no-cuda-graphs" in suggested else {})}
        cfg.replace(**changes).validate()


def test_several_processes_count_fp32_gradients_and_are_not_offered_one_process_settings():
    """One process of a bf16 full run on a CPU trains through bf16 copies (bf16_copies): half the gradient
    bytes. DDP's processes keep fp32 gradients, and --fused-backward-pass (one process) is not for them."""
    sizes, cfg = mid_sizes(), config(resolution=128, mixed_precision="bf16")
    alone, ddp = pf.estimate(sizes, cfg, "cpu"), pf.estimate(sizes, cfg, "cpu", processes=2)
    assert ddp.gradients == 2 * alone.gradients > 0
    assert pf.estimate(sizes, cfg.replace(gradient_accumulation=2), "cpu").gradients == ddp.gradients
    enough = pf.estimate(sizes, cfg.replace(fused_backward_pass=True), "cpu").total
    assert "--fused-backward-pass" in dict(pf.fixes(sizes, cfg, "cpu", enough, limit=10))
    assert "--fused-backward-pass" not in dict(pf.fixes(sizes, cfg, "cpu", enough, limit=10, processes=2))


def test_on_a_gpu_frozen_text_encoders_wait_on_the_cpu_during_the_steps():
    """The steps' peak leaves out the frozen text encoders the trainer parks on the CPU, and the run's
    peak is at least setup's, when every part is on the device; a trained encoder stays, and on the
    CPU nothing moves. Checkpointing's share of the activations is the smaller one on a GPU."""
    sizes = sd15_sizes()
    lora = config(method="lora", train_text_encoder=False, mixed_precision="bf16")
    gpu, cpu = pf.estimate(sizes, lora, "cuda", False), pf.estimate(sizes, lora, "cpu", False)
    assert gpu.parked == sum(sizes.text_encoders) * 2 > 0 and cpu.parked == 0
    assert gpu.total == gpu.weights - gpu.parked + gpu.gradients + gpu.optimizer + gpu.activations + gpu.runtime
    assert "of them on the CPU during the steps" in gpu.describe() and "CPU during" not in cpu.describe()
    assert pf.estimate(sizes, lora.replace(train_text_encoder=True), "cuda", False).parked == 0
    tiny = pf.MemoryEstimate(weights=10, gradients=0, optimizer=0, activations=1, runtime=2, device="cuda", parked=5)
    assert tiny.total == 12                 # setup: all 10 on the device, more than the steps' 6
    checkpointed = pf.estimate(sizes, lora.replace(gradient_checkpointing=True), "cuda", False)
    assert checkpointed.activations < gpu.activations


def test_class_images_on_a_cpu_with_amx_hold_channels_last_copies(monkeypatch):
    """Sampling in bf16 on a CPU with AMX runs on channels-last copies of the UNet's and the VAE's
    convolution weights (models.conv_layout): while class images are made, both layouts are held."""
    sizes = dataclasses.replace(mid_sizes(), conv_weights=(100_000_000, 30_000_000))
    lora = config(method="lora", train_text_encoder=False, mixed_precision="bf16", resolution=128)

    def making(amx: bool, cfg=lora, device="cpu"):
        monkeypatch.setattr(pf.conv_layout, "cpu_has_amx", lambda: amx)
        return pf.estimate(sizes, cfg, device, making_class_images=True)
    copies = 100_000_000 * 2 + 30_000_000 * 2          # bf16, the LoRA's frozen UNet and the VAE
    assert making(True).activations >= copies > making(False).activations
    assert making(True, lora.replace(mixed_precision="no")).total == making(False, lora.replace(mixed_precision="no")).total
    assert making(True, device="cuda").total == making(False, device="cuda").total


def sdxl_sizes() -> pf.ModelSizes:
    """SDXL base: its UNet's layout and parameter counts, CLIP-L and bigG, the SDXL VAE (fp32 under fp16)."""
    return dataclasses.replace(sizes_of(SDXL_UNET, 2_567_463_684, 320, 1_400_000), family="sdxl",
                               text_encoders=(123_060_480, 694_659_840), text_layers=((12, 768), (32, 1280)))


def test_class_images_that_would_not_fit_on_a_gpu_are_made_with_the_parts_taking_turns(monkeypatch):
    """SDXL LoRA in bf16 at 1024 px: making class images with every part on the GPU (6.6 GiB of weights
    and the fp32 VAE decoding at full size, about 4 GiB) sets the run's peak, above its steps'. Where
    that would not fit, the preflight has the text encoders wait while the UNet samples and the UNet
    while the VAE decodes, instead of refusing; where it fits, or on the CPU, nothing moves."""
    sizes = sdxl_sizes()
    cfg = config(method="lora", train_text_encoder=False, mixed_precision="bf16", resolution=1024,
                 gradient_checkpointing=True)
    resident = pf.estimate(sizes, cfg, "cuda")
    parked = pf.estimate(sizes, cfg, "cuda", class_parking=True)
    steps = pf.estimate(sizes, cfg, "cuda", making_class_images=False)
    assert resident.total > parked.total == steps.total      # the class images no longer set the peak
    decoding = 8 * 128 * 1024 * 1024 * 2                      # the VAE in bf16 at 1024 px (2.4 GiB measured on a CPU)
    assert resident.total >= resident.weights + decoding      # every part on the GPU, the frozen encoders too
    # under fp32 too (the pipeline decodes inside its own call: the UNet leaves as the decoder starts)
    fp32 = cfg.replace(mixed_precision="no", class_batch_size=1)
    assert pf.estimate(sizes, fp32, "cuda", class_parking=True).total == pf.estimate(
        sizes, fp32, "cuda", making_class_images=False).total < pf.estimate(sizes, fp32, "cuda").total

    monkeypatch.setattr(pf, "model_sizes", lambda pipe, family, clip_skip: sizes)
    monkeypatch.setattr(pf, "existing_class_images", lambda folder: [])

    def preflight(available: int, device: str = "cuda", force: bool = False) -> pf.Preflight:
        monkeypatch.setattr(pf, "available_memory", lambda d, held=None, sharers=1: available)
        return pf.preflight(None, None, cfg.replace(force=force), device)
    tight = preflight((resident.total + parked.total) // 2)
    assert tight.class_parking and tight.estimate == parked
    roomy = preflight(resident.total)
    assert not roomy.class_parking and roomy.estimate == resident
    assert not preflight(parked.total, "cpu", force=True).class_parking       # on the CPU nothing moves
    with pytest.raises(pf.UserError, match="memory preflight"):
        preflight(parked.total - 1)                          # taking turns is not enough: refused
    cfg = cfg.replace(prior_preservation=False)              # no class images: nothing to take turns for
    assert not preflight(steps.total - 1, force=True).class_parking


def test_validation_that_would_not_fit_on_a_gpu_is_made_with_the_parts_taking_turns(monkeypatch):
    """SDXL LoRA in bf16 at 1024 px with validation: every part back on the GPU beside the optimizer's
    state, and the VAE decoding at full size, would pass the steps' peak (an 8 GB card skipped its
    validation images). Where that would not fit, validation takes turns as class images do; not where
    --cuda-graphs replays the UNet's weights at their addresses, nor with several processes."""
    sizes = sdxl_sizes()
    cfg = config(method="lora", train_text_encoder=False, mixed_precision="bf16", resolution=1024,
                 gradient_checkpointing=True, prior_preservation=False, validate_every=100)
    steps = pf.estimate(sizes, cfg.replace(validate_every=0), "cuda")
    resident = pf.estimate(sizes, cfg, "cuda")
    parked = pf.estimate(sizes, cfg, "cuda", validation_parking=True)
    assert resident.total > parked.total == steps.total
    decoding = 8 * 128 * 1024 * 1024 * 2
    assert resident.total >= resident.weights + resident.optimizer + decoding

    monkeypatch.setattr(pf, "model_sizes", lambda pipe, family, clip_skip: sizes)

    def preflight(available: int, processes: int = 1, **changes) -> pf.Preflight:
        monkeypatch.setattr(pf, "available_memory", lambda d, held=None, sharers=1: available)
        return pf.preflight(None, None, cfg.replace(**changes), "cuda", processes=processes)
    tight = preflight((resident.total + parked.total) // 2)
    assert tight.validation_parking and not tight.class_parking and tight.estimate == parked
    assert not preflight(resident.total).validation_parking
    for pinned in ({"cuda_graphs": True}, {"processes": 2}):
        assert not preflight(parked.total, force=True, **pinned).validation_parking
    # where validation cannot take turns, the fix named is validation's
    with pytest.raises(pf.UserError, match="--validate-every 0"):
        preflight(steps.total, cuda_graphs=True)


def test_free_gpu_memory_is_what_this_process_may_take(monkeypatch):
    """Free plus what this process holds, within the share of the card torch allows it (a GPU shared
    with set_per_process_memory_fraction, or a benchmark acting as a smaller card)."""
    import torch

    from dreambooth import devices
    GB = 10 ** 9
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (60 * GB, 80 * GB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 5 * GB)
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda device: 1.0)
    assert devices.available_memory("cuda") == 65 * GB
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda device: 0.1)
    assert devices.available_memory("cuda") == 8 * GB
    # in a server the process also holds its generation model (3 GB of the 4 allocated): not the run's
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda device: 1.0)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 4 * GB)
    assert devices.available_memory("cuda", held=1 * GB) == 62 * GB       # free, the cached 1, the run's 1


def test_the_free_memory_asked_for_counts_only_the_runs_own_model(tiny_sd1, monkeypatch):
    """What the process holds besides the run (a server's generation model) is not the run's: the
    preflight tells the device's free memory how much of what is held is the run's own model."""
    from dreambooth.models.families import adapter_for
    from dreambooth.models.loading import load_pipeline
    pipe = load_pipeline(str(tiny_sd1))
    modules = [pipe.unet, pipe.vae, pipe.text_encoder]
    own = sum(t.numel() * t.element_size() for m in modules for t in (*m.parameters(), *m.buffers()))
    asked = []
    monkeypatch.setattr(pf, "available_memory", lambda device, held=None, sharers=1: asked.append(held))
    pf.preflight(pipe, adapter_for(pipe), config(method="lora", resolution=32, prior_preservation=False), "cpu")
    assert asked == [own] and pf._held_by(pipe, "cuda") == 0


def test_free_host_memory_is_shared_by_a_runs_processes_and_bounded_by_a_container(monkeypatch):
    from dreambooth import devices
    alone = devices.available_memory("cpu")
    held = devices._meminfo_kib("/proc/self/status", "RssAnon") * 1024
    two = devices.available_memory("cpu", sharers=2)
    assert abs((two - held) - (alone - held) / 2) < 256 * 2**20       # each of two processes: half of what is free
    limits = {"/sys/fs/cgroup/memory.max": 3 * 2**30, "/sys/fs/cgroup/memory.current": 2**30}
    monkeypatch.setattr(devices, "_read_int", lambda path: limits.get(path))
    assert devices.cgroup_free_kib() == 2**30 // 1024 * 2
    assert devices.available_memory("cpu") <= 2 * 2**30 + held + 2**20   # a container's 2 GiB left, not the machine's


def test_a_launchers_other_mixed_precision_is_said(tiny_sd1, dog_photos, tmp_path, monkeypatch):
    from conftest import run_cli
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    code, _, err = run_cli("train", "--model", tiny_sd1, "--instance-dir", dog_photos, "--instance-prompt",
                           "a photo of sks dog", "--resolution", "32", "--max-steps", "1", "--mixed-precision", "no",
                           "--output", tmp_path / "o")
    assert code == 0 and "accelerate launch's mixed precision bf16 is not used: this run trains in no" in err, err
