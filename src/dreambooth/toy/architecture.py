"""The toy model's architecture: Stable Diffusion 1.x's components, only small.

- tokenizer: CLIP BPE in which every caption word is one token, plus rare tokens that never occur in
  a caption (``sks``, ``zwx``, ...) for DreamBooth identifiers;
- text encoder: ``CLIPTextModel`` (quick_gelu, as SD1), 64 wide, 3 layers, 77 positions;
- VAE: ``AutoencoderKL`` with one downsampling: 32x32 RGB to 16x16x4 latents;
- UNet: ``UNet2DConditionModel`` with cross-attention at every level (two levels and the mid block),
  conv projections (SD1), epsilon prediction;
- scheduler: trained as DDPM with the original linear betas (1e-4 to 0.02, 1000 steps). At 16x16 the
  Stable Diffusion schedule leaves too much of the image's mean colour in the last timestep for the
  model to need the prompt; the linear schedule ends almost at pure noise. The pipeline ships a DDIM
  scheduler of the same config ("trailing" spacing, so sampling starts at t=999).

The pipeline works at 32x32 pixels.
"""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from ..tokenizer_vocab import write_clip_tokenizer
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


def build_tokenizer(directory: str | Path):
    return write_clip_tokenizer(list(VOCAB_WORDS), directory)


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


def build_unet(seed: int = 0, channels: tuple[int, int] = (64, 128)) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=RESOLUTION // 2, in_channels=4, out_channels=4, block_out_channels=channels,
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_WIDTH, attention_head_dim=8, norm_num_groups=32,
        use_linear_projection=False,
    )


def build_train_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**SCHEDULER_CONFIG)


def build_sample_scheduler() -> DDIMScheduler:
    return DDIMScheduler(**SCHEDULER_CONFIG, set_alpha_to_one=True, steps_offset=0)


def build_pipeline(vae, text_encoder, tokenizer, unet):
    from diffusers import StableDiffusionPipeline
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=build_sample_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
