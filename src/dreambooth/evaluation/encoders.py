"""The evaluation models: DINO ViT and CLIP, loaded offline from a folder or the local Hugging Face
cache, with the preprocessing the metrics are defined with (see ``metrics``).

DINO: the CLS token of the last hidden state (``facebook/dino-vits16`` through transformers'
``ViTModel``); each image is resized so its short side is 256 (bicubic, PIL), centre-cropped to 224
and normalised with the ImageNet mean and std. CLIP: projected pooled outputs
(``openai/clip-vit-base-patch32`` by default), with CLIP's own preprocessing: short side to the
model's image size (224) bicubic, centre crop, CLIP mean and std.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..devices import default_device
from ..errors import UserError, exception_line
from ..images import middle
from ..models.specs import resolve_folder_or_hub

DEFAULT_DINO = "facebook/dino-vits16"
DEFAULT_CLIP = "openai/clip-vit-base-patch32"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DINO_RESIZE, DINO_CROP = 256, 224
LPIPS_SIZE = 256


# ----- preprocessing -----------------------------------------------------------------------------

def resize_center_crop(image: Image.Image, resize: int, crop: int) -> Image.Image:
    """Short side to ``resize`` (bicubic; the long side truncated to an int), then a centre crop of
    ``crop`` x ``crop`` (offsets rounded), as torchvision's Resize + CenterCrop do. An image longer
    than 4:1 is first cut to its middle 4:1, as training does: scaled whole, an 8000x1 strip would
    take gigabytes (images no longer than that are scaled exactly as before)."""
    image = middle(image)
    w, h = image.size
    if w <= h:
        size = (resize, int(resize * h / w))
    else:
        size = (int(resize * w / h), resize)
    if size != (w, h):
        image = image.resize(size, Image.BICUBIC)
    w, h = image.size
    left, top = int(round((w - crop) / 2.0)), int(round((h - crop) / 2.0))
    return image.crop((left, top, left + crop, top + crop))


def to_tensor(images: Sequence[Image.Image], resize: int, crop: int, mean, std) -> torch.Tensor:
    """(N, 3, crop, crop) float32, normalised."""
    arrays = []
    for image in images:
        arr = np.asarray(resize_center_crop(image.convert("RGB"), resize, crop), dtype=np.float32) / 255.0
        arrays.append((arr - np.asarray(mean, np.float32)) / np.asarray(std, np.float32))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


# ----- prompts -------------------------------------------------------------------------------------


# ----- models ------------------------------------------------------------------------------------

def resolve_encoder(spec: str, flag: str) -> Path:
    """A local folder, or a hub id (the local cache; the network only when not offline)."""
    return resolve_folder_or_hub(str(spec), flag)


class _quiet_loading:
    """No transformers weight-loading bars while our models load (they are small and many)."""

    def __enter__(self):
        from transformers.utils import logging as hf_logging
        self.was = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()

    def __exit__(self, *exc):
        from transformers.utils import logging as hf_logging
        if self.was:
            hf_logging.enable_progress_bar()


def _encoder_config(spec: str, flag: str, model_types: tuple[str, ...], what: str, example: str):
    """(local path, config) of an evaluation model, or a one-line error naming the flag."""
    from transformers import AutoConfig
    path = resolve_encoder(spec, flag)
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as exc:
        raise UserError(f"{flag} {spec}: unreadable config ({type(exc).__name__})") from exc
    model_type = getattr(config, "model_type", "")
    if model_type not in model_types:
        raise UserError(f"{flag} {spec}: a '{model_type or '?'}' model is not {what} (expected e.g. {example})")
    return path, config


class DinoEncoder:
    """CLS token of the last hidden state of a DINO ViT."""

    def __init__(self, spec: str = DEFAULT_DINO, device: str | None = None, flag: str = "--dino-model"):
        from transformers import AutoModel, ViTModel
        self.spec, self.device = str(spec), str(device or default_device())
        path, config = _encoder_config(spec, flag, ("vit", "dinov2", "dinov2_with_registers"), "a DINO ViT", DEFAULT_DINO)
        self.model_type = config.model_type
        try:
            with _quiet_loading():
                if self.model_type == "vit":
                    model = ViTModel.from_pretrained(path, add_pooling_layer=False)
                else:
                    model = AutoModel.from_pretrained(path)
        except Exception as exc:
            raise UserError(f"{flag} {spec}: cannot load ({exception_line(exc)})") from exc
        self.model = model.eval().to(self.device)
        self.interpolate = self.model_type == "vit" and getattr(config, "image_size", DINO_CROP) != DINO_CROP

    @torch.no_grad()
    def embed(self, images: Sequence[Image.Image], batch_size: int = 16) -> torch.Tensor:
        outs = []
        for i in range(0, len(images), batch_size):
            x = to_tensor(images[i:i + batch_size], DINO_RESIZE, DINO_CROP, IMAGENET_MEAN, IMAGENET_STD)
            kwargs = {"interpolate_pos_encoding": True} if self.interpolate else {}
            hidden = self.model(pixel_values=x.to(self.device), **kwargs).last_hidden_state
            outs.append(hidden[:, 0].float().cpu())
        return torch.cat(outs) if outs else torch.zeros(0)


class ClipEncoder:
    """CLIP image and text embeddings (projected pooled outputs)."""

    def __init__(self, spec: str = DEFAULT_CLIP, device: str | None = None, flag: str = "--clip-model"):
        from transformers import AutoTokenizer, CLIPModel
        self.spec, self.device = str(spec), str(device or default_device())
        path, _ = _encoder_config(spec, flag, ("clip",), "a CLIP model", DEFAULT_CLIP)
        try:
            with _quiet_loading():
                model = CLIPModel.from_pretrained(path)
        except Exception as exc:
            raise UserError(f"{flag} {spec}: cannot load ({exception_line(exc)})") from exc
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
        except Exception as exc:
            raise UserError(f"{flag} {spec}: no usable tokenizer in the folder ({type(exc).__name__})") from exc
        self.model = model.eval().to(self.device)
        self.image_size = int(model.config.vision_config.image_size)
        self.max_length = min(int(self.tokenizer.model_max_length or 77),
                              int(model.config.text_config.max_position_embeddings))

    @torch.no_grad()
    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 16) -> torch.Tensor:
        outs = []
        for i in range(0, len(images), batch_size):
            x = to_tensor(images[i:i + batch_size], self.image_size, self.image_size, CLIP_MEAN, CLIP_STD)
            pooled = self.model.vision_model(pixel_values=x.to(self.device)).pooler_output
            outs.append(self.model.visual_projection(pooled).float().cpu())
        return torch.cat(outs) if outs else torch.zeros(0)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        outs = []
        for i in range(0, len(texts), batch_size):
            tok = self.tokenizer(list(texts[i:i + batch_size]), padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
            pooled = self.model.text_model(input_ids=tok["input_ids"].to(self.device),
                                           attention_mask=tok["attention_mask"].to(self.device)).pooler_output
            outs.append(self.model.text_projection(pooled).float().cpu())
        return torch.cat(outs) if outs else torch.zeros(0)


# ----- metrics -----------------------------------------------------------------------------------
