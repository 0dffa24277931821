"""The toy model's architecture: Stable Diffusion 1.x's components, only small.

- tokenizer: CLIP BPE in which every caption word is one token, plus rare tokens that never occur in
  a caption (``sks``, ``zwx``, ...) for DreamBooth identifiers;
- text encoder: ``CLIPTextModel`` (quick_gelu, as SD1), 64 wide, 3 layers, 77 positions;
- VAE: ``AutoencoderKL`` with one downsampling: 32x32 RGB to 16x16x4 latents;
- UNet: ``UNet2DConditionModel``, three levels, self- and cross-attention at the 8x8 and 4x4 levels
  and in the mid block, conv projections (SD1), epsilon prediction; 64/128/128 channels (6.6M
  parameters) when pretrained from scratch; the shipped UNet is a 32/64/64 student (1.7M) distilled from
  such a one;
- scheduler: trained as DDPM with the original linear betas (1e-4 to 0.02, 1000 steps). At 16x16 the
  Stable Diffusion schedule leaves too much of the image's mean colour in the last timestep for the
  model to need the prompt; the linear schedule ends almost at pure noise. The pipeline ships a DDIM
  scheduler of the same config ("trailing" spacing, so sampling starts at t=999).

The pipeline works at 32x32 pixels.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from ..testing.vocab import write_clip_tokenizer
from .world import COLOURS, SHAPES

RESOLUTION = 32
CAPTION_WORDS = ["a", "on", "background", *COLOURS, *SHAPES]
RARE_TOKENS = ["sks", "zwx", "ohwx", "qxv", "vlt"]
VOCAB_WORDS = CAPTION_WORDS + RARE_TOKENS

TEXT_WIDTH = 64

SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
    prediction_type="epsilon", clip_sample=False, timestep_spacing="trailing",
)


def _bpe_safe_order(words: list[str]) -> list[str]:
    """``words`` reordered so that each one's left-to-right merge chain wins over other words' merges.

    ``write_clip_tokenizer`` gives each word the merges ``c1 c2``, ``c1c2 c3``, ... in list order. A
    word's first merge (two single characters) can cut into a later-listed word that contains the
    same two characters further in ("r e" of "red" inside "green"): such a word must be listed before
    it. A topological order (stable, else the original order) satisfies every such constraint."""
    def first_pair(w: str) -> tuple[str, str] | None:
        return (w[0], w[1] + ("</w>" if len(w) == 2 else "")) if len(w) > 1 else None

    def inner_pairs(w: str) -> set[tuple[str, str]]:
        return {(w[i], w[i + 1] + ("</w>" if i + 2 == len(w) else "")) for i in range(1, len(w) - 1)}

    after = {w: {v for v in words if v != w and first_pair(v) in inner_pairs(w)} for w in words}
    order, placed = [], set()
    while len(order) < len(words):
        ready = [w for w in words if w not in placed
                 and not any(w in after[u] for u in words if u not in placed and u != w)]
        if not ready:
            raise ValueError("no BPE-safe order for the toy vocabulary")
        order.append(ready[0])
        placed.add(ready[0])
    return order


def build_tokenizer(directory: str | Path):
    """CLIP tokenizer in which every caption word and every rare token is a single token."""
    tok = write_clip_tokenizer(_bpe_safe_order(list(VOCAB_WORDS)), directory)
    for word in VOCAB_WORDS:
        if len(tok(word, add_special_tokens=False).input_ids) != 1:
            raise RuntimeError(f"toy tokenizer: {word!r} is not a single token")
    return tok


def build_text_encoder(tokenizer, seed: int = 0) -> CLIPTextModel:
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=TEXT_WIDTH * 4,
        num_attention_heads=4, num_hidden_layers=3, max_position_embeddings=77, hidden_act="quick_gelu",
        projection_dim=TEXT_WIDTH, layer_norm_eps=1e-5, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def build_vae(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=16, sample_size=RESOLUTION,
    )


def build_unet(seed: int = 0, channels: tuple[int, ...] = (64, 128, 128)) -> UNet2DConditionModel:
    """Three levels (16x16, 8x8, 4x4 latents). The 16x16 level is convolutional only (as SDXL's first
    level; attention there costs a third of a CPU step); the 8x8 and 4x4 levels and the mid block
    have self- and cross-attention. Group norms have at least 2 channels a group."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=RESOLUTION // 2, in_channels=4, out_channels=4, block_out_channels=channels,
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_WIDTH, attention_head_dim=(2, 4, 4), norm_num_groups=min(32, math.gcd(*channels) // 2),
        use_linear_projection=False,
    )


def build_train_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**SCHEDULER_CONFIG)


def build_sample_scheduler() -> DDIMScheduler:
    return DDIMScheduler(**SCHEDULER_CONFIG, set_alpha_to_one=True, steps_offset=1)


def build_pipeline(vae, text_encoder, tokenizer, unet):
    from diffusers import StableDiffusionPipeline
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=build_sample_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
