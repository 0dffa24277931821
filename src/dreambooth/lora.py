"""LoRA through peft: attach adapters, save them as diffusers and as kohya/A1111 files.

The diffusers file (``pytorch_lora_weights.safetensors``) is what ``pipe.load_lora_weights(dir)``
reads; adapter metadata carries alpha so a rank/alpha scale other than 1 survives. The kohya file
uses the names A1111, ComfyUI and kohya's tools read: ``lora_unet_<module path with _>``,
``lora_te_`` (SD1/SD2) or ``lora_te1_``/``lora_te2_`` (SDXL), ``.lora_down``/``.lora_up`` weights
and one ``.alpha`` scalar per module. We write the kohya names ourselves (a table of one rule) and
test the round trip through diffusers' own loader rather than trusting a converter.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

UNET_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def add_adapters(model, rank: int, alpha: float, targets: list[str], dropout: float = 0.0) -> None:
    """Attach a trainable LoRA adapter named 'default' to ``model`` (diffusers or transformers)."""
    from peft import LoraConfig
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, init_lora_weights="gaussian",
                        target_modules=targets)
    model.add_adapter(config)


def adapter_state_dict(model) -> dict[str, torch.Tensor]:
    """The adapter's weights with peft's names (``...to_q.lora_A.weight``), adapter name stripped."""
    from peft.utils import get_peft_model_state_dict
    return {k: v.detach() for k, v in get_peft_model_state_dict(model).items()}


def adapter_metadata(model) -> dict:
    return model.peft_config["default"].to_dict()


def save_diffusers_lora(pipeline_cls, directory: Path, components: dict[str, torch.nn.Module]) -> Path:
    """``components`` maps 'unet' / 'text_encoder' / 'text_encoder_2' to models carrying adapters."""
    from diffusers.utils import convert_state_dict_to_diffusers
    kwargs = {}
    for name, model in components.items():
        kwargs[f"{name}_lora_layers"] = convert_state_dict_to_diffusers(adapter_state_dict(model))
        kwargs[f"{name}_lora_adapter_metadata"] = adapter_metadata(model)
    pipeline_cls.save_lora_weights(directory, safe_serialization=True, **kwargs)
    return directory / DIFFUSERS_WEIGHT_NAME


def kohya_prefix(component: str, family: str) -> str:
    if component == "unet":
        return "lora_unet"
    if component == "text_encoder_2":
        return "lora_te2"
    return "lora_te1" if family == "sdxl" else "lora_te"


def to_kohya(components: dict[str, torch.nn.Module], family: str, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """kohya/A1111 names for every adapted module: down/up weights and the alpha scalar."""
    out: dict[str, torch.Tensor] = {}
    for component, model in components.items():
        alpha = float(adapter_metadata(model)["lora_alpha"])
        prefix = kohya_prefix(component, family)
        for key, tensor in adapter_state_dict(model).items():
            module, kind = key.rsplit(".lora_", 1)          # "...to_q", "A.weight"
            if component != "unet" and not module.startswith("text_model."):
                module = "text_model." + module              # transformers 5 dropped this level; kohya names keep it
            name = f"{prefix}_{module.replace('.', '_')}"
            out[f"{name}.lora_{'down' if kind.startswith('A') else 'up'}.weight"] = tensor.to(dtype).contiguous()
            out[f"{name}.alpha"] = torch.tensor(alpha, dtype=dtype)
    return out


def save_kohya_lora(path: Path, components: dict[str, torch.nn.Module], family: str, metadata: dict | None = None,
                    dtype=torch.float32) -> Path:
    tensors = to_kohya(components, family, dtype)
    meta = {"ss_network_module": "networks.lora", "ss_base_model_version": {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}[family]}
    first = next(iter(components.values()))
    cfg = adapter_metadata(first)
    meta.update({"ss_network_dim": str(cfg["r"]), "ss_network_alpha": str(cfg["lora_alpha"])})
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    save_file(tensors, str(path), metadata=meta)
    return path
