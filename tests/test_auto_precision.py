"""``--mixed-precision auto`` (issue 30: mixed precision that chooses well on a CPU too): bf16 where the
device multiplies it in hardware, fp16 on older GPUs, fp32 elsewhere; the run says and records what it chose."""
import json

import pytest
import torch

from dreambooth import devices, progress
from dreambooth.devices import training_precision
from dreambooth.training.config import build_config


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "no")])
def test_cpu_takes_bf16_only_with_it_in_hardware(monkeypatch, native, expected):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: native)
    assert training_precision(torch.device("cpu")) == expected
    assert training_precision(torch.device("mps")) == "no"


@pytest.mark.parametrize("bf16, fp16_allowed, expected", [(True, True, "bf16"), (False, True, "fp16"), (False, False, "no")])
def test_gpu_takes_bf16_from_ampere_on_and_fp16_before(monkeypatch, bf16, fp16_allowed, expected):
    asked = []
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: asked.append(including_emulation) or bf16)
    assert training_precision(torch.device("cuda"), fp16=fp16_allowed) == expected
    assert asked == [False]           # emulated bf16 (pre-Ampere) is slower than fp16: not chosen


@pytest.mark.parametrize("native, chosen", [(True, "bf16"), (False, "no")])
def test_a_run_says_and_records_what_auto_chose(monkeypatch, tiny_sd1, dog_photos, tmp_path, native, chosen):
    from dreambooth.training.trainer import Trainer
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: native)
    out = tmp_path / "out"
    cfg = build_config(None, dict(model=str(tiny_sd1), instance_dir=str(dog_photos), instance_prompt="a photo of sks dog",
                                  method="lora", mixed_precision="auto", resolution=32, max_steps=1, output=str(out)))
    cfg.validate()
    messages = []
    with progress.subscribed(lambda e: messages.append(e.message) if e.kind == "message" else None):
        trainer = Trainer(cfg, []).setup()
    assert f"--mixed-precision auto: {chosen} on this cpu" in messages
    assert trainer.config.mixed_precision == chosen and trainer.accelerator.mixed_precision == chosen
    # the frozen base UNet of a LoRA runs in the chosen precision
    assert trainer.pipe.unet.dtype == (torch.bfloat16 if native else torch.float32)
    trainer.fit()
    assert json.loads((out / "training_args.json").read_text())["mixed_precision"] == chosen


@pytest.mark.parametrize("name", ["sd15-full", "sd15-lora", "sd21-lora", "sdxl-lora"])
def test_gpu_presets_choose_per_device(name):
    """The presets said fp16, which a CPU refuses (the SD ones now train there; sdxl-lora's 8-bit Adam still
    needs CUDA)."""
    cfg = build_config(name, {"instance_dir": "x", "instance_prompt": "a sks dog", "output": "o"})
    cfg.validate()
    assert cfg.mixed_precision == "auto"


@pytest.mark.parametrize("device, native_bf16, suggested", [("cuda", True, "bf16"), ("cuda", False, "fp16"),
                                                            ("cpu", False, "bf16"), ("cpu", True, "bf16")])
def test_preflight_suggests_the_precision_the_device_runs(monkeypatch, device, native_bf16, suggested):
    """An fp32 run that does not fit is offered the low precision this device runs well (a CPU: bf16,
    whose memory saving holds even where it is emulated)."""
    from test_preflight import config, mid_sizes

    from dreambooth.training import preflight as pf
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native_bf16)
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: native_bf16)
    cfg = config(gradient_checkpointing=True, use_8bit_adam=True)
    low = pf.estimate(mid_sizes(), cfg.replace(mixed_precision=suggested), device).total
    flags = [f for f, _ in pf.fixes(mid_sizes(), cfg, device, low, limit=10)]
    assert f"--mixed-precision {suggested}" in flags
    assert not any("--mixed-precision" in f and suggested not in f for f in flags)


def test_preflight_never_combines_fp16_with_a_fused_backward_pass(monkeypatch):
    from test_preflight import config, mid_sizes

    from dreambooth.training import preflight as pf
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    sizes, cfg = mid_sizes(), config()
    full = pf.estimate(sizes, cfg, "cuda").total
    combined = 0
    for share in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
        for flags, est in pf.fixes(sizes, cfg, "cuda", int(full * share), limit=10):
            assert not ("--fused-backward-pass" in flags and "fp16" in flags), flags
            combined += " " in flags.replace("--mixed-precision ", "").replace("--batch-size ", "").replace("--resolution ", "")
    assert combined      # some budgets needed several changes together


@pytest.mark.parametrize("fused, chosen", [(False, "fp16"), (True, "no")])
def test_auto_follows_the_device_the_run_trains_on(monkeypatch, fused, chosen):
    """The trainer names the device accelerate gets (CUDA, else the CPU, also on a Mac with MPS)."""
    from dreambooth.training.trainables import choose_precision
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    cfg = build_config(None, {"instance_dir": "x", "instance_prompt": "a sks dog", "output": "o",
                              "mixed_precision": "auto", "fused_backward_pass": fused})
    messages = []
    with progress.subscribed(lambda e: messages.append(e.message) if e.kind == "message" else None):
        assert choose_precision(cfg, torch.device("cuda")).mixed_precision == chosen
        assert choose_precision(cfg.replace(mixed_precision="bf16"), torch.device("cuda")).mixed_precision == "bf16"
    assert messages == [f"--mixed-precision auto: {chosen} on this cuda"]
