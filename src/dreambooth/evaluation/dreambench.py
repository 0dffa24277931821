"""DreamBench runner: the paper's evaluation protocol for one trained subject.

For a subject of class ``C`` trained with identifier ``V``, it generates the paper's 25 prompts for
its kind (object or live: dogs and cats) with ``V`` and ``C`` filled in, N images per prompt at seeds
``seed .. seed+N-1`` (the paper uses N = 4) through the one sampling function, scores them against
the subject's real photos (``metrics``: DINO, CLIP-I, CLIP-T; PRES and DIV on request) and writes:

* ``images/NN-slug/00001-<seed>.png``: every generation, with its infotext (``--from-image`` remakes it);
* ``grids/NN-slug.png``: one grid per prompt;
* ``class_images/`` (with PRES): generations of ``"a C"`` by the same model;
* ``report.json``: all numbers, per prompt and overall, and the settings;
* ``report.md``: the same as tables, beside the paper's numbers, with the grids (``report``).

The prompts and classes come from the DreamBooth dataset's ``prompts_and_classes.txt``, shipped in
``dreambooth/data/dreambench.json`` (CC BY 4.0, Ruiz et al., Google Research; see the file).
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
from pathlib import Path
from typing import Sequence

from .. import progress
from ..errors import UserError, file_operation
from ..generation.params import GenerationParams
from ..generation.pipeline import GenerationPipeline
from ..generation.sampling import generate
from ..grid import annotated_grid
from ..images import open_image, write_png
from ..sigterm import Terminated, sigterm_as_ctrl_c  # noqa: F401 (Terminated: what a caller catches)
from ..outputs import BENCH_REPORT_JSON, BENCH_REPORT_MD, BENCH_RESULTS, PREVIOUS_OUTPUT_DIR, check_not_replacing, within
from .folders import BENCH_MARK
from .encoders import DEFAULT_CLIP, DEFAULT_DINO
from .metrics import Evaluator, finite, load_lpips, real_photos
from .prompts import DEFAULT_IDENTIFIER, strip_identifier
from .report import PAPER_TABLE1, PAPER_TABLE3, render_markdown
from .trained import first_trained_subject, pipeline_sources, resolve_subject

DATA_FILE = Path(__file__).resolve().parent.parent / "data" / "dreambench.json"
KINDS = ("object", "live")
PROTOCOL = {"steps": 50, "cfg_scale": 7.5, "images_per_prompt": 4, "seed": 0}   # our reading of the paper
PHOTOS_SOURCE = "https://github.com/google/dreambooth (folder dataset/, one folder of photos per subject)"


def protocol_params(**changes) -> GenerationParams:
    """Sampling settings at the protocol's steps, CFG and first seed (``changes`` on top): what the
    CLI runs with, and what ``run_bench`` uses when given no params."""
    base = {"steps": PROTOCOL["steps"], "cfg_scale": PROTOCOL["cfg_scale"], "seed": PROTOCOL["seed"]}
    return GenerationParams("", **{**base, **changes})


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


def bench_photos(real: str | Path) -> list[Path]:
    """The subject's photos in the folder ``real``; a folder that is not there says where DreamBench's are."""
    if not Path(real).expanduser().exists():
        raise UserError(f"--real {real}: no such folder; DreamBench's photos are at {PHOTOS_SOURCE}")
    return real_photos(real)


def subject_settings(subject: str | None, class_name: str | None, kind: str | None,
                     trained_class: str | None = None) -> tuple[str, str]:
    """(class, kind) from a DreamBench subject name or given directly, else the class the model's
    class prompt named (``trained_class``); one-line errors otherwise."""
    if not class_name and not subject and trained_class:
        class_name = trained_class
        progress.message(f"--class {class_name}: from the class prompt the model was trained with")
    if subject:
        subjects = dreambench_subjects()
        subject = {name.lower(): name for name in subjects}.get(subject.lower(), subject)
        if subject not in subjects:
            raise UserError(f"--subject {subject}: not a DreamBench subject; one of {', '.join(sorted(subjects))}")
        class_name = class_name or subjects[subject]["class"]
        kind = kind or subjects[subject]["kind"]
    if not class_name:
        raise UserError("--class is required (the subject's class noun, e.g. dog), or give --subject NAME")
    if not kind:
        raise UserError("--kind is required: live (pets and other animals) or object; or give --subject NAME")
    return class_name, kind


def check_bench_output(output: str | Path, overwrite: bool, real: Sequence[str | Path] = ()) -> None:
    """One-line errors, before anything loads, for an output whose results a run could not replace:
    results there that no bench run wrote (a folder of photos called images/, say), results holding
    the real photos, or an earlier run's results without ``--overwrite``."""
    output = Path(output).expanduser()
    held = [name for name in BENCH_RESULTS if (output / name).exists()]
    if (output / PREVIOUS_OUTPUT_DIR).exists():
        raise UserError(f"--output {output}: {output / PREVIOUS_OUTPUT_DIR} holds the results an interrupted "
                        "--overwrite run replaced; move them back or delete them")
    if held and not (output / BENCH_MARK).exists():   # only the bench's own mark: a report.json can be anyone's
        raise UserError(f"--output {output}: holds {', '.join(held)} that no dreambooth bench run wrote "
                        f"(no {BENCH_MARK} mark); choose another --output"
                        + (f", or, if an older dreambooth bench wrote them, mark them its: touch {output / BENCH_MARK}"
                           if (output / "report.json").is_file() else ""))
    for path in real:
        for name in held:
            if within(Path(path), output / name):
                raise UserError(f"--real {path}: lies in --output {output / name}, which a run replaces; "
                                "choose another --output")
    check_not_replacing(output, BENCH_RESULTS, overwrite)


@contextlib.contextmanager
def _replacing(output: Path):
    """An earlier run's results are moved aside while this run writes its own: deleted when it has
    finished, put back when it fails or is interrupted."""
    previous = output / PREVIOUS_OUTPUT_DIR
    moved = [name for name in BENCH_RESULTS if (output / name).exists()]
    with file_operation("move an earlier run's results aside", "--output"):
        output.mkdir(parents=True, exist_ok=True)
        (output / BENCH_MARK).touch()
        if moved:
            previous.mkdir()
            for name in moved:
                os.replace(output / name, previous / name)
    try:
        yield
    except BaseException:
        for name in BENCH_RESULTS:
            path = output / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        for name in moved:
            os.replace(previous / name, output / name)
        if moved:
            previous.rmdir()
            progress.message(f"{output}: the earlier run's results are back as they were")
        else:                         # nothing of a bench run is here: no mark that says so
            (output / BENCH_MARK).unlink(missing_ok=True)
        raise
    if moved:
        shutil.rmtree(previous)


def run_bench(pipeline: GenerationPipeline, params: GenerationParams | None, real: Sequence, class_name: str | None,
              kind: str, output: str | Path, identifier: str | None = None, images_per_prompt: int = 4,
              pres: bool = False, pres_images: int = 16, div: bool = False, evaluator: Evaluator | None = None,
              settings: dict | None = None, fast_batches: bool = True, max_prompts: int | None = None,
              overwrite: bool = False) -> dict:
    """Generate the DreamBench images on ``pipeline`` with ``params`` (its prompt is ignored; its seed
    is the first seed of every prompt; None: ``protocol_params()``, 50 steps at CFG 7.5 as the CLI),
    score them against ``real`` (images or paths) and write the report. ``identifier`` and
    ``class_name`` None: as the model's ``training_args.json`` records them (else ``sks``; the class is
    then required). ``max_prompts`` keeps only the first prompts: a quick check, not the paper's
    protocol (report.md says so). An earlier run's results in ``output`` are replaced only with
    ``overwrite``, and kept until this run has finished (or put back: on an error, Ctrl-C or SIGTERM)."""
    params = protocol_params() if params is None else params
    check_bench_settings(images_per_prompt, div, params.seed)
    dreambench_prompts(kind)                      # a kind the protocol has, before anything is written
    if max_prompts is not None and max_prompts < 1:
        raise UserError(f"max_prompts {max_prompts}: at least 1 (None: all 25)")
    if isinstance(real, (str, os.PathLike)):      # a folder of photos, as the CLI takes it
        real = bench_photos(real)
    output = Path(output).expanduser()
    check_bench_output(output, overwrite, [p for p in real if isinstance(p, (str, Path))])
    identifier, class_name = resolve_subject(first_trained_subject(pipeline_sources(pipeline)), identifier,
                                             class_name, DEFAULT_IDENTIFIER)
    if not class_name:
        raise UserError("class_name (--class) is required: the subject's class noun, e.g. dog; the model's "
                        "training_args.json records no class prompt to take it from")
    evaluator = (evaluator or Evaluator()).load()   # fail before generating anything if a model is missing
    real = [im if not isinstance(im, (str, Path)) else open_image(im, "--real") for im in real]
    lpips_distance = None
    if div:                  # said before the images are made, not after
        lpips_distance, why = load_lpips()
        if why:
            progress.warn(f"--div: DIV unavailable ({why}); the run goes on without it")
    with sigterm_as_ctrl_c(), _replacing(output):
        return _bench(pipeline, params, real, class_name, kind, output, identifier, images_per_prompt, pres,
                      pres_images, div, evaluator, settings, fast_batches, max_prompts, lpips_distance)


def check_bench_settings(images_per_prompt: int, div: bool, seed: int) -> None:
    """One-line errors for settings the protocol cannot run with (before any model loads)."""
    if images_per_prompt < 1:
        raise UserError(f"--images-per-prompt {images_per_prompt}: must be at least 1")
    if div and images_per_prompt < 2:
        raise UserError("--div needs --images-per-prompt 2 or more (LPIPS is between generations of one prompt)")
    if seed < 0:
        raise UserError(f"--seed {seed}: DreamBench needs a fixed first seed (0 or more)")


def _bench(pipeline, params, real, class_name, kind, output, identifier, images_per_prompt, pres, pres_images,
           div, evaluator, settings, fast_batches, max_prompts, lpips_distance) -> dict:
    reference = evaluator.reference(real)
    prompts = dreambench_prompts(kind, identifier, class_name)[:max_prompts]
    per_prompt = params.replace(batch_size=images_per_prompt, batch_count=1)

    total = len(prompts) * images_per_prompt + (pres_images if pres else 0)
    generated, gen_prompts, rows = [], [], []
    with progress.task("DreamBench", total) as bar:
        for i, prompt in enumerate(prompts):
            name = f"{i:02d}-{slug(strip_identifier(prompt, identifier))}"
            made = generate(pipeline, per_prompt.replace(prompt=prompt), output / "images" / name,
                            fast_batches=fast_batches, task=bar)
            images = [m.image for m in made]
            grid_path = output / "grids" / f"{name}.png"
            grid_path.parent.mkdir(parents=True, exist_ok=True)
            write_png(annotated_grid(images, min(len(images), 4)), grid_path, made[0].infotext)   # as A1111's grids
            rows.append({"index": i, "prompt": prompt, "images": [str(m.path.relative_to(output)) for m in made],
                         "grid": str(grid_path.relative_to(output))})
            generated += images
            gen_prompts += [prompt] * len(images)
        class_images = None
        if pres:
            made = generate(pipeline, params.replace(prompt=class_prompt(class_name), batch_size=1,
                                                     batch_count=pres_images),
                            output / "class_images", fast_batches=fast_batches, task=bar)
            class_images = [m.image for m in made]

    scores = evaluator.score(reference, generated, gen_prompts, identifier=identifier, class_generated=class_images,
                             div=div, lpips_distance=lpips_distance, steps=params.steps)
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
        "images_per_prompt": images_per_prompt, "seeds": [params.seed + j for j in range(k)], "prompts": len(prompts),
        "metrics": {key: scores[key] for key in ("dino", "clip_i", "clip_t", "pres", "div") if key in scores},
        "real_reference": scores["real_reference"],
        "unavailable": scores.get("unavailable", {}),
        "counts": scores["counts"],
        "models": scores["models"],
        "notes": {**scores["notes"], "protocol": "DINO/CLIP-I: mean cosine over all (generated, real) pairs; "
                  "CLIP-T: identifier removed from the prompt before encoding"},
        "paper": {"table1": PAPER_TABLE1, "table3": PAPER_TABLE3},
        "settings": {"sampler": params.sampler, "schedule": params.schedule, "steps": params.steps,
                     "cfg": params.cfg_scale, "negative_prompt": params.negative_prompt,
                     "clip_skip": params.clip_skip or 1, **(settings or {})},
        "per_prompt": rows,
    }
    if pres:
        report["class_prompt"] = class_prompt(class_name)
    native = getattr(pipeline, "default_size", None)
    report["off_protocol"] = off_protocol(params, images_per_prompt, len(prompts), len(dreambench_prompts(kind)),
                                          scores["models"], tuple(native) if native else None)
    (output / BENCH_REPORT_JSON).write_text(json.dumps(finite(report), indent=2) + "\n")
    (output / BENCH_REPORT_MD).write_text(render_markdown(report))
    return report


def off_protocol(params: GenerationParams, images_per_prompt: int, prompts: int, all_prompts: int,
                 models: dict | None = None, native_size: tuple[int, int] | None = None) -> list[str]:
    """How a run's settings differ from the protocol the paper's numbers come from ([] where they do not):
    ``models`` the evaluation models used ({"dino": id, "clip": id}; None: the defaults), ``native_size``
    the model's own (width, height): a size set in ``params`` other than it (or with it unknown) is off."""
    differs = []
    if prompts < all_prompts:
        differs.append(f"{prompts} of {all_prompts} prompts")
    for name, value, want in (("images per prompt", images_per_prompt, PROTOCOL["images_per_prompt"]),
                              ("steps", params.steps, PROTOCOL["steps"]),
                              ("CFG", params.cfg_scale, PROTOCOL["cfg_scale"]),
                              ("first seed", params.seed, PROTOCOL["seed"])):
        if value != want:
            differs.append(f"{name} {value:g} (protocol {want:g})")
    for key, name, want in (("dino", "DINO", DEFAULT_DINO), ("clip", "CLIP", DEFAULT_CLIP)):
        used = (models or {}).get(key) or want
        if used != want:               # the paper's numbers are of ViT-S/16 DINO and CLIP ViT-B/32
            differs.append(f"{name} model {used} (protocol {want})")
    if params.negative_prompt:
        differs.append(f"negative prompt '{params.negative_prompt}' (protocol none)")
    size = (params.width, params.height)
    if size != (None, None) and size != native_size:
        native = f"{native_size[0]}x{native_size[1]}" if native_size else "the model's own"
        differs.append(f"size {params.width or '-'}x{params.height or '-'} (protocol {native})")
    if (params.clip_skip or 1) != 1:
        differs.append(f"clip skip {params.clip_skip} (protocol 1)")
    return differs
