"""Subject-driven generation metrics as the DreamBooth paper defines them.

* **DINO** (subject fidelity): the mean cosine similarity over *all* (generated, real) pairs of
  ViT-S/16 DINO embeddings. The embedding is the CLS token of the last hidden state
  (``facebook/dino-vits16`` through transformers' ``ViTModel``). Each image is EXIF-rotated, converted
  to RGB, resized so its short side is 256 (bicubic, PIL), centre-cropped to 224 and normalised with
  the ImageNet mean and std.
* **CLIP-I** (subject fidelity): the same mean over all pairs, with CLIP image embeddings (the
  projected pooled output; ``openai/clip-vit-base-patch32`` by default). Images get CLIP's own
  preprocessing: short side to the model's image size (224) bicubic, centre crop, CLIP mean and std.
* **CLIP-T** (prompt fidelity): the mean cosine between each generated image's CLIP embedding and the
  CLIP text embedding of its prompt, with the identifier token (``sks``) removed unless asked to keep
  it. It is the raw cosine: not multiplied by 100 (as CLIPScore tables often are) nor by 2.5.
* **PRES** (prior preservation, lower is better): DINO between generations of the *class* prompt
  (e.g. "a dog") by the fine-tuned model and the real subject images: high means the class collapsed
  onto the subject.
* **DIV** (diversity): the mean pairwise LPIPS distance among generations of the same prompt
  (per prompt, the mean over its pairs; then the mean over prompts). LPIPS needs the optional
  ``lpips`` package and its weights; when they are missing DIV is reported as unavailable with the
  reason, never replaced by another distance.

Identical real and generated sets give DINO and CLIP-I equal to the mean pairwise self-similarity of
the set (the diagonal included, as "all pairs" says), not 1. ``real_reference`` computes the
paper's "Real Images" row instead: all pairs of *distinct* real images.

Evaluation models are loaded offline, from a folder or the local Hugging Face cache only; a missing
one is a one-line :class:`UserError` saying how to get it.
"""
from __future__ import annotations

import json
import math
import re
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from .errors import UserError

DEFAULT_DINO = "facebook/dino-vits16"
DEFAULT_CLIP = "openai/clip-vit-base-patch32"
DEFAULT_IDENTIFIER = "sks"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DINO_RESIZE, DINO_CROP = 256, 224
LPIPS_SIZE = 256

CLIP_T_NOTE = "raw cosine similarity in [-1, 1]: not x100 (CLIPScore tables) and not x2.5 (CLIPScore's w)"
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


# ----- images ------------------------------------------------------------------------------------

def load_image(path: str | Path) -> Image.Image:
    """Open an image, apply its EXIF orientation, convert to RGB."""
    from .data import load_image as _load
    try:
        return _load(path)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read image ({type(exc).__name__})") from exc


def list_images(folder: str | Path, flag: str = "--generated") -> list[Path]:
    """Image files directly in ``folder``, in sorted file-name order."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"{flag} {folder}: no such folder")
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise UserError(f"{flag} {folder}: no images ({', '.join(s[1:] for s in IMAGE_SUFFIXES)})")
    return files


def _as_images(items: Iterable) -> list[Image.Image]:
    out = []
    for item in items:
        out.append(item.convert("RGB") if isinstance(item, Image.Image) else load_image(item))
    return out


def resize_center_crop(image: Image.Image, resize: int, crop: int) -> Image.Image:
    """Short side to ``resize`` (bicubic; the long side truncated to an int), then a centre crop of
    ``crop`` x ``crop`` (offsets rounded), as torchvision's Resize + CenterCrop do."""
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

def prompt_from_infotext(text: str) -> str:
    """The prompt of an A1111 ``parameters`` text: the lines before ``Negative prompt:``, without the
    trailing ``Steps: ...`` parameter line."""
    lines = text.strip().split("\n")
    if lines and (lines[-1].lstrip().startswith("Steps:") or len(re.findall(r"(?:^|, )[\w -]+: ", lines[-1])) >= 3):
        lines = lines[:-1]
    prompt = []
    for line in lines:
        if line.startswith("Negative prompt:"):
            break
        prompt.append(line)
    return "\n".join(prompt).strip()


def read_png_prompt(path: str | Path) -> str | None:
    """The prompt stored in a PNG's A1111 ``parameters`` text chunk, or None."""
    try:
        with Image.open(path) as im:
            text = im.info.get("parameters") or getattr(im, "text", {}).get("parameters")
    except (OSError, ValueError):
        return None
    if not isinstance(text, str) or not text.strip():
        return None
    return prompt_from_infotext(text)


def read_prompts_file(path: str | Path, files: Sequence[Path]) -> list[str]:
    """Prompts for ``files`` from a JSON object (file name -> prompt) or a text file with one prompt
    per image, in the files' sorted order."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"--prompts {path}: cannot read ({exc.strerror or type(exc).__name__})") from exc
    stripped = text.lstrip()
    if stripped.startswith("{"):
        try:
            mapping = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"--prompts {path}: invalid JSON ({exc.msg} at line {exc.lineno})") from exc
        prompts = []
        for f in files:
            value = mapping.get(f.name, mapping.get(f.stem))
            if not isinstance(value, str):
                raise UserError(f"--prompts {path}: no prompt for {f.name} (keys are file names)")
            prompts.append(value)
        return prompts
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) != len(files):
        raise UserError(f"--prompts {path}: {len(lines)} prompts for {len(files)} generated images; "
                        "give one line per image in sorted file-name order, or a JSON object file name -> prompt")
    return lines


def strip_identifier(prompt: str, identifier: str | None) -> str:
    """``prompt`` without whole-word occurrences of ``identifier``, spaces tidied."""
    if not identifier:
        return prompt
    out = re.sub(rf"(?<![\w]){re.escape(identifier)}(?![\w])", " ", prompt)
    out = re.sub(r"\s+", " ", out).strip()
    return re.sub(r"\s+([,.;:!?])", r"\1", out)


# ----- models ------------------------------------------------------------------------------------

def resolve_encoder(spec: str, flag: str) -> Path:
    """A local folder or a hub id already in the local cache; never the network."""
    path = Path(str(spec)).expanduser()
    how = (f"download it on a connected machine (`hf download {spec}`, or "
           f"`huggingface-cli download {spec}`) or pass a local folder to {flag}")
    if path.is_dir():
        if not (path / "config.json").exists():
            raise UserError(f"{flag} {spec}: folder has no config.json (save the model with save_pretrained)")
        return path
    if _HUB_ID.match(str(spec)) and not str(spec).startswith((".", "/", "~")):
        from huggingface_hub import snapshot_download
        try:
            snapshot = Path(snapshot_download(str(spec), local_files_only=True))
        except Exception as exc:  # not cached, partial cache, bad id: one line either way
            raise UserError(f"{flag} {spec}: not in the local Hugging Face cache; {how}") from exc
        if not (snapshot / "config.json").exists():
            raise UserError(f"{flag} {spec}: the cached copy has no config.json; {how}")
        return snapshot
    raise UserError(f"{flag} {spec}: no such folder, and not a hub id (org/name)")


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


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


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
        self.spec, self.device = str(spec), device or default_device()
        path, config = _encoder_config(spec, flag, ("vit", "dinov2", "dinov2_with_registers"), "a DINO ViT", DEFAULT_DINO)
        self.model_type = config.model_type
        try:
            with _quiet_loading():
                if self.model_type == "vit":
                    model = ViTModel.from_pretrained(path, add_pooling_layer=False)
                else:
                    model = AutoModel.from_pretrained(path)
        except Exception as exc:
            raise UserError(f"{flag} {spec}: cannot load ({type(exc).__name__}: {exc})".splitlines()[0]) from exc
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
        self.spec, self.device = str(spec), device or default_device()
        path, _ = _encoder_config(spec, flag, ("clip",), "a CLIP model", DEFAULT_CLIP)
        try:
            with _quiet_loading():
                model = CLIPModel.from_pretrained(path)
        except Exception as exc:
            raise UserError(f"{flag} {spec}: cannot load ({type(exc).__name__}: {exc})".splitlines()[0]) from exc
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

def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = torch.nn.functional.normalize(a.double(), dim=-1)
    b = torch.nn.functional.normalize(b.double(), dim=-1)
    return a @ b.T


def mean_pairwise_cosine(a: torch.Tensor, b: torch.Tensor | None = None) -> float:
    """Mean cosine over all (a_i, b_j) pairs; with ``b`` None, over all pairs of distinct a_i, a_j."""
    if b is not None:
        return float(cosine_matrix(a, b).mean())
    n = a.shape[0]
    if n < 2:
        return float("nan")
    sim = cosine_matrix(a, a)
    return float((sim.sum() - sim.diagonal().sum()) / (n * (n - 1)))


def load_lpips(net: str = "alex"):
    """(distance function, None) or (None, why LPIPS is unavailable)."""
    try:
        import lpips  # noqa: F401  (needs torchvision)
    except Exception as exc:  # ImportError, or torchvision failing to load with this torch
        return None, (f"the lpips package cannot be imported ({type(exc).__name__}: {exc}); "
                      "install it with `pip install lpips` (it needs a torchvision matching torch)").splitlines()[0]
    try:
        model = lpips.LPIPS(net=net, verbose=False).eval()
    except Exception as exc:  # its backbone weights come from torchvision's download cache
        return None, (f"LPIPS weights for '{net}' are not available ({type(exc).__name__}: {exc}); run "
                      "`python -c \"import lpips; lpips.LPIPS(net='alex')\"` once on a connected machine").splitlines()[0]

    @torch.no_grad()
    def distance(x: torch.Tensor, y: torch.Tensor) -> float:
        return float(model(x, y).mean())
    return distance, None


def _lpips_input(image: Image.Image) -> torch.Tensor:
    arr = np.asarray(resize_center_crop(image, LPIPS_SIZE, LPIPS_SIZE), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0)


def div_score(images: Sequence[Image.Image], prompts: Sequence[str],
              distance: Callable[[torch.Tensor, torch.Tensor], float] | None = None) -> tuple[float | None, str | None]:
    """Mean pairwise LPIPS distance among images of the same prompt: per prompt the mean over its
    pairs, then the mean over prompts with at least two images. Returns (value, None) or
    (None, reason)."""
    groups: dict[str, list[int]] = OrderedDict()
    for i, p in enumerate(prompts):
        groups.setdefault(p, []).append(i)
    groups = {p: idx for p, idx in groups.items() if len(idx) >= 2}
    if not groups:
        return None, "DIV needs at least two generated images of the same prompt"
    if distance is None:
        distance, reason = load_lpips()
        if distance is None:
            return None, reason
    per_prompt = []
    for idx in groups.values():
        xs = [_lpips_input(images[i]) for i in idx]
        pairs = [distance(xs[i], xs[j]) for i in range(len(xs)) for j in range(i + 1, len(xs))]
        per_prompt.append(sum(pairs) / len(pairs))
    return sum(per_prompt) / len(per_prompt), None


class Evaluator:
    """Loads the evaluation models once (lazily) and scores sets of images."""

    def __init__(self, dino_model: str | None = None, clip_model: str | None = None, device: str | None = None,
                 batch_size: int = 16):
        self.dino_spec = dino_model or DEFAULT_DINO
        self.clip_spec = clip_model or DEFAULT_CLIP
        self.device = device or default_device()
        self.batch_size = batch_size
        self._dino: DinoEncoder | None = None
        self._clip: ClipEncoder | None = None

    @property
    def dino(self) -> DinoEncoder:
        if self._dino is None:
            self._dino = DinoEncoder(self.dino_spec, self.device)
        return self._dino

    @property
    def clip(self) -> ClipEncoder:
        if self._clip is None:
            self._clip = ClipEncoder(self.clip_spec, self.device)
        return self._clip

    def load(self) -> "Evaluator":
        """Load both models now (raises UserError when one is missing, before loading either)."""
        if self._dino is None:
            resolve_encoder(self.dino_spec, "--dino-model")
        if self._clip is None:
            resolve_encoder(self.clip_spec, "--clip-model")
        self.dino, self.clip  # noqa: B018
        return self

    # -- embeddings --
    def dino_embed(self, images) -> torch.Tensor:
        return self.dino.embed(_as_images(images), self.batch_size)

    def clip_embed(self, images) -> torch.Tensor:
        return self.clip.embed_images(_as_images(images), self.batch_size)

    def text_embed(self, texts: Sequence[str]) -> torch.Tensor:
        return self.clip.embed_texts(list(texts))

    # -- the metrics --
    def score(self, real, generated, prompts: Sequence[str] | None = None, identifier: str | None = DEFAULT_IDENTIFIER,
              keep_identifier: bool = False, class_generated=None, div: bool = False,
              lpips_distance: Callable | None = None, per_image: bool = True) -> dict:
        """All metrics for one subject: ``real`` and ``generated`` are lists of PIL images or paths;
        ``prompts`` one per generated image (None: no CLIP-T); ``class_generated`` images of the
        class prompt for PRES; ``div`` asks for DIV."""
        real, generated = _as_images(real), _as_images(generated)
        if not real or not generated:
            raise UserError("evaluation needs at least one real and one generated image")
        if prompts is not None and len(prompts) != len(generated):
            raise ValueError(f"{len(prompts)} prompts for {len(generated)} generated images")
        r_dino, g_dino = self.dino.embed(real, self.batch_size), self.dino.embed(generated, self.batch_size)
        r_clip, g_clip = self.clip.embed_images(real, self.batch_size), self.clip.embed_images(generated, self.batch_size)
        dino_pairs, clip_pairs = cosine_matrix(g_dino, r_dino), cosine_matrix(g_clip, r_clip)
        result: dict = {
            "dino": float(dino_pairs.mean()),
            "clip_i": float(clip_pairs.mean()),
            "clip_t": None,
        }
        unavailable: dict[str, str] = {}
        text_prompts = None
        clip_t_each = None
        if prompts is not None:
            text_prompts = [p if keep_identifier else strip_identifier(p, identifier) for p in prompts]
            t_clip = self.clip.embed_texts(text_prompts)
            clip_t_each = (torch.nn.functional.normalize(g_clip.double(), dim=-1)
                           * torch.nn.functional.normalize(t_clip.double(), dim=-1)).sum(-1)
            result["clip_t"] = float(clip_t_each.mean())
        else:
            unavailable["clip_t"] = "no prompts for the generated images"
        if class_generated is not None:
            class_images = _as_images(class_generated)
            if not class_images:
                raise UserError("PRES needs at least one class-prompt image")
            result["pres"] = mean_pairwise_cosine(self.dino.embed(class_images, self.batch_size), r_dino)
        if div:
            value, reason = (None, "no prompts to group the generated images by") if prompts is None else \
                div_score(generated, prompts, lpips_distance)
            result["div"] = value
            if reason:
                unavailable["div"] = reason
        result["real_reference"] = {
            "dino": mean_pairwise_cosine(r_dino), "clip_i": mean_pairwise_cosine(r_clip),
            "about": "mean cosine over pairs of distinct real images (the paper's 'Real Images' row)",
        }
        result["counts"] = {"real": len(real), "generated": len(generated)}
        if class_generated is not None:
            result["counts"]["class_generated"] = len(class_images)
        result["models"] = {"dino": self.dino_spec, "clip": self.clip_spec}
        result["identifier"] = None if keep_identifier else identifier
        result["notes"] = {"clip_t": CLIP_T_NOTE, "pres": "lower is better"}
        if unavailable:
            result["unavailable"] = unavailable
        if per_image:
            result["per_image"] = [
                {"index": i, "dino": float(dino_pairs[i].mean()), "clip_i": float(clip_pairs[i].mean()),
                 **({"prompt": prompts[i], "clip_t_prompt": text_prompts[i], "clip_t": float(clip_t_each[i])}
                    if prompts is not None else {})}
                for i in range(len(generated))]
        return result


def evaluate_dirs(real_dir: str | Path, generated_dir: str | Path, output_dir: str | Path | None = None,
                  prompts_file: str | Path | None = None, identifier: str | None = DEFAULT_IDENTIFIER,
                  keep_identifier: bool = False, class_generated_dir: str | Path | None = None, div: bool = False,
                  dino_model: str | None = None, clip_model: str | None = None, device: str | None = None,
                  batch_size: int = 16, evaluator: Evaluator | None = None) -> dict:
    """The ``dreambooth evaluate`` command as a function: writes ``output_dir/metrics.json``."""
    real_files = list_images(real_dir, "--real")
    gen_files = list_images(generated_dir, "--generated")
    class_files = list_images(class_generated_dir, "--class-generated") if class_generated_dir else None
    if prompts_file:
        prompts = read_prompts_file(prompts_file, gen_files)
    else:
        prompts = [read_png_prompt(f) for f in gen_files]
        missing = [f.name for f, p in zip(gen_files, prompts) if p is None]
        if missing:
            raise UserError(f"--generated {generated_dir}: no prompt in the PNG infotext of {len(missing)} image(s) "
                            f"({', '.join(missing[:3])}{'...' if len(missing) > 3 else ''}); pass --prompts FILE")
    evaluator = (evaluator or Evaluator(dino_model, clip_model, device, batch_size)).load()
    result = evaluator.score([load_image(f) for f in real_files], [load_image(f) for f in gen_files], prompts,
                             identifier=identifier, keep_identifier=keep_identifier,
                             class_generated=[load_image(f) for f in class_files] if class_files else None, div=div)
    for entry in result.get("per_image", []):
        entry["file"] = gen_files[entry["index"]].name
    result["inputs"] = {"real": str(real_dir), "generated": str(generated_dir),
                        "prompts": str(prompts_file) if prompts_file else "png infotext",
                        **({"class_generated": str(class_generated_dir)} if class_generated_dir else {})}
    if output_dir is not None:
        out = Path(output_dir).expanduser()
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(_finite(result), indent=2) + "\n")
    return result


def _finite(obj):
    """JSON has no NaN: write null instead."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def format_summary(result: dict) -> str:
    """A few lines for the terminal."""
    def fmt(v):
        return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.4f}"
    keys = [k for k in ("dino", "clip_i", "clip_t", "pres", "div") if k in result]
    lines = ["  ".join(f"{k.upper().replace('_', '-')} {fmt(result[k])}" for k in keys)]
    for k, why in result.get("unavailable", {}).items():
        lines.append(f"{k.upper().replace('_', '-')} unavailable: {why}")
    return "\n".join(lines)


def save_tiny_eval_models(directory: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Tiny random DINO-ViT and CLIP models of the real classes, saved as folders usable as
    ``--dino-model``/``--clip-model`` (for tests and offline smoke runs; their numbers mean nothing)."""
    from transformers import CLIPConfig, CLIPModel, ViTConfig, ViTModel

    from .tiny import TINY_WORDS
    from .tokenizer_vocab import write_clip_tokenizer
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
