"""``dreambooth demo``: teach the toy model a subject it has never seen, on a CPU, in a few minutes.

The subject is a green square with white diagonal stripes. The toy base model was pretrained only on
solid shapes, so no prompt can make it draw stripes: like a particular dog for Stable Diffusion, the
subject has to be learned from pictures. The demo

1. renders 5 instance pictures of the subject on backgrounds it picks (red, blue, purple);
2. samples the base model for the subject prompt on backgrounds never shown (orange, black, yellow)
   and for the class prompt ("a square"): ``before.png``;
3. trains DreamBooth with prior preservation through ``dreambooth.training.train``, the function
   ``dreambooth train`` calls, with the toy model's defaults (its backdrops recoloured, not named);
4. samples the same prompts and seeds again: ``after.png`` (every sample, through the one sampling
   path, also in ``samples/`` with its infotext);
5. reads every picture with the oracle and writes ``metrics.json``: subject fidelity (the subject's
   two colours, patterned), context fidelity (the requested background), and class drift (class
   prompt samples that show a pattern: prior preservation keeps this near zero).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from .. import progress
from ..errors import UserError, file_operation
from ..generation.params import GenerationParams
from ..generation.pipeline import GenerationPipeline, load_generation_pipeline
from ..generation.sampling import generate
from ..grid import annotated_grid
from ..outputs import METRICS_FILE, PREVIOUS_OUTPUT_DIR, check_output_folder
from ..training.config import build_config, load_preset
from ..training.trainer import train
from . import oracle
from .backdrops import ToyBackdrops
from .measure import RESOLUTION, SAMPLER
from .world import DEMO_SUBJECT, Subject, render

INSTANCE_BACKGROUNDS = ("red", "blue", "purple", "red", "blue")
NEW_BACKGROUNDS = ("orange", "black", "yellow")
IDENTIFIER = "sks"
SEEDS = tuple(range(6))
LORA_LEARNING_RATE = 1e-3   # the preset's rate is for full fine-tuning; small LoRAs need more
# Fewer than the toy preset's 1,200 steps, so the whole demo stays under 3 minutes on 2 CPU cores; the
# demo's subject (bold stripes) is learned by then.
DEMO_STEPS = 400
# Written first into the demo's folder: a folder holding it is an earlier demo's, which a demo writes again.
DEMO_MARK = ".dreambooth-demo"


def instance_prompt(subject: Subject, identifier: str = IDENTIFIER) -> str:
    return f"a {identifier} {subject.shape}"


def class_prompt(subject: Subject) -> str:
    return f"a {subject.shape}"


def context_prompt(subject: Subject, background: str, identifier: str = IDENTIFIER) -> str:
    return f"a {identifier} {subject.shape} on a {background} background"


def write_instance_images(subject: Subject, folder: str | Path, backgrounds=INSTANCE_BACKGROUNDS,
                          seed: int = 0) -> list[Path]:
    """One rendered picture of ``subject`` per background (positions and sizes vary)."""
    from PIL import Image
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 42])
    paths = []
    for i, bg in enumerate(backgrounds):
        path = folder / f"{subject.shape}-{i:02d}-{bg}.png"
        Image.fromarray(render(subject.scene(bg, rng))).save(path)
        paths.append(path)
    return paths


def sample(pipe, prompts: list[str], seeds=SEEDS, steps: int = 30, cfg: float = 5.0,
           output_dir: Path | None = None, fast_batches: bool = False) -> list[list[np.ndarray]]:
    """``[prompt][seed]`` uint8 pictures through the one sampling path (consecutive ``seeds``: one
    run per prompt, image i with seed seeds[0] + i); with ``output_dir`` each is saved with its infotext.
    Image by image (as the toy benchmark's figures were measured), or with ``fast_batches`` a prompt's
    seeds in one batch: a few times faster on this small model, other bits, and each image still remade
    from its PNG (the batch it was made in is replayed)."""
    seeds = list(seeds)
    if seeds != list(range(seeds[0], seeds[0] + len(seeds))):
        raise ValueError(f"seeds {seeds}: consecutive seeds only (one generation run per prompt)")
    pipeline = pipe if isinstance(pipe, GenerationPipeline) else GenerationPipeline(pipe)
    grid = []
    with progress.task("sampling", len(prompts) * len(seeds)) as bar:
        for prompt in prompts:
            params = GenerationParams(prompt, sampler=SAMPLER, steps=steps, cfg_scale=cfg, seed=seeds[0],
                                      width=RESOLUTION, height=RESOLUTION, batch_size=len(seeds))
            grid.append([oracle.to_array(made.image) for made in
                         generate(pipeline, params, output_dir, fast_batches=fast_batches, task=bar)])
    return grid


def score(grid: list[list[np.ndarray]], subject: Subject, backgrounds) -> dict:
    """Oracle figures for a grid whose rows are the context prompts (one per background) and, last,
    the class prompt."""
    shows_subject, in_context, both, pattern_in_context = [], [], [], []
    for row, bg in zip(grid, backgrounds):
        for im in row:
            r = oracle.read(im)
            subj = r.shows(subject)
            shows_subject.append(subj)
            in_context.append(r.background == bg)
            both.append(subj and r.background == bg)
            pattern_in_context.append(r.patterned and r.background == bg)
    class_readings = [oracle.read(im) for im in grid[len(backgrounds)]]
    return {
        # the subject's two colours, patterned (the strictest reading)
        "subject_fidelity": float(np.mean(shows_subject)),
        # the requested background
        "context_fidelity": float(np.mean(in_context)),
        "subject_in_context": float(np.mean(both)),
        # a two-colour pattern on the requested background, whatever its colours
        "pattern_in_context": float(np.mean(pattern_in_context)),
        "class_drift": float(np.mean([r.patterned for r in class_readings])),
        "class_shows_subject": float(np.mean([r.shows(subject) for r in class_readings])),
    }


def save_grid(grid: list[list[np.ndarray]], labels: list[str], path: str | Path, scale: int = 4) -> Path:
    """Rows of pictures (scaled up, nearest neighbour) with their prompt written on the left."""
    from PIL import Image
    tiles = [Image.fromarray(im).resize((RESOLUTION * scale, RESOLUTION * scale), Image.NEAREST) for row in grid for im in row]
    annotated_grid(tiles, max(len(r) for r in grid), row_labels=[[(label, True)] for label in labels], pad=4).save(path)
    return Path(path)


def demo_config(output: Path, method: str | None, instance_dir: Path, subject: Subject, model: str = "toy",
                **overrides):
    """The training config: the toy model's defaults (``configs/toy.yaml``) plus this subject."""
    values = dict(load_preset("toy")) if model != "toy" else {}   # a copy of the toy model: same defaults
    values.update(model=model, instance_dir=str(instance_dir), instance_prompt=instance_prompt(subject),
                  class_prompt=class_prompt(subject), output=str(output), method=method, overwrite=True,
                  class_dir=str(output.parent / "class_images"))   # method None: the preset's
    values["max_steps"] = DEMO_STEPS
    # The demo shows the subject on backgrounds it never saw: no empty prompts (and, in
    # demo_transforms, no backdrops named in the prompt): the settings its README figures were measured with.
    values["caption_dropout"] = 0.0
    if method == "lora" and overrides.get("learning_rate") is None:
        values["learning_rate"] = LORA_LEARNING_RATE
    values.update({k: v for k, v in overrides.items() if v is not None})
    return build_config(None, {k: v for k, v in values.items() if v is not None})


def load_trained(output: Path) -> GenerationPipeline:
    """A demo's trained output (a full model, or a LoRA output on its base) ready to sample, in fp32
    (the published figures were made in fp32, on any CPU)."""
    return load_generation_pipeline(str(output), dtype=torch.float32)


def demo_transforms() -> list[ToyBackdrops]:
    """The toy preset's backdrops, recoloured but not named in the prompt."""
    return [ToyBackdrops(named=False)]


def is_demo_folder(folder: Path) -> bool:
    """An earlier demo's folder: its mark, or (a demo from before the mark) its metrics.json."""
    if (folder / DEMO_MARK).is_file():
        return True
    try:
        metrics = json.loads((folder / METRICS_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(metrics, dict) and {"subject", "new_backgrounds", "before", "after"} <= metrics.keys()


def check_demo_output(output: Path) -> None:
    """A one-line error, before anything is written, for a folder the demo would write into that holds
    what no demo wrote: its fixed names (before.png, metrics.json, ...) would replace the user's files."""
    check_output_folder(output)
    if not output.is_dir() or is_demo_folder(output):
        return
    held = sorted(p.name + ("/" if p.is_dir() else "") for p in output.iterdir())
    if held:
        names = ", ".join(held[:3]) + (" ..." if len(held) > 3 else "")
        raise UserError(f"--output {output}: holds files and no mark of an earlier demo ({names}); the demo writes "
                        "only into a new or empty folder, or an earlier demo's: choose another --output, or move them away")


def run_demo(output: str | Path = "dreambooth-demo", method: str | None = None, subject: Subject = DEMO_SUBJECT,
             seed: int = 0, log=print, model: str = "toy", **overrides) -> dict:
    """Run the whole demo into ``output`` (new, empty, or an earlier demo's, whose results it replaces);
    returns the metrics (also in ``metrics.json``). Every sample is also saved with its infotext under
    ``samples/before`` and ``samples/after``, numbered on after an earlier demo's."""
    started = time.time()
    output = Path(output).expanduser()
    check_demo_output(output)
    with file_operation("create the demo's folder", "--output"):
        output.mkdir(parents=True, exist_ok=True)
        (output / DEMO_MARK).touch()
    instance_dir = output / "instance_images"
    write_instance_images(subject, instance_dir, seed=seed)
    prompts = [context_prompt(subject, bg) for bg in NEW_BACKGROUNDS] + [class_prompt(subject)]
    log(f"subject: a {subject.colour} {subject.shape} with {subject.pattern_colour} {subject.pattern}; "
        f"{len(INSTANCE_BACKGROUNDS)} pictures in {instance_dir}")

    before = sample(load_generation_pipeline(model, dtype=torch.float32), prompts,
                    output_dir=output / "samples" / "before", fast_batches=True)
    save_grid(before, prompts, output / "before.png")

    config = demo_config(output / "model", method, instance_dir, subject, model=model, seed=seed, **overrides)
    left = output / "model" / PREVIOUS_OUTPUT_DIR
    if left.is_dir():        # an earlier demo's model, kept by a run killed mid-way: the demo makes its own again
        shutil.rmtree(left)
        log(f"removed {left}: the model an interrupted earlier demo was replacing")
    log(f"training ({config.method}, {config.max_steps} steps, prior preservation with '{config.class_prompt}')")
    t_train = time.time()
    result = train(config, transforms=demo_transforms())
    train_seconds = time.time() - t_train

    after = sample(load_trained(result.output), prompts, output_dir=output / "samples" / "after", fast_batches=True)
    save_grid(after, prompts, output / "after.png")
    metrics = {
        "subject": {"shape": subject.shape, "colour": subject.colour, "pattern": subject.pattern,
                    "pattern_colour": subject.pattern_colour},
        "instance_backgrounds": list(INSTANCE_BACKGROUNDS), "new_backgrounds": list(NEW_BACKGROUNDS),
        "prompts": prompts, "seeds": list(SEEDS), "method": config.method, "steps": result.steps,
        "before": score(before, subject, NEW_BACKGROUNDS), "after": score(after, subject, NEW_BACKGROUNDS),
        "train_seconds": round(train_seconds, 1), "total_seconds": round(time.time() - started, 1),
    }
    (output / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
