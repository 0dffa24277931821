"""Pretraining from a pipeline (``scripts/pretrain_toy.py``): distillation (``--teacher DIR``: a smaller
UNet learns from a teacher pipeline's UNet, on the teacher's latents, under the teacher's frozen text
encoder) and continuing (``--init-from DIR``). Tiny models: a few seconds."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from dreambooth.errors import UserError
from dreambooth.toy import architecture as arch
from dreambooth.toy.pretrain import PretrainConfig, pretrain


def _teacher(folder):
    tok = arch.build_tokenizer(folder / "tok")
    pipe = arch.build_pipeline(arch.build_vae(3), arch.build_text_encoder(tok, 4), tok,
                               arch.build_unet(5, channels=(32, 64, 64)))
    pipe.save_pretrained(folder / "teacher")
    return folder / "teacher", pipe


def _gap(student, teacher, context) -> float:
    """Mean squared distance between the two UNets' predictions on fixed noisy latents."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 4, 16, 16, generator=g)
    t = torch.randint(0, 1000, (16,), generator=g)
    with torch.no_grad():
        return torch.mean((student(x, t, context).sample - teacher(x, t, context).sample) ** 2).item()


def _run(tmp_path, teacher_dir, weight: float) -> dict:
    cfg = PretrainConfig(out=str(tmp_path / f"run{weight}"), teacher=str(teacher_dir), unet_channels="16,32,32",
                         dataset=64, steps=40, batch=8, lr=2e-3, warmup=5, eval_every=10_000, partial_from=0,
                         distil_weight=weight)
    pretrain(cfg)
    return torch.load(tmp_path / f"run{weight}" / "state.pt", weights_only=False)


def test_distillation_moves_a_small_unet_towards_its_teacher_and_keeps_the_teachers_parts(tmp_path):
    folder, teacher = _teacher(tmp_path)
    taught, untaught = _run(tmp_path, folder, 1.0), _run(tmp_path, folder, 0.0)
    assert taught["step"] == 40

    # the run's VAE is the teacher's (its latents are what the teacher learned)
    vae = load_file(tmp_path / "run1.0" / "vae" / "diffusion_pytorch_model.safetensors")
    for key, value in teacher.vae.state_dict().items():
        assert torch.equal(vae[key], value), key
    # the text encoder did not train
    for key, value in teacher.text_encoder.state_dict().items():
        assert torch.equal(taught["text_encoder"][key], value), key
    # the student is the smaller architecture asked for, and the teacher's term pulled it towards the
    # teacher: closer than the same run on the data alone
    ids = teacher.tokenizer(["a red square on a blue background"] * 16, padding="max_length",
                            max_length=teacher.tokenizer.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        context = teacher.text_encoder(ids)[0]
    gaps = []
    for state in (taught, untaught):
        student = arch.build_unet(0, channels=(16, 32, 32))
        assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in teacher.unet.parameters()) / 2
        student.load_state_dict(state["unet"])
        gaps.append(_gap(student, teacher.unet, context))
    assert gaps[0] < 0.5 * gaps[1], gaps


def test_init_from_continues_a_pipelines_weights_with_its_vae(tmp_path):
    """``--init-from DIR``: phase 3 starts from the pipeline's UNet (its channels, whatever
    ``unet_channels`` says) and text encoder, on its VAE's latents, and both go on training."""
    folder, base = _teacher(tmp_path)

    def run(name, steps):
        cfg = PretrainConfig(out=str(tmp_path / name), init_from=str(folder), unet_channels="16,32,32",
                             dataset=64, steps=steps, batch=8, lr=2e-3, warmup=5, eval_every=10_000, partial_from=0)
        pretrain(cfg)
        return torch.load(tmp_path / name / "state.pt", weights_only=False)

    start, moved = run("start", 0), run("moved", 3)
    for key, value in base.unet.state_dict().items():
        assert torch.equal(start["unet"][key], value), key
    for key, value in base.text_encoder.state_dict().items():
        assert torch.equal(start["text_encoder"][key], value), key
    assert any(not torch.equal(moved["unet"][k], v) for k, v in base.unet.state_dict().items())
    assert any(not torch.equal(moved["text_encoder"][k], v) for k, v in base.text_encoder.state_dict().items())
    vae = load_file(tmp_path / "moved" / "vae" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(vae[k], v) for k, v in base.vae.state_dict().items())


def test_init_from_and_teacher_together_is_one_line(tmp_path):
    with pytest.raises(UserError, match="--teacher and --init-from"):
        pretrain(PretrainConfig(out=str(tmp_path / "x"), teacher="toy", init_from="toy"))
    assert not (tmp_path / "x").exists()     # refused before anything was written
