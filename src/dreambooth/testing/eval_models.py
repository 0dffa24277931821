"""Tiny random DINO-ViT and CLIP models of the real classes, saved as folders usable as
``--dino-model``/``--clip-model``: for tests and offline smoke runs; their numbers mean nothing."""
from __future__ import annotations

from pathlib import Path

import torch

from .tiny import TINY_WORDS
from .vocab import write_clip_tokenizer


def save_tiny_eval_models(directory: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Tiny random DINO-ViT and CLIP models of the real classes, saved as folders usable as
    ``--dino-model``/``--clip-model`` (for tests and offline smoke runs; their numbers mean nothing)."""
    from transformers import CLIPConfig, CLIPModel, ViTConfig, ViTModel

    directory = Path(directory)
    dino_dir, clip_dir = directory / "dino", directory / "clip"
    torch.manual_seed(seed)
    vit = ViTModel(ViTConfig(image_size=224, patch_size=16, hidden_size=32, num_hidden_layers=2,
                             num_attention_heads=2, intermediate_size=64), add_pooling_layer=False)
    vit.save_pretrained(dino_dir)
    tok = write_clip_tokenizer(list(TINY_WORDS), clip_dir)
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vision = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2)
    torch.manual_seed(seed + 1)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(clip_dir)
    return dino_dir, clip_dir
