"""Class images for prior preservation, made by the frozen base model through the one sampling path.

Image ``i`` has the seed ``seed + i`` and is written the moment its batch exists as ``class-0000i.png``,
with its infotext (``dreambooth generate --from-image`` on the base model remakes it, batch and all): an
interrupted run keeps what it made, a rerun generates only the missing indices, and every image stands
alone. A damaged class image is found (every one is opened) and made again, with a warning naming it.

Images are made in fixed batches of indices (``[0, b)``, ``[b, 2b)``, ...; the last one ends at the
highest index wanted), because a batch rounds differently from its images made one by one: the batch an
index falls in never depends on what else is missing, so a damaged image comes back bit for bit (its
whole batch is made again, only the missing ones written).

Several training processes (``accelerate launch``) split the batches: every process finds the same
missing indices, process ``rank`` of ``world`` makes every ``world``-th batch, then all wait. Seeds and
batches go by index, so the set is the one a single process makes, whatever the number of processes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch

from .. import progress
from ..generation.infotext import parse_generation_parameters, read_infotext
from ..generation.params import GenerationParams
from ..generation.pipeline import GenerationPipeline, model_info_for
from ..generation.sampling import generate
from ..errors import UserError, file_operation
from ..images import list_images, open_image, write_png
from ..outputs import CLASS_IMAGES_DIR, class_image_name, recorded_path
from .results import TrainingInterrupted


class ClassImagesInterrupted(TrainingInterrupted):
    """Ctrl-C while class images are made: how many are kept and where (the CLI says this line).
    There is no checkpoint to resume: the same command again makes only the missing ones."""

    def __init__(self, kept: int, count: int, folder: Path):
        self.step, self.checkpoint = 0, None
        KeyboardInterrupt.__init__(self, f"interrupted while making class images: {kept} of {count} kept in {folder}; "
                                         "run the same command again to go on")


def class_folder(cfg) -> Path:
    """Where a run's class images are: ``--class-dir``, else OUTPUT/class_images."""
    return Path(cfg.class_dir).expanduser() if cfg.class_dir else Path(cfg.output).expanduser() / CLASS_IMAGES_DIR


def class_params(cfg) -> GenerationParams:
    """What makes a run's class images: its class prompt and sampling settings, image 0's seed."""
    return GenerationParams(cfg.class_prompt, cfg.class_negative_prompt, cfg.class_sampler, steps=cfg.class_steps,
                            cfg_scale=cfg.class_cfg, seed=cfg.seed, width=cfg.resolution, height=cfg.resolution,
                            clip_skip=cfg.clip_skip)


def existing_class_images(folder: Path) -> list[Path]:
    return list_images(folder, "--class-dir", allow_empty=True, quiet=True) if Path(folder).is_dir() else []


def _damaged(path: Path) -> str | None:
    try:
        open_image(path)
    except UserError as exc:
        return str(exc)
    return None


def refuse_other_prompts(folder: Path, prompt: str, model: str | None = None) -> None:
    """Class images made for another class prompt, or by another model than ``model`` (their infotext
    says so; images without one are the user's own), would teach the prior of the wrong class, or
    another model's: a one-line error, before any is used. A model is another when both its recorded
    path and its name differ (a folder moved elsewhere is the same model)."""
    current = None
    if model is not None:
        try:
            info = model_info_for(model)
            current = {info.spec, info.name}
        except UserError:             # not loadable: the load says so, by the flag
            current = None
    other, other_model = {}, {}
    for path in existing_class_images(folder):
        try:
            text = read_infotext(path)
        except UserError:            # damaged: made again (or passed over) when the class images are made
            continue
        written = parse_generation_parameters(text, defaults=False) if text else {}
        made_for = written.get("Prompt") if text else None
        if made_for is not None and made_for.strip() != prompt.strip():
            other.setdefault(made_for, []).append(path.name)
        made_by = {written.get("Model path"), written.get("Model")} - {None}
        made_by |= {recorded_path(m) for m in made_by if Path(m).expanduser().exists()}   # (recorded before '~' was)
        if current and made_by and not made_by & current:
            other_model.setdefault(written.get("Model path") or written.get("Model"), []).append(path.name)
    for flag, value, found, what in (("--class-prompt", prompt, other, "made for"),
                                     ("--model", model, other_model, "made by another model,")):
        if found:
            made, names = next(iter(found.items()))
            count = sum(map(len, found.values()))
            raise UserError(f"{flag} {value!r}: {folder} holds {count} class image(s) {what} {made!r} "
                            f"({', '.join(names[:3])}{' ...' if count > 3 else ''}); move them away, or give --class-dir "
                            "another folder")


def ensure_class_images(pipeline: GenerationPipeline, params: GenerationParams, folder: str | Path, count: int,
                        autocast: torch.dtype | None = None, shard: tuple[int, int] = (0, 1),
                        barrier: Callable[[], None] | None = None, batch: int = 1,
                        between: Callable[[], None] | None = None,
                        warn: Callable[[str], None] | None = None) -> list[Path]:
    """Make sure ``folder`` holds at least ``count`` images of ``params`` (its seed is image 0's);
    return the first ``count``. ``autocast``: the training's mixed precision, if any. ``shard=(rank,
    world)`` and ``barrier`` (waits for every process): this process's share of the work, see the module doc.
    ``between`` is called after each batch is written (a server's pause point); ``warn``: the run's own
    (its summary repeats what it is told), else ``progress.warn``."""
    folder = Path(folder)
    rank, world = shard
    barrier, warn = barrier or (lambda: None), warn or progress.warn
    with file_operation("create the class-image folder", "--class-dir"):
        folder.mkdir(parents=True, exist_ok=True)
    have = []
    for path in existing_class_images(folder):
        why = _damaged(path)
        if why is None:
            have.append(path)
        elif rank:                                 # the first process names them
            continue
        elif path.name.startswith("class-"):      # one this project made: made again below
            warn(f"class image {path} is damaged ({why.split(': ', 1)[-1]}); it is made again")
        else:
            warn(f"skipping class image {why}")
    taken = {p.name for p in have}
    missing = [i for i in range(count * 4) if class_image_name(i) not in taken][: max(0, count - len(have))]
    barrier()              # every process has looked before any writes
    end = max([count, *(i + 1 for i in missing)])
    groups = sorted({i // batch for i in missing})
    batches = [list(range(g * batch, min((g + 1) * batch, end))) for g in groups][rank::world]
    wanted = set(missing)
    share = [i for b in batches for i in b if i in wanted]
    if world > 1 and missing:
        names = [class_image_name(i) for i in share]
        shown = ", ".join(names) if len(names) <= 3 else f"{names[0]}, {names[1]}, ..., {names[-1]}"
        progress.message(f"class images: process {rank} of {world} makes {len(share)} of the {len(missing)} missing"
                         + (f" ({shown})" if share else ""), own=True)
    if share:
        with progress.task("class images", sum(map(len, batches))) as bar:
            done = 0          # images written (or made and not wanted): the bar counts sampling steps as they go
            try:
                for indices in batches:
                    made = generate(pipeline, params.replace(seed=params.seed + indices[0], batch_size=len(indices),
                                                             batch_count=1), autocast=autocast, task=bar)
                    for i, image in zip(indices, made):
                        if i in wanted:
                            tmp = folder / f".{class_image_name(i)}.tmp"
                            with file_operation("write a class image", "--class-dir"):
                                write_png(image.image, tmp, image.infotext)
                                os.replace(tmp, folder / class_image_name(i))     # never a half-written image
                        done += 1
                    if between is not None:
                        between()
            except KeyboardInterrupt as exc:
                bar.completed = done          # its last line says what is kept, not an image half sampled
                if isinstance(exc, TrainingInterrupted):
                    raise
                kept = len(have) + sum((folder / class_image_name(i)).is_file() for i in missing)
                raise ClassImagesInterrupted(min(kept, count), count, folder) from None
    barrier()              # every share is written
    return [p for p in existing_class_images(folder) if _damaged(p) is None][:count]
