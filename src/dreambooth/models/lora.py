"""LoRA through peft: attach adapters, save them as diffusers and as kohya/A1111 files.

The diffusers file (``pytorch_lora_weights.safetensors``) is what ``pipe.load_lora_weights(dir)``
reads; adapter metadata carries alpha so a rank/alpha scale other than 1 survives. The kohya file
uses the names kohya's scripts give their layers, which A1111 and ComfyUI read: ``lora_unet_<module
path with _>``, ``lora_te_`` (SD1/SD2) or ``lora_te1_``/``lora_te2_`` (SDXL), ``.lora_down``/``.lora_up``
weights and one ``.alpha`` scalar per module. kohya trains SD1/SD2 on a UNet with diffusers' module
names (``down_blocks_1_attentions_0_...``) but SDXL on Stability's original one (SGM:
``input_blocks_4_1_...``, ``middle_block_1_...``, ``output_blocks_0_1_...``), and its SDXL tools
(``sdxl_merge_lora.py``) look those names up as they are: SDXL files get SGM names. The round trip
through diffusers' own loader is tested rather than trusting a converter.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import save, save_file

from ..outputs import LORA_WEIGHTS_FILE, as_user_file

UNET_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def add_adapters(model, rank: int, alpha: float, targets: list[str], dropout: float = 0.0) -> None:
    """Attach a trainable LoRA adapter named 'default' to ``model`` (diffusers or transformers)."""
    from peft import LoraConfig
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, init_lora_weights="gaussian",
                        target_modules=targets)
    model.add_adapter(config)


def autocast_adapters(model) -> None:
    """For a model whose adapters run under autocast: peft casts each LoRA layer's input to the
    adapter's dtype (fp32) and autocast casts it straight back to bf16/fp16, exactly, for the
    product. Without peft's cast the numbers are the same, bit for bit, with two copies fewer per
    layer in the forward pass and their two in the backward where gradients flow: launches that
    bind a GPU step to the host."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = False


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
    as_user_file(directory / LORA_WEIGHTS_FILE)
    return directory / LORA_WEIGHTS_FILE


def kohya_prefix(component: str, family: str) -> str:
    if component == "unet":
        return "lora_unet"
    if component == "text_encoder_2":
        return "lora_te2"
    return "lora_te1" if family == "sdxl" else "lora_te"


def sgm_module_names(modules, unet_config) -> dict[str, str]:
    """Diffusers UNet module paths -> their SGM paths (``down_blocks.1.attentions.0.x`` ->
    ``input_blocks.4.1.x``), by the block numbering of the single-file export."""
    from .single_file import _apply_prefixes, unet_key_map
    mapped = _apply_prefixes({f"{m}.weight": m for m in modules}, unet_key_map(unet_config), "UNet LoRA")
    return {m: key.removeprefix("model.diffusion_model.").removesuffix(".weight") for key, m in mapped.items()}


def kohya_tensors(component: str, state: dict[str, torch.Tensor], alpha: float, family: str, unet_config=None,
                  dtype=torch.float32) -> dict[str, torch.Tensor]:
    """kohya/A1111 names for a component's peft state dict (``...to_q.lora_A.weight``): down/up weights
    and the alpha scalar. The UNet of SDXL under SGM names where ``unet_config`` is given."""
    modules = {key.rsplit(".lora_", 1)[0] for key in state}
    renamed = sgm_module_names(modules, unet_config) if component == "unet" and family == "sdxl" \
        and unet_config is not None else {}
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        module, kind = key.rsplit(".lora_", 1)          # "...to_q", "A.weight"
        path = renamed.get(module, module)
        if component != "unet" and not path.startswith("text_model."):
            path = "text_model." + path                  # transformers 5 dropped this level; kohya names keep it
        name = f"{kohya_prefix(component, family)}_{path.replace('.', '_')}"
        out[f"{name}.lora_{'down' if kind.startswith('A') else 'up'}.weight"] = tensor.to(dtype).contiguous()
        out[f"{name}.alpha"] = torch.tensor(alpha, dtype=dtype)
    return out


def to_kohya(components: dict[str, torch.nn.Module], family: str, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """kohya/A1111 names for every adapted module: down/up weights and the alpha scalar."""
    out: dict[str, torch.Tensor] = {}
    for component, model in components.items():
        out.update(kohya_tensors(component, adapter_state_dict(model), float(adapter_metadata(model)["lora_alpha"]),
                                 family, getattr(model, "config", None), dtype))
    return out


def checkpoint_kohya(weights: dict[str, torch.Tensor], alpha: float, family: str, unet_config=None,
                     dtype=torch.float32) -> dict[str, torch.Tensor]:
    """A LoRA run's checkpoint weights (``unet.<module>.lora_A.<adapter>.weight``: the trainer's models'
    own parameter names, which no loader reads and which carry no alpha) as a kohya file's tensors."""
    import re
    components: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in weights.items():
        component, _, rest = key.partition(".")
        found = re.fullmatch(r"(.+)\.lora_([AB])\.[^.]+\.weight", rest)
        if found is None:
            raise ValueError(f"{key}: not a LoRA adapter's weight")
        components.setdefault(component, {})[f"{found[1]}.lora_{found[2]}.weight"] = tensor
    out: dict[str, torch.Tensor] = {}
    for component, state in components.items():
        out.update(kohya_tensors(component, state, alpha, family, unet_config, dtype))
    return out


def kohya_base_model_version(family: str, prediction_type: str = "epsilon") -> str:
    """kohya's ``ss_base_model_version``: sd_v1, sd_v2 (sd_v2_v for v-prediction), sdxl_base_v1-0."""
    if family == "sdxl":
        return "sdxl_base_v1-0"
    if family == "sd2":
        return "sd_v2_v" if prediction_type == "v_prediction" else "sd_v2"
    return "sd_v1"


def kohya_metadata(family: str, rank: int, alpha: float, prediction_type: str = "epsilon",
                   training: dict | None = None) -> dict[str, str]:
    """The ``ss_*`` fields kohya's trainers write, as strings (safetensors metadata is str -> str).
    A1111 files a LoRA under SDXL by ``ss_base_model_version`` and under SD2 by ``ss_v2 == "True"``
    (anything else with metadata is SD1), and shows the rest in its LoRA card. ``training`` adds
    more ``ss_*`` fields (learning rates, steps, image counts, ...)."""
    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(int(rank)),
        "ss_network_alpha": f"{float(alpha):g}",
        "ss_v2": str(family == "sd2"),
        "ss_base_model_version": kohya_base_model_version(family, prediction_type),
        "ss_v_parameterization": str(prediction_type == "v_prediction"),
    }
    meta.update({k: "None" if v is None else str(v) for k, v in (training or {}).items()})
    return meta


# Stability AI's ModelSpec ids (github.com/Stability-AI/ModelSpec), which kohya writes too: tools that
# sort files by architecture (SwarmUI, Forge) read them before any ss_* field.
MODELSPEC_ARCHITECTURES = {"sd1": "stable-diffusion-v1", "sd2": "stable-diffusion-v2-512",
                           "sd2-v": "stable-diffusion-v2-768-v", "sdxl": "stable-diffusion-xl-v1-base"}


def modelspec_metadata(family: str, prediction_type: str, title: str, resolution: int, date: str,
                       trigger: str | None = None) -> dict[str, str]:
    """The ``modelspec.*`` fields of a LoRA file (the spec's 'must' ones, and what the run knows)."""
    arch = MODELSPEC_ARCHITECTURES["sd2-v" if family == "sd2" and prediction_type == "v_prediction" else family]
    meta = {"modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": f"{arch}/lora",
            # SDXL LoRAs name Stability's own implementation, as kohya's do (its key names are the same)
            "modelspec.implementation": "https://github.com/Stability-AI/generative-models" if family == "sdxl"
            else "diffusers",
            "modelspec.title": title, "modelspec.resolution": f"{resolution}x{resolution}", "modelspec.date": date,
            "modelspec.prediction_type": "v" if prediction_type == "v_prediction" else "epsilon"}
    if trigger:
        meta["modelspec.trigger_phrase"] = trigger
    return meta


def save_kohya_lora(path: Path, components: dict[str, torch.nn.Module], family: str, metadata: dict[str, str],
                    dtype=torch.float32) -> Path:
    """Write the adapters in kohya/A1111 key format with ``metadata`` (see ``kohya_metadata``)."""
    return write_kohya_file(path, to_kohya(components, family, dtype), metadata)


def write_kohya_file(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """``tensors`` with ``metadata`` and the hashes kohya precomputes: ``sshs_model_hash`` (sha256 of the
    tensor data, A1111's LoRA hash, which it then takes from here instead of reading the file) and
    ``sshs_legacy_hash``."""
    serialized = save(tensors, metadata={k: v for k, v in metadata.items() if k.startswith("ss_")})
    data_start = 8 + int.from_bytes(serialized[:8], "little")     # the tensor data: the same whatever the header
    hashes = {"sshs_model_hash": hashlib.sha256(serialized[data_start:]).hexdigest(),
              "sshs_legacy_hash": hashlib.sha256(serialized[0x100000:0x110000]).hexdigest()[:8]}
    del serialized
    save_file(tensors, str(path), metadata={**metadata, **hashes})
    as_user_file(path)
    return path
