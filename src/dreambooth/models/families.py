"""What differs between model families, and nothing else.

SD1 and SD2 condition the UNet on one CLIP encoder's last hidden state. SDXL concatenates the
penultimate hidden states of two encoders, and adds the second encoder's pooled (projected)
embedding plus six size numbers (``add_time_ids``: original size, crop top-left, target size) as
extra conditioning. The training loop, class-image generation and prompt weighting all go through
this adapter, so a family is one small class here, never a copied loop.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserError


def detect_family(unet_config, text_encoder_config=None, has_second_text_encoder: bool = False) -> str:
    """'sd1', 'sd2' or 'sdxl' from the components' configs.

    SDXL's UNet takes pooled text and size conditioning (``addition_embed_type == 'text_time'``).
    SD2 differs from SD1 by its OpenCLIP encoder (gelu, 1024 wide) and linear projections in the
    UNet's transformer blocks; SD1 uses CLIP ViT-L (quick_gelu, 768) and conv projections.
    """
    get = unet_config.get if isinstance(unet_config, dict) else lambda k, d=None: getattr(unet_config, k, d)
    if get("addition_embed_type") == "text_time" or has_second_text_encoder:
        return "sdxl"
    if get("addition_embed_type") or get("class_embed_type") or get("in_channels", 4) != 4:
        raise UserError(f"--model: UNet with in_channels={get('in_channels')}, "
                        f"addition_embed_type={get('addition_embed_type')} is not an SD1/SD2/SDXL text-to-image model "
                        "(inpainting, upscaler and other variants are not supported for training)")
    act = getattr(text_encoder_config, "hidden_act", None)
    if get("use_linear_projection") or get("cross_attention_dim") == 1024 or act == "gelu":
        return "sd2"
    return "sd1"


def family_of(pipe) -> str:
    te = getattr(pipe, "text_encoder", None)
    return detect_family(pipe.unet.config, te.config if te is not None else None,
                         getattr(pipe, "text_encoder_2", None) is not None)


@dataclass
class Conditioning:
    embeds: torch.Tensor                   # (B, tokens, dim): the UNet's encoder_hidden_states
    pooled: torch.Tensor | None = None     # (B, dim2): SDXL only

    def repeat(self, n: int) -> "Conditioning":
        return Conditioning(self.embeds.repeat(n, 1, 1), None if self.pooled is None else self.pooled.repeat(n, 1))


class SD1Family:
    name = "sd1"
    default_resolution = 512
    max_resolution = 1024       # training: beyond this an SD1/SD2 UNet learns nothing it can draw
    max_side = 2048             # generation: the WebUI's own limit
    needs_time_ids = False
    # The WebUI's "Clip skip" (kohya's --clip_skip in training): SD1's CLIP-L stops that many layers from
    # its end. The WebUI leaves SD2's OpenCLIP and SDXL's encoders (already at their penultimate layer) as
    # they are, and so do we, so that a model is sampled as it was trained.
    honours_clip_skip = True

    def __init__(self, pipe):
        self.tokenizers = [pipe.tokenizer]
        self.text_encoders = [pipe.text_encoder]

    @property
    def text_encoder_names(self) -> list[str]:
        return ["text_encoder"]

    def tokenize(self, prompts: list[str]) -> list[torch.Tensor]:
        """One (B, 77) id tensor per tokenizer; long prompts are truncated here (the generation
        path encodes them in 75-token chunks instead)."""
        return [tok(list(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True,
                    return_tensors="pt").input_ids for tok in self.tokenizers]

    def encode(self, input_ids: list[torch.Tensor], encoders: list | None = None, clip_skip: int = 1) -> Conditioning:
        """``encoders``: what to call in place of ``text_encoders``, one for one (training on several
        processes passes the same encoders wrapped for gradient sync). ``clip_skip`` N > 1 (where
        ``honours_clip_skip``): the output of the N-th layer from the end, through the final layer
        norm, as the WebUI computes it."""
        te = self.text_encoders[0]
        call = (encoders or self.text_encoders)[0]
        if clip_skip > 1 and self.honours_clip_skip:
            hidden = call(input_ids[0].to(te.device), output_hidden_states=True).hidden_states
            final_norm = _text_model(te).final_layer_norm
            return Conditioning(final_norm(hidden[-clip_skip]))
        return Conditioning(call(input_ids[0].to(te.device))[0])

    def added_cond(self, cond: Conditioning, time_ids: torch.Tensor | None) -> dict | None:
        return None

    def unused_in_training(self) -> tuple[str, ...]:
        """The trained text encoders some of whose weights get no gradient (DDP must not wait for them;
        looking for such weights in the others would search their graphs every step for none)."""
        return ()

    def clip_skip_for(self, clip_skip: int, flag: str = "--clip-skip") -> tuple[int, str | None]:
        """The clip skip this family applies when ``clip_skip`` is asked for, and a warning where it
        applies none; one beyond the text encoder's depth is an error naming ``flag``."""
        if not self.honours_clip_skip:
            return 1, (f"Clip skip {clip_skip}: no effect on {self.name.upper()} models, as in the WebUI "
                       "(only SD1's text encoder stops early)") if clip_skip > 1 else None
        layers = self.text_encoders[0].config.num_hidden_layers
        if clip_skip > layers:
            raise UserError(f"{flag} {clip_skip}: this model's text encoder has {layers} layers; use 1 to {layers}")
        return clip_skip, None


class SD2Family(SD1Family):
    name = "sd2"
    default_resolution = 768   # SD 2.x 768-v; the 512 base is also fine at 512
    honours_clip_skip = False


class SDXLFamily(SD1Family):
    name = "sdxl"
    default_resolution = 1024
    max_resolution = 2048
    max_side = 4096
    needs_time_ids = True
    honours_clip_skip = False

    def __init__(self, pipe):
        self.tokenizers = [pipe.tokenizer, pipe.tokenizer_2]
        self.text_encoders = [pipe.text_encoder, pipe.text_encoder_2]

    @property
    def text_encoder_names(self) -> list[str]:
        return ["text_encoder", "text_encoder_2"]

    def unused_in_training(self) -> tuple[str, ...]:
        return ("text_encoder",)     # (tested: without it DDP stops at the second step, which the others do not need)

    def encode(self, input_ids: list[torch.Tensor], encoders: list | None = None, clip_skip: int = 1) -> Conditioning:
        hidden, pooled = [], None
        for te, call, ids in zip(self.text_encoders, encoders or self.text_encoders, input_ids):
            out = call(ids.to(te.device), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled = out[0]   # the last encoder's projected pooled output (text_embeds)
        return Conditioning(torch.cat(hidden, dim=-1), pooled)

    def added_cond(self, cond: Conditioning, time_ids: torch.Tensor | None) -> dict:
        return {"text_embeds": cond.pooled, "time_ids": time_ids}


def _text_model(te):
    return getattr(te, "text_model", te)      # transformers 5's CLIPTextModel has no text_model wrapper


def text_layers(te) -> torch.nn.ModuleList:
    """A CLIP text encoder's transformer layers, first to last."""
    return _text_model(te).encoder.layers


def time_ids(original_hw: tuple[int, int], crop_top_left: tuple[int, int], target_hw: tuple[int, int]) -> torch.Tensor:
    """SDXL's six micro-conditioning numbers, in the order SDXL was trained with:
    (original height, original width, crop top, crop left, target height, target width)."""
    return torch.tensor([*original_hw, *crop_top_left, *target_hw], dtype=torch.float32)


FAMILIES = {"sd1": SD1Family, "sd2": SD2Family, "sdxl": SDXLFamily}


def adapter_for(pipe):
    return FAMILIES[family_of(pipe)](pipe)
