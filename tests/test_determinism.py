"""--deterministic: torch's strict deterministic mode for the run, restored after it, and an operation
without a deterministic path stopping the run with one line (the bit-exact resume under it is
``test_train.test_resume_continues_exactly``; on a GPU, ``benchmarks/resume_check.py``)."""
import os

import pytest
import torch

from dreambooth.errors import UserError
from dreambooth.training.callbacks import TrainingCallback
from dreambooth.training.config import build_config
from dreambooth.training.trainer import train


def _modes() -> tuple:
    return (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
            torch.utils.deterministic.fill_uninitialized_memory, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))


def _config(model, photos, output, **extra):
    return build_config(None, dict(model=str(model), instance_dir=str(photos), instance_prompt="a photo of sks dog",
                                   resolution=32, max_steps=2, output=str(output), **extra))


def test_deterministic_run_is_strict_and_restores_the_modes(tiny_sd1, dog_photos, tmp_path, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = _modes()
    seen = []

    class Look(TrainingCallback):
        def on_step_end(self, run, step):
            seen.append(_modes())

    train(_config(tiny_sd1, dog_photos, tmp_path / "on", deterministic=True), callbacks=[Look()])
    # strict (warn-only keeps torch's attention kernels nondeterministic), cuDNN without timing, a
    # fixed cuBLAS workspace, no NaN-filling of new tensors
    assert seen and all(m == (True, False, True, False, False, ":4096:8") for m in seen)
    assert _modes() == before
    seen.clear()
    train(_config(tiny_sd1, dog_photos, tmp_path / "off"), callbacks=[Look()])
    assert seen and all(m == before for m in seen)


def test_an_operation_without_a_deterministic_path_stops_with_one_line(tiny_sd1, dog_photos, tmp_path):
    before = _modes()

    class Scatter(TrainingCallback):          # put_ has no deterministic implementation, on any device
        def on_step_end(self, run, step):
            torch.zeros(3).put_(torch.tensor([0]), torch.tensor([1.0]))

    with pytest.raises(UserError) as err:
        train(_config(tiny_sd1, dog_photos, tmp_path / "o", deterministic=True), callbacks=[Scatter()])
    message = str(err.value)
    assert message.startswith("--deterministic: put_ has no deterministic implementation")
    assert "run without --deterministic" in message and "\n" not in message
    assert _modes() == before
    assert not (tmp_path / "o" / "pytorch_lora_weights.safetensors").exists()
