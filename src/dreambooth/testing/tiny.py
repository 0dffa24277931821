"""Tiny Stable Diffusion pipelines of the real architectures with random weights.

Tests and benchmarks build these locally, because no weights can be downloaded. Each one is a real
diffusers pipeline (real classes, real configs), only narrow, so every code path a full-size model
takes, it takes too.
"""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline,
                       StableDiffusionXLPipeline, UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from .vocab import write_clip_tokenizer

# Words the tiny tokenizer knows as whole tokens: enough for test prompts and the DreamBench classes.
TINY_WORDS = (
    "a an the of on in with and photo picture dog cat sks zwx ohwx xjy snow beach city forest red blue "
    "green yellow purple orange white black background oil painting style wearing hat toy backpack "
    "shiny sneaker bowl vase teapot can candle clock sunglasses plushie boot car robot cartoon by near "
    "top jungle water street mountain grass floor table bed sofa rug wooden pink dirt road fluffy cube "
    "cathedral tower eiffel santa police chef sailor purple rainbow scarf wet bucket bench golden "
    "circle square triangle cross striped dots checker"
).split()


def _text_config(hidden: int, act: str, projection: int | None = None) -> CLIPTextConfig:
    return CLIPTextConfig(
        bos_token_id=0, eos_token_id=2, hidden_size=hidden, intermediate_size=hidden * 2,
        num_attention_heads=2, num_hidden_layers=2, vocab_size=1000, max_position_embeddings=77,
        hidden_act=act, projection_dim=projection or hidden, layer_norm_eps=1e-5, pad_token_id=1,
    )


def _vae(seed: int) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 16),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=8, sample_size=64,
    )


def _fix_token_ids(config: CLIPTextConfig, tokenizer) -> CLIPTextConfig:
    config.vocab_size = len(tokenizer)
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    return config


def _tokenizer(directory: str | Path | None):
    """The tiny tokenizer, written to ``directory`` or, without one, to a temporary folder that is
    removed once it is loaded (the slow CLIP tokenizer keeps its vocabulary in memory)."""
    if directory is not None:
        return write_clip_tokenizer(list(TINY_WORDS), directory)
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        return write_clip_tokenizer(list(TINY_WORDS), tmp)


def build_sd_pipeline(version: int = 1, seed: int = 0, tokenizer_dir: str | Path | None = None,
                      prediction_type: str | None = None) -> StableDiffusionPipeline:
    """A tiny SD1 (``version=1``: quick_gelu encoder, epsilon) or SD2 (``version=2``: gelu
    encoder, linear projections in the transformer blocks, v-prediction) pipeline."""
    tok = _tokenizer(tokenizer_dir)
    sd2 = version == 2
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_fix_token_ids(_text_config(32, "gelu" if sd2 else "quick_gelu"), tok))
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=(2, 4) if sd2 else 8, use_linear_projection=sd2,
        norm_num_groups=16,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1,
        prediction_type=prediction_type or ("v_prediction" if sd2 else "epsilon"),
    )
    return StableDiffusionPipeline(
        vae=_vae(seed + 2), text_encoder=text_encoder, tokenizer=tok, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def build_sdxl_pipeline(seed: int = 0, tokenizer_dir: str | Path | None = None) -> StableDiffusionXLPipeline:
    """A tiny SDXL: two CLIP encoders (the second with a projection for the pooled embedding), a
    ``text_time`` UNet with SDXL's block layout (three levels, two layers each, attention in levels
    two and three), only narrow."""
    tok = _tokenizer(tokenizer_dir)
    torch.manual_seed(seed)
    te1 = CLIPTextModel(_fix_token_ids(_text_config(32, "quick_gelu"), tok))
    torch.manual_seed(seed + 1)
    te2 = CLIPTextModelWithProjection(_fix_token_ids(_text_config(32, "gelu", projection=32), tok))
    torch.manual_seed(seed + 2)
    time_dim = 8
    unet = UNet2DConditionModel(
        block_out_channels=(32, 32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4, 8), use_linear_projection=True, transformer_layers_per_block=(1, 1, 2),
        cross_attention_dim=64, addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + 32, norm_num_groups=16,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        timestep_spacing="leading", prediction_type="epsilon",
    )
    vae = _vae(seed + 3)
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok, unet=unet,
        scheduler=scheduler, force_zeros_for_empty_prompt=True,
    )


def save_tiny(family: str, directory: str | Path, seed: int = 0):
    """Build and save a tiny pipeline of ``family`` ('sd1', 'sd2', 'sdxl') as a diffusers folder."""
    directory = Path(directory)
    pipe = build_sdxl_pipeline(seed) if family == "sdxl" else build_sd_pipeline(2 if family == "sd2" else 1, seed)
    pipe.save_pretrained(directory, safe_serialization=True)
    return directory
