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
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from .. import progress
from ..devices import pick_device
from ..errors import UserError
from ..images import MASK_SUFFIX, as_image, is_mask_file, list_images, open_image
from ..outputs import GRID_PREFIX, METRICS_FILE, check_not_replacing
from .encoders import DEFAULT_CLIP, DEFAULT_DINO, LPIPS_SIZE, ClipEncoder, DinoEncoder, resize_center_crop, resolve_encoder
from .folders import bench_images, check_not_validation_folder, validation_record
from .prompts import DEFAULT_IDENTIFIER, clip_t_text, identifier_pattern, read_png_prompt_steps, read_prompts_file

CLIP_T_NOTE = "raw cosine similarity in [-1, 1]: not x100 (CLIPScore tables) and not x2.5 (CLIPScore's w)"


def _as_images(items: Iterable) -> list[Image.Image]:
    """Images, paths, or a folder's path (its images, in name order); one image alone is a list of one."""
    if isinstance(items, (str, os.PathLike)):
        items = list_images(items, "folder")
    elif isinstance(items, (Image.Image, np.ndarray)):
        items = [items]
    return [as_image(item) for item in items]


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


@dataclass
class RealSet:
    """Embeddings of the subject's real photos."""
    count: int
    dino: torch.Tensor
    clip: torch.Tensor


class Evaluator:
    """Loads the evaluation models once (lazily) and scores sets of images."""

    def __init__(self, dino_model: str | None = None, clip_model: str | None = None, device: str | None = None,
                 batch_size: int = 16):
        self.dino_spec = dino_model or DEFAULT_DINO
        self.clip_spec = clip_model or DEFAULT_CLIP
        self.device = str(pick_device(device))
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

    def reference(self, real) -> "RealSet":
        """The subject's real photos, embedded once (a run that scores often, validation, keeps it)."""
        images = _as_images(real)
        if not images:
            raise UserError("evaluation needs at least one real image of the subject")
        return RealSet(len(images), self.dino.embed(images, self.batch_size), self.clip.embed_images(images, self.batch_size))

    # -- the metrics --
    def score(self, real, generated, prompts: Sequence[str] | None = None, identifier: str | None = DEFAULT_IDENTIFIER,
              keep_identifier: bool = False, class_generated=None, div: bool = False,
              lpips_distance: Callable | None = None, per_image: bool = True,
              steps: int | Sequence[int | None] | None = None, identifier_flag: str | None = "--identifier") -> dict:
        """All metrics for one subject: ``real`` is a :class:`RealSet` or a list of PIL images or paths,
        ``generated`` a list; ``prompts`` one per generated image (None: no CLIP-T); ``class_generated``
        images of the class prompt for PRES; ``div`` asks for DIV; ``steps`` the sampling steps of the
        images (one number, or one per image; None: unknown), which a prompt's ``[from:to:when]`` needs.
        ``identifier_flag`` names what set the identifier in the warning when no prompt holds it; None
        says nothing (a caller that scores often, validation, says it once in its own terms)."""
        ref = real if isinstance(real, RealSet) else self.reference(real)
        generated = _as_images(generated)
        if not generated:
            raise UserError("evaluation needs at least one real and one generated image")
        if isinstance(prompts, str):
            raise UserError("prompts: one per generated image (a list), not one text")
        if prompts is not None and len(prompts) != len(generated):
            raise UserError(f"prompts: {len(prompts)} for {len(generated)} generated images; give one per image")
        r_dino, g_dino = ref.dino, self.dino.embed(generated, self.batch_size)
        r_clip, g_clip = ref.clip, self.clip.embed_images(generated, self.batch_size)
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
            each_steps = list(steps) if isinstance(steps, Sequence) else [steps] * len(prompts)
            if len(each_steps) != len(prompts):
                raise UserError(f"steps: {len(each_steps)} for {len(prompts)} prompts; give one per image, or one number")
            text_prompts = [clip_t_text(p, None if keep_identifier else identifier, n)
                            for p, n in zip(prompts, each_steps)]
            if identifier and identifier_flag and not keep_identifier and \
                    not any(identifier_pattern(identifier).search(p) for p in prompts):
                progress.warn(f"{identifier_flag} {identifier}: in none of the prompts, so nothing is taken out for "
                              "CLIP-T; give the identifier the model was trained with")
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
        if ref.count < 2:
            unavailable["real_reference"] = "the real images' row needs two real photos or more"
        result["counts"] = {"real": ref.count, "generated": len(generated)}
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


def real_photos(folder: str | Path, flag: str = "--real", quiet: bool = False) -> list[Path]:
    """The subject's photos in ``folder``, without the masks (``NAME.mask.png``, any case) a training
    folder for ``--masked-loss`` keeps beside them (validation scores with it too: the same numbers)."""
    files = list_images(folder, flag, quiet=quiet)
    photos = [f for f in files if not is_mask_file(f)]
    if not photos:
        raise UserError(f"{flag} {folder}: only masks (*{MASK_SUFFIX}), no photos")
    if len(photos) < len(files) and not quiet:
        progress.message(f"{flag} {folder}: leaving out {len(files) - len(photos)} mask file(s) (*{MASK_SUFFIX})")
    return photos


def generated_images(folder: str | Path, flag: str) -> list[Path]:
    """A folder's generated images, without the grids a prompt matrix or a plot leaves beside them; of a
    bench run's folder (or its images/), the images in its prompt folders."""
    files = bench_images(folder, flag)
    if files == []:
        raise UserError(f"{flag} {folder}: a dreambooth bench run's folder with no images in its prompt folders")
    files = [f for f in (files or list_images(folder, flag)) if not f.name.startswith(GRID_PREFIX)]
    if not files:
        raise UserError(f"{flag} {folder}: only grid images ({GRID_PREFIX}*.png), no generated images")
    return files


def evaluate_dirs(real_dir: str | Path, generated_dir: str | Path, output_dir: str | Path | None = None,
                  prompts_file: str | Path | None = None, identifier: str | None = DEFAULT_IDENTIFIER,
                  keep_identifier: bool = False, class_generated_dir: str | Path | None = None, div: bool = False,
                  dino_model: str | None = None, clip_model: str | None = None, device: str | None = None,
                  batch_size: int = 16, evaluator: Evaluator | None = None, overwrite: bool = False) -> dict:
    """The ``dreambooth evaluate`` command as a function: writes ``output_dir/metrics.json`` (one
    there already only with ``overwrite``)."""
    if output_dir is not None:
        check_not_replacing(output_dir, (METRICS_FILE,), overwrite)
    real_files = real_photos(real_dir)
    check_not_validation_folder(generated_dir, "--generated")
    gen_files = generated_images(generated_dir, "--generated")
    class_files = generated_images(class_generated_dir, "--class-generated") if class_generated_dir else None
    generated = [open_image(f, "--generated") for f in gen_files]      # an unreadable file said as such, first
    recorded = [read_png_prompt_steps(f) for f in gen_files]
    steps = [n for _, n in recorded]       # the prompt's schedule ends where the image's run did
    if prompts_file:
        prompts = read_prompts_file(prompts_file, gen_files)
    else:
        prompts = [p for p, _ in recorded]
        missing = [f.name for f, p in zip(gen_files, prompts) if p is None]
        if missing:
            raise UserError(f"--generated {generated_dir}: no prompt in the infotext of {len(missing)} image(s) "
                            f"({', '.join(missing[:3])}{'...' if len(missing) > 3 else ''}); pass --prompts FILE")
    class_images = [open_image(f, "--class-generated") for f in class_files] if class_files else None
    klass = (validation_record(generated_dir) or {}).get("class_prompt")
    if class_files is None and klass in prompts and len(set(prompts)) > 1:
        # a validation step folder: its class-prompt images are PRES, as validation scored them
        apart = [p == klass for p in prompts]
        class_images = [g for g, a in zip(generated, apart) if a]
        gen_files, generated, prompts, steps = ([x for x, a in zip(xs, apart) if not a]
                                                for xs in (gen_files, generated, prompts, steps))
        progress.message(f"--generated {generated_dir}: {len(class_images)} image(s) of the run's class prompt "
                         f"'{klass}' scored as PRES, apart from the subject's")
    evaluator = (evaluator or Evaluator(dino_model, clip_model, device, batch_size)).load()
    result = evaluator.score([open_image(f, "--real") for f in real_files], generated, prompts,
                             identifier=identifier, keep_identifier=keep_identifier,
                             class_generated=class_images, div=div, steps=steps)
    for entry in result.get("per_image", []):
        entry["file"] = _shown(gen_files[entry["index"]], generated_dir)
    result["inputs"] = {"real": str(real_dir), "generated": str(generated_dir),
                        "prompts": str(prompts_file) if prompts_file else "png infotext",
                        **({"class_generated": str(class_generated_dir)} if class_generated_dir else {})}
    if output_dir is not None:
        out = Path(output_dir).expanduser()
        out.mkdir(parents=True, exist_ok=True)
        (out / METRICS_FILE).write_text(json.dumps(finite(result), indent=2) + "\n")
    return result


def _shown(file: Path, folder: str | Path) -> str:
    """The file's path within the folder given (a bench run's prompt folder/name), else its name."""
    try:
        return file.relative_to(Path(folder).expanduser()).as_posix()
    except ValueError:
        return file.name


def finite(obj):
    """JSON has no NaN: write null instead."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
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
