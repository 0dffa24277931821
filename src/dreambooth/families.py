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

from .models import family_of


@dataclass
class Conditioning:
    embeds: torch.Tensor                   # (B, tokens, dim): the UNet's encoder_hidden_states
    pooled: torch.Tensor | None = None     # (B, dim2): SDXL only

    def repeat(self, n: int) -> "Conditioning":
        return Conditioning(self.embeds.repeat(n, 1, 1), None if self.pooled is None else self.pooled.repeat(n, 1))


class SD1Family:
    name = "sd1"
    default_resolution = 512
    needs_time_ids = False

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

    def encode(self, input_ids: list[torch.Tensor]) -> Conditioning:
        te = self.text_encoders[0]
        return Conditioning(te(input_ids[0].to(te.device))[0])

    def added_cond(self, cond: Conditioning, time_ids: torch.Tensor | None) -> dict | None:
        return None


class SD2Family(SD1Family):
    name = "sd2"
    default_resolution = 768   # SD 2.x 768-v; the 512 base is also fine at 512


class SDXLFamily(SD1Family):
    name = "sdxl"
    default_resolution = 1024
    needs_time_ids = True

    def __init__(self, pipe):
        self.tokenizers = [pipe.tokenizer, pipe.tokenizer_2]
        self.text_encoders = [pipe.text_encoder, pipe.text_encoder_2]

    @property
    def text_encoder_names(self) -> list[str]:
        return ["text_encoder", "text_encoder_2"]

    def encode(self, input_ids: list[torch.Tensor]) -> Conditioning:
        hidden, pooled = [], None
        for te, ids in zip(self.text_encoders, input_ids):
            out = te(ids.to(te.device), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled = out[0]   # the last encoder's projected pooled output (text_embeds)
        return Conditioning(torch.cat(hidden, dim=-1), pooled)

    def added_cond(self, cond: Conditioning, time_ids: torch.Tensor | None) -> dict:
        return {"text_embeds": cond.pooled, "time_ids": time_ids}


def time_ids(original_hw: tuple[int, int], crop_top_left: tuple[int, int], target_hw: tuple[int, int]) -> torch.Tensor:
    """SDXL's six micro-conditioning numbers, in the order SDXL was trained with:
    (original height, original width, crop top, crop left, target height, target width)."""
    return torch.tensor([*original_hw, *crop_top_left, *target_hw], dtype=torch.float32)


FAMILIES = {"sd1": SD1Family, "sd2": SD2Family, "sdxl": SDXLFamily}


def adapter_for(pipe):
    return FAMILIES[family_of(pipe)](pipe)
