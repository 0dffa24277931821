"""Sharded training with FSDP2 (issue 30, item 6: SDXL full fine-tuning on GPUs DDP does not fit).

Real runs of ``dreambooth train`` on the toy model, two processes over gloo, started with the shipped
FSDP config (``configs/accelerate/fsdp.yaml``). accelerate runs FSDP on GPUs only: on the CPU it
ignores an FSDP config and runs DDP. torch's FSDP2 itself shards over gloo on the CPU, so the runs
go through ``FSDP_ON_CPU``, which lifts that one gate in accelerate's state; everything after it
(accelerate's FSDP2 preparation, its clipping, torch's sharded tensors and state dicts, the trainer)
is what runs on GPUs.

* each process holds half of the UNet's weights, and one process writes one whole output;
* FSDP trains what DDP trains: per-step losses within 1e-5 relative, weights within 1e-4
  (measured: 2.3e-7 on the weights, the order of float sums);
* killed (SIGKILL) after a checkpoint and resumed under FSDP, it ends bit for bit where the
  uninterrupted run ends; its checkpoint resumes without sharding, and a DDP checkpoint under FSDP;
* what FSDP does not take (LoRA, the text encoder, validation...), FSDP version 1 and DeepSpeed are
  refused in one line before anything is written.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from dreambooth.models import TOY_MODEL_DIR
from dreambooth.training.config import PRESET_DIR
from test_multiprocess import DIE, LOSS_RTOL, WEIGHT_ATOL, losses, photos, train, weights  # noqa: F401 (photos: fixture)

pytestmark = pytest.mark.skipif(not (TOY_MODEL_DIR / "model_index.json").exists(),
                                reason="the toy model's weights are not in this checkout")

FSDP_CONFIG = PRESET_DIR / "accelerate" / "fsdp.yaml"        # configs/accelerate/fsdp.yaml

# accelerate's state taking an FSDP config on the CPU as it does on GPUs, then DIE's dreambooth train
# (with DIE_AT_STEP set, process 0 kills itself with SIGKILL right after that step).
FSDP_ON_CPU = """
import accelerate.state as state
from accelerate.utils import DistributedType

original = state.AcceleratorState.__init__

def init(self, *args, fsdp_plugin=None, **kwargs):
    original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin
        if self._mixed_precision != "no":
            fsdp_plugin.set_mixed_precision(self._mixed_precision)

state.AcceleratorState.__init__ = init
""" + DIE

# Validation, small: 2 prompts x 2 seeds, 4 steps, at steps 0, 4 and 8.
VALIDATION = ["--validate-every", "4", "--validation-steps", "4", "--validation-seeds", "0", "--validation-seeds", "1",
              "--validation-prompts", "a sks square", "--validation-prompts", "a square"]

# The toy preset's full fine-tuning with prior preservation, of the UNet alone (FSDP shards one model).
TOY_UNET = ["--model", "toy", "--instance-prompt", "a sks square", "--class-prompt", "a square",
            "--no-train-text-encoder", "--identifier-lr", "0", "--num-class-images", "4", "--class-steps", "2",
            "--class-batch-size", "2", "--max-steps", "8", "--checkpoint-every", "3"]


def sharded_train(tmp, *args, **kwargs):
    script = tmp / "fsdp_on_cpu.py"
    script.write_text(FSDP_ON_CPU)
    return train(tmp, 2, *args, script=script, config=FSDP_CONFIG, **kwargs)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, photos):
    """Two FSDP processes x batch 1, uninterrupted."""
    tmp = tmp_path_factory.mktemp("fsdp")
    run = sharded_train(tmp, *TOY_UNET, *VALIDATION, "--batch-size", "1", "--instance-dir", photos,
                        "--output", tmp / "out")
    return tmp / "out", run.stdout + run.stderr


@pytest.fixture(scope="module")
def unsharded(tmp_path_factory, photos, sharded):
    """The same on two DDP processes (the class images the FSDP run made)."""
    tmp = tmp_path_factory.mktemp("ddp")
    train(tmp, 2, *TOY_UNET, *VALIDATION, "--batch-size", "1", "--instance-dir", photos,
          "--class-dir", sharded[0] / "class_images", "--output", tmp / "out")
    return tmp / "out"


def test_each_process_holds_half_the_unet_and_one_writes_the_output(sharded):
    out, log = sharded
    unet = sum(v.numel() for k, v in weights(TOY_MODEL_DIR).items() if k.startswith("unet."))
    held = {}
    for line in log.splitlines():
        if line.startswith("FSDP: process "):
            words = line.split()
            held[int(words[2])] = (int(words[6].replace(",", "")), int(words[9].replace(",", "")))
    assert sorted(held) == [0, 1], log
    assert all(total == unet for _, total in held.values())
    assert sum(h for h, _ in held.values()) == unet and all(h < 0.6 * unet for h, _ in held.values())
    assert log.count("trained 8 steps") == 1, log
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "class_images", "model_index.json", "scheduler",
                                                     "text_encoder", "tokenizer", "training_args.json", "unet",
                                                     "vae", "validation"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-000006", "checkpoint-000008"]
    # whole weights in the output and the checkpoints, the trained UNet's and the base's frozen rest
    base, trained = weights(TOY_MODEL_DIR), weights(out)
    assert base.keys() == trained.keys() and all(base[k].shape == trained[k].shape for k in base)
    assert any(not torch.equal(base[k], trained[k]) for k in base if k.startswith("unet."))
    assert all(torch.equal(base[k], trained[k]) for k in base if not k.startswith("unet."))
    from safetensors.torch import load_file
    saved = load_file(str(out / "checkpoints" / "checkpoint-000006" / "trainable.safetensors"))
    assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in base.items() if k.startswith("unet.")}


def test_fsdp_trains_what_ddp_trains(sharded, unsharded):
    a, b = losses(sharded[0]), losses(unsharded)
    assert len(a) == len(b) == 8 and np.allclose(a, b, rtol=LOSS_RTOL, atol=0), (a, b)
    wa, wb = weights(sharded[0]), weights(unsharded)
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert worst < WEIGHT_ATOL, worst


def test_fsdp_validates_as_ddp_does(sharded, unsharded):
    """Every process samples in step (a sharded UNet needs them all); the first writes what DDP's writes."""
    def images(out, step):
        folder = out / "validation" / f"step-{step:06d}"
        return {p.name: np.asarray(Image.open(p), dtype=np.int16) for p in sorted(folder.glob("*.png"))}
    for step in (0, 4, 8):
        a, b = images(sharded[0], step), images(unsharded, step)
        assert a and a.keys() == b.keys(), (step, sorted(a), sorted(b))
        worst = max(np.abs(a[k] - b[k]).max() for k in a)
        assert worst == 0 if step == 0 else worst <= 2, (step, worst)     # the same weights at step 0


def test_keep_best_under_fsdp_keeps_what_ddp_keeps(sharded, photos, tmp_path_factory):
    """The first process chooses the best step; every process takes part in gathering its weights."""
    from dreambooth.testing.eval_models import save_tiny_eval_models
    from dreambooth.training.validation import best_checkpoint
    dino, clip = save_tiny_eval_models(tmp_path_factory.mktemp("eval-models"))
    common = [*TOY_UNET, *VALIDATION, "--keep-best", "--dino-model", dino, "--clip-model", clip, "--batch-size", "1",
              "--instance-dir", photos, "--class-dir", sharded[0] / "class_images"]
    tmp = tmp_path_factory.mktemp("keep-best")
    sharded_train(tmp, *common, "--output", tmp / "fsdp")
    train(tmp, 2, *common, "--output", tmp / "ddp")
    best = [json.loads((tmp / o / "validation" / "best.json").read_text()) for o in ("fsdp", "ddp")]
    assert best[0]["step"] == best[1]["step"] in (4, 8), best
    kept = [best_checkpoint(tmp / o) for o in ("fsdp", "ddp")]
    a, b = weights(kept[0]), weights(kept[1])
    assert a.keys() == b.keys() and any(k.startswith("unet.") for k in a)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < WEIGHT_ATOL
    out = weights(tmp / "fsdp")                      # and the output holds the kept weights
    assert all(torch.equal(out[k], a[k]) for k in a)


def test_fsdp_killed_and_resumed_ends_bit_for_bit(sharded, photos, tmp_path):
    straight, _ = sharded
    out = tmp_path / "out"
    common = [*TOY_UNET, "--batch-size", "1", "--instance-dir", photos, "--class-dir", straight / "class_images",
              "--output", out]
    killed = sharded_train(tmp_path, *common, env={"DIE_AT_STEP": "5"}, check=False)
    assert killed.returncode != 0
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["checkpoint-000003"]
    resumed = sharded_train(tmp_path, *common, "--resume", "latest")
    assert "resumed from" in resumed.stdout + resumed.stderr
    assert losses(out) == losses(straight)
    a, b = weights(straight), weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("direction", ["fsdp checkpoint, one plain process", "ddp checkpoint, fsdp"])
def test_checkpoints_resume_across_fsdp_and_ddp(sharded, unsharded, photos, tmp_path, direction):
    """Under FSDP the optimizer state is stored by weight name, without it numbered: each resumes the
    other (one process x batch 2 draws what two x batch 1 draw, so it ends close to the same place)."""
    source = sharded[0] if direction.startswith("fsdp") else unsharded
    out = tmp_path / "out"
    shutil.copytree(source / "checkpoints" / "checkpoint-000006", out / "checkpoints" / "checkpoint-000006")
    common = [*TOY_UNET, "--instance-dir", photos, "--class-dir", sharded[0] / "class_images", "--output", out,
              "--resume", "latest"]
    if direction.startswith("fsdp"):
        train(tmp_path, 1, *common, "--batch-size", "2")
    else:
        sharded_train(tmp_path, *common, "--batch-size", "1")
    got, expected = losses(out), losses(sharded[0])
    assert got[:6] == losses(source)[:6]
    assert np.allclose(got[6:], expected[6:], rtol=1e-4, atol=0), (got, expected)
    wa, wb = weights(sharded[0]), weights(out)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < WEIGHT_ATOL


def test_a_damaged_optimizer_state_stops_every_process_with_one_line(sharded, photos, tmp_path):
    """Under FSDP the first process alone reads the optimizer state: its failure must reach the
    others, or they would wait for its tensors for ever. (Every process finds the file cut short before
    loading, and the first says it for all.)"""
    out = tmp_path / "out"
    ckpt = out / "checkpoints" / "checkpoint-000006"
    shutil.copytree(sharded[0] / "checkpoints" / "checkpoint-000006", ckpt)
    (ckpt / "manifest.json").unlink()                 # an older checkpoint: no checksums to catch it first
    data = (ckpt / "optimizer.pt").read_bytes()
    (ckpt / "optimizer.pt").write_bytes(data[: len(data) // 2])
    run = sharded_train(tmp_path, *TOY_UNET, "--batch-size", "1", "--instance-dir", photos, "--class-dir",
                        sharded[0] / "class_images", "--output", out, "--resume", ckpt, check=False)
    errors = [ln for ln in (run.stdout + run.stderr).splitlines() if ln.startswith("error:")]
    assert run.returncode != 0 and len(errors) == 1, run.stdout[-2000:] + run.stderr[-2000:]   # every process's, said once
    assert all("damaged checkpoint" in ln and "Traceback" not in ln for ln in errors), errors


def test_without_a_gpu_an_fsdp_launch_says_it_is_not_sharded(sharded, photos, tmp_path):
    """A user's own launch, without FSDP_ON_CPU: accelerate runs DDP on the CPU, and the run says so."""
    run = train(tmp_path, 2, *TOY_UNET, "--batch-size", "1", "--max-steps", "2", "--instance-dir", photos,
                "--class-dir", sharded[0] / "class_images", "--output", tmp_path / "out", config=FSDP_CONFIG)
    log = run.stdout + run.stderr
    assert "accelerate launch with FSDP: accelerate shards on GPUs only, so on cpu this run is not sharded" in log
    assert "FSDP: process" not in log and "trained 2 steps" in log


# ----- what FSDP does not take: one line before anything is written ---------------------------------

@pytest.mark.parametrize("change, named", [
    ({"method": "lora"}, "--method lora"),
    ({"train_text_encoder": True}, "--train-text-encoder"),
    ({"identifier_lr": 1e-3}, "--identifier-lr"),
    ({"use_8bit_adam": True}, "--use-8bit-adam"),
    ({"fused_backward_pass": True}, "--fused-backward-pass"),
])
def test_what_fsdp_does_not_take_is_refused_in_one_line(photos, tmp_path, monkeypatch, change, named):
    from dreambooth.errors import UserError
    from dreambooth.training.config import build_config
    from dreambooth.training.trainer import Trainer
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    base = dict(model="toy", method="full", instance_dir=str(photos), instance_prompt="a sks square",
                train_text_encoder=False, identifier_lr=0.0, output=str(tmp_path / "out"))
    with pytest.raises(UserError, match=f"^{named}: not with FSDP .*--multi_gpu") as err:
        Trainer(build_config(None, {**base, **change})).setup()
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("env, message", [
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, "FSDP version 1.*--fsdp_version 2"),
    ({"ACCELERATE_USE_DEEPSPEED": "true"}, "does not run under DeepSpeed.*FSDP"),
])
def test_fsdp_1_and_deepspeed_are_refused_before_anything_is_written(photos, tmp_path, monkeypatch, env, message):
    from dreambooth.errors import UserError
    from dreambooth.training.config import build_config
    from dreambooth.training.trainer import Trainer
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cfg = build_config(None, dict(model="toy", instance_dir=str(photos), instance_prompt="a sks square",
                                  output=str(tmp_path / "out")))
    with pytest.raises(UserError, match=message):
        Trainer(cfg).setup()
    assert not (tmp_path / "out").exists()


def test_under_mixed_precision_fsdp_reduces_gradients_in_fp32(monkeypatch):
    """Weights gathered in bf16, gradients reduced in fp32, as DDP under autocast reduces them."""
    from dreambooth.training.config import TrainConfig
    from dreambooth.training.sharding import fsdp_plugin
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    cfg = TrainConfig(model="toy", instance_dir="i", instance_prompt="a sks square", output="o")
    policy = fsdp_plugin(cfg.replace(mixed_precision="bf16"), asked=True).mixed_precision_policy
    assert (policy.param_dtype, policy.reduce_dtype) == (torch.bfloat16, torch.float32)
    assert fsdp_plugin(cfg.replace(mixed_precision="no"), asked=True).mixed_precision_policy is None
    assert fsdp_plugin(cfg.replace(mixed_precision="bf16"), asked=False) is None


def test_the_shipped_fsdp_config_is_fsdp2_and_wraps_blocks_every_family_has(tiny_sd1, tiny_sdxl):
    from accelerate.commands.config.config_args import load_config_from_file
    from diffusers import UNet2DConditionModel
    config = load_config_from_file(str(FSDP_CONFIG))
    assert config.distributed_type.name == "FSDP" and not config.use_cpu
    fsdp = config.fsdp_config
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    for model in (tiny_sd1, tiny_sdxl, TOY_MODEL_DIR):
        unet = UNet2DConditionModel.from_pretrained(model / "unet")
        present = {type(m).__name__ for m in unet.modules()}
        assert set(fsdp["fsdp_transformer_layer_cls_to_wrap"].split(",")) <= present, model
