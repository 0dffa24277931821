"""Export a diffusers pipeline folder as one original-layout checkpoint (A1111, ComfyUI).

The original Stable Diffusion code (CompVis LDM for SD1/SD2, Stability's SGM for SDXL) keeps the
whole model in one state dict:

* the UNet under ``model.diffusion_model.`` (``input_blocks``/``middle_block``/``output_blocks``,
  numbered in the order the blocks run),
* the VAE under ``first_stage_model.`` (``encoder.down.N.block.M``, ``decoder.up.N`` counted from
  the lowest resolution, mid attention as 1x1 convolutions),
* the text encoder(s): SD1 keeps the Hugging Face CLIP model under ``cond_stage_model.transformer.``;
  SD2 keeps an OpenCLIP text tower under ``cond_stage_model.model.`` (fused q/k/v ``in_proj``,
  ``resblocks``, ``ln_final``, ``positional_embedding``, ``text_projection``); SDXL keeps the CLIP-L
  model under ``conditioner.embedders.0.transformer.`` and the OpenCLIP bigG tower under
  ``conditioner.embedders.1.model.``.

Block numbers come from the UNet/VAE configs (number of levels, layers per level, which levels
have attention), so any UNet of these block types converts, not only the full-size ones. Every
weight of every component must find its place: an unknown key is an error, never dropped.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..outputs import as_user_file

FAMILIES = ("sd1", "sd2", "sdxl")

_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
                "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_OPEN_CLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                    "self_attn.out_proj": "attn.out_proj"}


# ----- key maps ---------------------------------------------------------------------------------

def _rename_head(suffix: str, names: dict[str, str]) -> str:
    """Rename the leading module name(s) of ``suffix`` ("norm1.weight" -> "in_layers.0.weight")."""
    for old, new in names.items():
        if suffix.startswith(old + "."):
            return new + suffix[len(old):]
    return suffix


def _apply_prefixes(state_dict: dict, prefixes: list[tuple[str, str, dict | None]], what: str) -> dict:
    """Map every key by the first (longest) matching diffusers prefix; unmapped keys are an error."""
    prefixes = sorted(prefixes, key=lambda p: len(p[0]), reverse=True)
    out, unmapped = {}, []
    for key, value in state_dict.items():
        for old, new, names in prefixes:
            if key.startswith(old):
                suffix = key[len(old):]
                out[new + (_rename_head(suffix, names) if names else suffix)] = value
                break
        else:
            unmapped.append(key)
    if unmapped:
        raise ValueError(f"{what}: no original-layout name for {len(unmapped)} weight(s), e.g. {unmapped[:3]}; "
                         "this architecture cannot be exported as one file")
    return out


def _uniform(value, levels: int, name: str) -> int:
    if isinstance(value, int):
        return value
    values = set(value)
    if len(values) != 1 or len(value) != levels:
        raise ValueError(f"UNet {name}={value}: the original layout (and diffusers' loader) needs one value for all levels")
    return values.pop()


def _has_attention(block_type: str) -> bool:
    return "Attn" in block_type


def unet_key_map(config) -> list[tuple[str, str, dict | None]]:
    """(diffusers prefix, original prefix, renames) for a UNet2DConditionModel of ``config``."""
    get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
    down_types, up_types = list(get("down_block_types")), list(get("up_block_types"))
    levels = len(down_types)
    if len(up_types) != levels:
        raise ValueError(f"UNet has {levels} down levels but {len(up_types)} up levels")
    per_level = _uniform(get("layers_per_block"), levels, "layers_per_block")
    mid_type = get("mid_block_type") or "UNetMidBlock2DCrossAttn"
    if mid_type != "UNetMidBlock2DCrossAttn":
        raise ValueError(f"UNet mid block {mid_type}: only the cross-attention mid block has an original layout")

    pairs: list[tuple[str, str, dict | None]] = [
        ("conv_in.", "input_blocks.0.0.", None),
        ("time_embedding.linear_1.", "time_embed.0.", None),
        ("time_embedding.linear_2.", "time_embed.2.", None),
        # SDXL's pooled-text/size embedding (and SD2-upscaler-style class projections) are label_emb.
        ("add_embedding.linear_1.", "label_emb.0.0.", None),
        ("add_embedding.linear_2.", "label_emb.0.2.", None),
        ("class_embedding.linear_1.", "label_emb.0.0.", None),
        ("class_embedding.linear_2.", "label_emb.0.2.", None),
        ("conv_norm_out.", "out.0.", None),
        ("conv_out.", "out.2.", None),
        ("mid_block.resnets.0.", "middle_block.0.", _UNET_RESNET),
        ("mid_block.attentions.0.", "middle_block.1.", None),
        ("mid_block.resnets.1.", "middle_block.2.", _UNET_RESNET),
    ]
    # input_blocks: conv_in, then per level `per_level` x [resnet, (attention)], then a downsampler
    # (all levels but the last).
    index = 1
    for level in range(levels):
        for layer in range(per_level):
            pairs.append((f"down_blocks.{level}.resnets.{layer}.", f"input_blocks.{index}.0.", _UNET_RESNET))
            if _has_attention(down_types[level]):
                pairs.append((f"down_blocks.{level}.attentions.{layer}.", f"input_blocks.{index}.1.", None))
            index += 1
        if level != levels - 1:
            pairs.append((f"down_blocks.{level}.downsamplers.0.conv.", f"input_blocks.{index}.0.op.", None))
            index += 1
    # output_blocks: per up level `per_level + 1` x [resnet, (attention), (upsampler on the last)].
    index = 0
    for level in range(levels):
        attention = _has_attention(up_types[level])
        for layer in range(per_level + 1):
            pairs.append((f"up_blocks.{level}.resnets.{layer}.", f"output_blocks.{index}.0.", _UNET_RESNET))
            if attention:
                pairs.append((f"up_blocks.{level}.attentions.{layer}.", f"output_blocks.{index}.1.", None))
            if layer == per_level and level != levels - 1:
                pairs.append((f"up_blocks.{level}.upsamplers.0.conv.",
                              f"output_blocks.{index}.{2 if attention else 1}.conv.", None))
            index += 1
    return [(old, "model.diffusion_model." + new, names) for old, new, names in pairs]


def vae_key_map(config) -> list[tuple[str, str, dict | None]]:
    """(diffusers prefix, original prefix, renames) for an AutoencoderKL of ``config``."""
    get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
    levels = len(get("block_out_channels"))
    pairs: list[tuple[str, str, dict | None]] = [
        ("quant_conv.", "quant_conv.", None), ("post_quant_conv.", "post_quant_conv.", None),
    ]
    for part in ("encoder", "decoder"):
        pairs += [
            (f"{part}.conv_in.", f"{part}.conv_in.", None),
            (f"{part}.conv_out.", f"{part}.conv_out.", None),
            (f"{part}.conv_norm_out.", f"{part}.norm_out.", None),
            (f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1.", None),
            (f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2.", None),
            (f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.", _VAE_ATTENTION),
        ]
    for level in range(levels):
        pairs.append((f"encoder.down_blocks.{level}.resnets.", f"encoder.down.{level}.block.", None))
        pairs.append((f"encoder.down_blocks.{level}.downsamplers.0.conv.", f"encoder.down.{level}.downsample.conv.", None))
        # The decoder's up levels are numbered from the lowest resolution in the original.
        original = levels - 1 - level
        pairs.append((f"decoder.up_blocks.{level}.resnets.", f"decoder.up.{original}.block.", None))
        pairs.append((f"decoder.up_blocks.{level}.upsamplers.0.conv.", f"decoder.up.{original}.upsample.conv.", None))
    return [(old, "first_stage_model." + new, names) for old, new, names in pairs]


def _convert_vae(state_dict: dict, config) -> dict:
    out = _apply_prefixes(state_dict, vae_key_map(config), "VAE")
    converted = {}
    for key, value in out.items():
        # Resnet shortcuts: diffusers' conv_shortcut is the original's nin_shortcut.
        key = key.replace(".conv_shortcut.", ".nin_shortcut.")
        # The original mid attention uses 1x1 convolutions for q/k/v/proj_out.
        if ".mid.attn_1." in key and key.endswith(".weight") and value.ndim == 2:
            value = value.reshape(*value.shape, 1, 1)
        converted[key] = value
    return converted


def _strip_text_model(state_dict: dict) -> dict:
    """Keys relative to the CLIP text transformer (transformers >= 5.6 saves ``CLIPTextModel``
    without the ``text_model.`` level, ``CLIPTextModelWithProjection`` still with it)."""
    out = {}
    for key, value in state_dict.items():
        if key.endswith("position_ids"):  # a buffer, not a weight; the originals build it themselves
            continue
        out[key.removeprefix("text_model.")] = value
    return out


def clip_to_original(state_dict: dict, prefix: str) -> dict:
    """A Hugging Face CLIP text model as SD1/SDXL keep it: HF names under ``prefix`` + ``text_model.``."""
    out = {}
    for key, value in _strip_text_model(state_dict).items():
        if key.startswith("text_projection."):
            raise ValueError("a CLIP text encoder with a projection cannot be stored in the HF-CLIP slot")
        out[f"{prefix}text_model.{key}"] = value
    return out


def open_clip_to_original(state_dict: dict, prefix: str, hidden_size: int) -> dict:
    """A Hugging Face CLIP text model in OpenCLIP's layout under ``prefix``.

    OpenCLIP fuses q/k/v into ``attn.in_proj_weight``/``in_proj_bias`` (q, k, v stacked on dim 0)
    and keeps ``text_projection`` as the matrix text features are multiplied by on the right
    (the transpose of the HF Linear weight). Without a projection (SD2's diffusers text encoder has
    none; SD2 does not use it) the identity is written, so the tower is complete.
    """
    sd = _strip_text_model(state_dict)
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if key == "embeddings.token_embedding.weight":
            out[prefix + "token_embedding.weight"] = value
        elif key == "embeddings.position_embedding.weight":
            out[prefix + "positional_embedding"] = value
        elif key.startswith("final_layer_norm."):
            out[prefix + "ln_final." + key.split(".", 1)[1]] = value
        elif key == "text_projection.weight":
            out[prefix + "text_projection"] = value.t().contiguous()
        elif key.startswith("encoder.layers."):
            layer, rest = key[len("encoder.layers."):].split(".", 1)
            base = f"{prefix}transformer.resblocks.{layer}."
            name = rest.rsplit(".", 1)
            if name[0] in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                kind = "in_proj_weight" if name[1] == "weight" else "in_proj_bias"
                fused.setdefault(base + "attn." + kind, {})[name[0][len("self_attn."):][0]] = value
            else:
                renamed = _rename_head(rest, _OPEN_CLIP_LAYER)
                if renamed == rest:
                    raise ValueError(f"text encoder weight {key}: no OpenCLIP name")
                out[base + renamed] = value
        else:
            raise ValueError(f"text encoder weight {key}: no OpenCLIP name")
    for key, parts in fused.items():
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"{key}: q/k/v projections incomplete ({sorted(parts)})")
        out[key] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    if prefix + "text_projection" not in out:
        reference = out[prefix + "positional_embedding"]
        out[prefix + "text_projection"] = torch.eye(hidden_size, dtype=reference.dtype)
    return out


# ----- loading and export ----------------------------------------------------------------------------

def _load_text_encoder(pipeline_dir: Path, name: str, index: dict, dtype: torch.dtype):
    import transformers
    class_name = (index.get(name) or [None, None])[1]
    if class_name is None or not (pipeline_dir / name).is_dir():
        raise ValueError(f"{pipeline_dir}: no {name} component")
    cls = getattr(transformers, class_name)
    return cls.from_pretrained(pipeline_dir / name, dtype=dtype)


def _scheduler_config(pipeline_dir: Path) -> dict:
    path = pipeline_dir / "scheduler" / "scheduler_config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _architecture(family: str, prediction_type: str) -> str:
    """The SAI model-spec architecture id (what model managers show and filter on)."""
    if family == "sdxl":
        return "stable-diffusion-xl-v1-base"
    if family == "sd2":
        return "stable-diffusion-v2-768-v" if prediction_type == "v_prediction" else "stable-diffusion-v2-512"
    return "stable-diffusion-v1"


def convert_pipeline_folder(pipeline_dir: Path, family: str, dtype: torch.dtype = torch.float16) -> dict:
    """The original-layout state dict of the pipeline folder (tensors cast to ``dtype``)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    if family not in FAMILIES:
        raise ValueError(f"family {family!r}: expected one of {', '.join(FAMILIES)}")
    pipeline_dir = Path(pipeline_dir)
    try:
        index = json.loads((pipeline_dir / "model_index.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{pipeline_dir}: not a diffusers pipeline folder ({exc})") from exc

    state: dict[str, torch.Tensor] = {}
    unet = UNet2DConditionModel.from_pretrained(pipeline_dir, subfolder="unet", torch_dtype=dtype)
    if family == "sdxl" and unet.config.addition_embed_type != "text_time":
        raise ValueError(f"{pipeline_dir}: family sdxl but the UNet takes no text_time conditioning")
    state.update(_apply_prefixes(unet.state_dict(), unet_key_map(unet.config), "UNet"))
    del unet
    vae = AutoencoderKL.from_pretrained(pipeline_dir, subfolder="vae", torch_dtype=dtype)
    state.update(_convert_vae(vae.state_dict(), vae.config))
    del vae

    if family == "sdxl":
        te1 = _load_text_encoder(pipeline_dir, "text_encoder", index, dtype)
        state.update(clip_to_original(te1.state_dict(), "conditioner.embedders.0.transformer."))
        te2 = _load_text_encoder(pipeline_dir, "text_encoder_2", index, dtype)
        state.update(open_clip_to_original(te2.state_dict(), "conditioner.embedders.1.model.", te2.config.hidden_size))
    else:
        te = _load_text_encoder(pipeline_dir, "text_encoder", index, dtype)
        if family == "sd2":
            state.update(open_clip_to_original(te.state_dict(), "cond_stage_model.model.", te.config.hidden_size))
        else:
            state.update(clip_to_original(te.state_dict(), "cond_stage_model.transformer."))

    scheduler = _scheduler_config(pipeline_dir)
    if scheduler.get("prediction_type") == "v_prediction":
        # Marker keys ComfyUI (and newer A1111) read to pick v-prediction for a checkpoint.
        state["v_pred"] = torch.tensor([])
        if scheduler.get("rescale_betas_zero_snr"):
            state["ztsnr"] = torch.tensor([])

    out = {}
    for key, value in state.items():
        value = value.detach()
        if value.is_floating_point():
            value = value.to(dtype)
        out[key] = value.contiguous()
    return out


def export_single_file(pipeline_dir: Path, path: Path, family: str, dtype: torch.dtype = torch.float16) -> Path:
    """Write the diffusers pipeline in ``pipeline_dir`` (family 'sd1', 'sd2' or 'sdxl') as one
    original-layout ``.safetensors`` checkpoint at ``path``, weights cast to ``dtype``."""
    from safetensors.torch import save_file

    path = Path(path)
    state = convert_pipeline_folder(Path(pipeline_dir), family, dtype)
    prediction = _scheduler_config(Path(pipeline_dir)).get("prediction_type", "epsilon")
    metadata = {
        "format": "pt",
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": _architecture(family, prediction),
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
        "modelspec.title": path.stem,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=metadata)
    as_user_file(tmp)
    tmp.replace(path)
    return path
