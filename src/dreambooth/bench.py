"""DreamBench runner: the paper's evaluation protocol for one trained subject.

For a subject of class ``C`` trained with identifier ``V``, it generates the paper's 25 prompts for
its kind (object or live: dogs and cats) with ``V`` and ``C`` filled in, N images per prompt at seeds
``seed .. seed+N-1`` (the paper uses N = 4), scores them against the subject's real photos with
:mod:`dreambooth.evaluate` (DINO, CLIP-I, CLIP-T; PRES and DIV on request) and writes:

* ``images/NN-slug/SSS.png``: every generation, with A1111 infotext (prompt, seed, steps, ...);
* ``grids/NN-slug.png``: one grid per prompt;
* ``class_images/`` (with PRES): generations of ``"a C"`` by the same model;
* ``report.json``: all numbers, per prompt and overall, and the settings;
* ``report.md``: the same as tables, beside the paper's numbers, with the grids.

The prompts and classes come from the DreamBooth dataset's ``prompts_and_classes.txt``, shipped in
``dreambooth/data/dreambench.json`` (CC BY 4.0, Ruiz et al., Google Research; see the file).
"""
from __future__ import annotations

import functools
import json
import math
import re
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image

from .errors import UserError
from .generate import load_generation_pipeline, parse_lora_spec
from .infotext import format_infotext, write_png
from .evaluate import (CLIP_T_NOTE, DEFAULT_IDENTIFIER, Evaluator, _finite, list_images, load_image,
                       strip_identifier)

DATA_FILE = Path(__file__).parent / "data" / "dreambench.json"
KINDS = ("object", "live")

# The paper's numbers (Ruiz et al., DreamBooth, CVPR 2023): Table 1 over all 30 subjects, and
# Table 3 (prior-preservation ablation, Imagen).
PAPER_TABLE1 = {
    "Real images": {"dino": 0.774, "clip_i": 0.885, "clip_t": None},
    "DreamBooth (Imagen)": {"dino": 0.696, "clip_i": 0.812, "clip_t": 0.306},
    "DreamBooth (Stable Diffusion)": {"dino": 0.668, "clip_i": 0.803, "clip_t": 0.305},
    "Textual Inversion (Stable Diffusion)": {"dino": 0.569, "clip_i": 0.780, "clip_t": 0.255},
}
PAPER_TABLE3 = {
    "DreamBooth (Imagen) w/ PPL": {"pres": 0.493, "div": 0.391, "dino": 0.684, "clip_i": 0.815, "clip_t": 0.308},
    "DreamBooth (Imagen)": {"pres": 0.664, "div": 0.371, "dino": 0.712, "clip_i": 0.828, "clip_t": 0.306},
}


@functools.lru_cache(maxsize=1)
def dreambench_data() -> dict:
    return json.loads(DATA_FILE.read_text(encoding="utf-8"))


def dreambench_subjects() -> dict[str, dict]:
    """Subject name -> {"class": ..., "kind": "live"|"object"} for the 30 DreamBench subjects."""
    return dict(dreambench_data()["subjects"])


def dreambench_prompts(kind: str, identifier: str = DEFAULT_IDENTIFIER, class_name: str = "dog") -> list[str]:
    """The paper's 25 evaluation prompts for a ``kind`` ('object' or 'live') subject, with
    ``identifier`` and ``class_name`` in place (e.g. 'a sks dog in the jungle')."""
    if kind not in KINDS:
        raise UserError(f"--kind {kind}: choose object or live")
    templates = dreambench_data()["live_prompts" if kind == "live" else "object_prompts"]
    return [t.replace("{identifier}", identifier).replace("{class}", class_name) for t in templates]


def class_prompt(class_name: str) -> str:
    """The class-only prompt whose generations PRES compares with the subject ('a dog')."""
    article = "an" if class_name[:1].lower() in "aeiou" else "a"
    return f"{article} {class_name}"


def slug(text: str, limit: int = 48) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].rstrip("-") or "prompt"


# ----- generation --------------------------------------------------------------------------------

def generate_with_seeds(pipe, prompt: str, seeds: Sequence[int], steps: int = 50, cfg: float = 7.5,
                        width: int | None = None, height: int | None = None, negative_prompt: str = "",
                        batch_size: int = 4) -> list[Image.Image]:
    """One image per seed (a CPU generator per image, so an image depends only on its seed)."""
    images: list[Image.Image] = []
    seeds = list(seeds)
    with torch.no_grad():
        for start in range(0, len(seeds), max(1, batch_size)):
            chunk = seeds[start:start + max(1, batch_size)]
            gens = [torch.Generator("cpu").manual_seed(int(s)) for s in chunk]
            out = pipe(prompt=[prompt] * len(chunk),
                       negative_prompt=[negative_prompt] * len(chunk) if negative_prompt else None,
                       num_inference_steps=steps, guidance_scale=cfg, width=width, height=height,
                       generator=gens, output_type="pil")
            images.extend(out.images)
    return images


def _save_png(image: Image.Image, path: Path, infotext: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(image, path, infotext)


def image_grid(images: Sequence[Image.Image], cols: int | None = None) -> Image.Image:
    """Images in a grid, ``cols`` per row (default: all in one row up to 8)."""
    from .grids import annotated_grid
    if not images:
        raise ValueError("no images for a grid")
    return annotated_grid(list(images), cols or min(len(images), 8))


# ----- the runner --------------------------------------------------------------------------------

def run_bench(generate: Callable[[str, list[int]], list[Image.Image]], real: Sequence, class_name: str, kind: str,
              output: str | Path, identifier: str = DEFAULT_IDENTIFIER, images_per_prompt: int = 4, seed: int = 0,
              pres: bool = False, pres_images: int = 16, div: bool = False, evaluator: Evaluator | None = None,
              infotext: Callable[[str, int], str] | None = None, settings: dict | None = None) -> dict:
    """Generate DreamBench images with ``generate(prompt, seeds) -> images``, score them and write the
    report. ``real`` is a list of images or paths of the subject."""
    if images_per_prompt < 1:
        raise UserError(f"--images-per-prompt {images_per_prompt}: must be at least 1")
    if div and images_per_prompt < 2:
        raise UserError("--div needs --images-per-prompt 2 or more (LPIPS is between generations of one prompt)")
    output = Path(output).expanduser()
    output.mkdir(parents=True, exist_ok=True)
    evaluator = evaluator or Evaluator()
    evaluator.load()  # fail before generating anything if an evaluation model is missing
    real_images = [im if isinstance(im, Image.Image) else load_image(im) for im in real]
    if not real_images:
        raise UserError("--real: no images of the subject")
    prompts = dreambench_prompts(kind, identifier, class_name)
    seeds = [seed + j for j in range(images_per_prompt)]

    from .progress import progress_bar
    total = len(prompts) * images_per_prompt + (pres_images if pres else 0)
    generated, gen_prompts, rows = [], [], []
    with progress_bar(total, "DreamBench") as bar:
        for i, prompt in enumerate(prompts):
            name = f"{i:02d}-{slug(strip_identifier(prompt, identifier))}"
            images = generate(prompt, seeds)
            files = []
            for s, image in zip(seeds, images):
                path = output / "images" / name / f"{s:03d}.png"
                _save_png(image, path, infotext(prompt, s) if infotext else None)
                files.append(str(path.relative_to(output)))
            grid_path = output / "grids" / f"{name}.png"
            _save_png(image_grid(images, cols=min(len(images), 4)), grid_path)
            rows.append({"index": i, "prompt": prompt, "images": files, "grid": str(grid_path.relative_to(output))})
            generated += images
            gen_prompts += [prompt] * len(images)
            bar.advance(len(images))
        class_images = None
        if pres:
            cp = class_prompt(class_name)
            class_images = generate(cp, [seed + j for j in range(pres_images)])
            for j, image in enumerate(class_images):
                _save_png(image, output / "class_images" / f"{seed + j:03d}.png", infotext(cp, seed + j) if infotext else None)
            bar.advance(len(class_images))

    scores = evaluator.score(real_images, generated, gen_prompts, identifier=identifier, class_generated=class_images,
                             div=div)
    per_image = scores.pop("per_image")
    k = images_per_prompt
    for row in rows:
        chunk = per_image[row["index"] * k:(row["index"] + 1) * k]
        for key in ("dino", "clip_i", "clip_t"):
            row[key] = sum(e[key] for e in chunk) / len(chunk)
        row["clip_t_prompt"] = chunk[0]["clip_t_prompt"]
    report = {
        "subject": (settings or {}).get("subject"),
        "class": class_name, "kind": kind, "identifier": identifier,
        "images_per_prompt": images_per_prompt, "seeds": seeds, "prompts": len(prompts),
        "metrics": {key: scores[key] for key in ("dino", "clip_i", "clip_t", "pres", "div") if key in scores},
        "real_reference": scores["real_reference"],
        "unavailable": scores.get("unavailable", {}),
        "counts": scores["counts"],
        "models": scores["models"],
        "notes": {**scores["notes"], "protocol": "DINO/CLIP-I: mean cosine over all (generated, real) pairs; "
                  "CLIP-T: identifier removed from the prompt before encoding"},
        "paper": {"table1": PAPER_TABLE1, "table3": PAPER_TABLE3},
        "settings": settings or {},
        "per_prompt": rows,
    }
    if pres:
        report["class_prompt"] = class_prompt(class_name)
    (output / "report.json").write_text(json.dumps(_finite(report), indent=2) + "\n")
    (output / "report.md").write_text(render_markdown(report))
    return report


def _f(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.3f}"


def render_markdown(report: dict) -> str:
    m = report["metrics"]
    title = report.get("subject") or report["class"]
    lines = [f"# DreamBench report: {title}", "",
             f"Class **{report['class']}** ({report['kind']} subject), identifier `{report['identifier']}`, "
             f"{report['prompts']} prompts x {report['images_per_prompt']} images (seeds "
             f"{report['seeds'][0]}..{report['seeds'][-1]}).", ""]
    settings = report.get("settings") or {}
    if settings:
        lines += ["Settings: " + ", ".join(f"{k} `{v}`" for k, v in settings.items() if v not in (None, "", [], ())), ""]
    lines += ["## Scores", "",
              "| | DINO | CLIP-I | CLIP-T | PRES (lower is better) | DIV |", "|---|---|---|---|---|---|",
              f"| **this run** | {_f(m.get('dino'))} | {_f(m.get('clip_i'))} | {_f(m.get('clip_t'))} | "
              f"{_f(m.get('pres')) if 'pres' in m else '-'} | {_f(m.get('div')) if 'div' in m else '-'} |",
              f"| real images of this subject (distinct pairs) | {_f(report['real_reference']['dino'])} | "
              f"{_f(report['real_reference']['clip_i'])} | - | - | - |"]
    for name, row in PAPER_TABLE1.items():
        lines.append(f"| paper Table 1: {name} | {_f(row['dino'])} | {_f(row['clip_i'])} | "
                     f"{_f(row['clip_t']) if row['clip_t'] is not None else 'n/a'} | - | - |")
    for name, row in PAPER_TABLE3.items():
        lines.append(f"| paper Table 3: {name} | {_f(row['dino'])} | {_f(row['clip_i'])} | {_f(row['clip_t'])} | "
                     f"{_f(row['pres'])} | {_f(row['div'])} |")
    lines += ["", f"CLIP-T is the {CLIP_T_NOTE}. The paper's numbers average 30 subjects; one subject's "
              "numbers vary much more.", ""]
    for key, why in report.get("unavailable", {}).items():
        lines.append(f"- {key.upper().replace('_', '-')} unavailable: {why}")
    if report.get("unavailable"):
        lines.append("")
    lines += [f"Models: DINO `{report['models']['dino']}`, CLIP `{report['models']['clip']}`.", "",
              "## Per prompt", "", "| # | prompt | DINO | CLIP-I | CLIP-T | grid |", "|---|---|---|---|---|---|"]
    for row in report["per_prompt"]:
        lines.append(f"| {row['index']} | {row['prompt']} | {_f(row['dino'])} | {_f(row['clip_i'])} | "
                     f"{_f(row['clip_t'])} | [grid]({row['grid']}) |")
    lines += ["", "## Grids", ""]
    for row in report["per_prompt"]:
        lines += [f"**{row['index']}. {row['prompt']}**", "", f"![{row['prompt']}]({row['grid']})", ""]
    lines += ["---", "Prompts and classes: DreamBooth dataset (Ruiz et al., Google Research), CC BY 4.0.", ""]
    return "\n".join(lines)


# ----- the command --------------------------------------------------------------------------------

def bench_command(model: str, real: str, output: str, subject: str | None = None, class_name: str | None = None,
                  kind: str | None = None, identifier: str = DEFAULT_IDENTIFIER, loras: Sequence[str] = (),
                  vae: str | None = None, images_per_prompt: int = 4, steps: int = 50, cfg: float = 7.5,
                  seed: int = 0, size: int | None = None, negative_prompt: str = "", batch_size: int = 4,
                  pres: bool = False, pres_images: int = 16, div: bool = False, dino_model: str | None = None,
                  clip_model: str | None = None, device: str | None = None, dtype: str = "auto", pipe=None) -> dict:
    if subject:
        subjects = dreambench_subjects()
        if subject not in subjects:
            raise UserError(f"--subject {subject}: not a DreamBench subject; one of {', '.join(sorted(subjects))}")
        class_name = class_name or subjects[subject]["class"]
        kind = kind or subjects[subject]["kind"]
    if not class_name:
        raise UserError("--class is required (the subject's class noun, e.g. dog), or give --subject NAME")
    if not kind:
        raise UserError("--kind is required: live (pets and other animals) or object; or give --subject NAME")
    real_files = list_images(real, "--real")
    evaluator = Evaluator(dino_model, clip_model, device)
    evaluator.load()
    torch_dtype = {"auto": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    if pipe is None:
        pipe = load_generation_pipeline(model, [parse_lora_spec(s) for s in loras], vae, device, torch_dtype)
        pipe.set_progress_bar_config(disable=True)
    sampler = type(pipe.scheduler).__name__
    width = height = size

    def generate(prompt: str, seeds: list[int]) -> list[Image.Image]:
        return generate_with_seeds(pipe, prompt, seeds, steps, cfg, width, height, negative_prompt, batch_size)

    def infotext(prompt: str, s: int) -> str:
        side = size or int(pipe.unet.config.sample_size * pipe.vae_scale_factor)
        return format_infotext(prompt, negative_prompt, {"Steps": steps, "Sampler": sampler, "CFG scale": cfg,
                                                         "Seed": s, "Size": f"{side}x{side}", "Model": Path(model).name})

    settings = {"subject": subject, "model": model, "loras": list(loras), "vae": vae, "steps": steps, "cfg": cfg,
                "sampler": sampler, "size": size, "negative_prompt": negative_prompt, "real": str(real)}
    return run_bench(generate, real_files, class_name, kind, output, identifier, images_per_prompt, seed, pres,
                     pres_images, div, evaluator, infotext, settings)
