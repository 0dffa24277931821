"""Folders ``dreambooth evaluate`` knows: a bench run's (its images lie one folder per prompt) and a
training run's validation folder (one folder of images per validation step, class-prompt images among
them)."""
from __future__ import annotations

import json
import re
from pathlib import Path

from .. import progress
from ..errors import UserError
from ..images import list_images
from ..outputs import TRAINING_ARGS_FILE, VALIDATION_DIR
from ..models.tokens import subject_identifier

STEP_FOLDER = re.compile(r"step-\d{6}")     # OUTPUT/validation/step-000050: one validation's images

BENCH_MARK = ".dreambench"      # written before a bench run's results: what lies beside it is a bench run's
BENCH_IMAGES = "images"         # its generations, in images/NN-slug/


def bench_prompt_folders(folder: str | Path) -> list[Path] | None:
    """The prompt folders of a bench run, given its output folder or the ``images/`` in it; None
    for any other folder (whose sub-folders are not read)."""
    folder = Path(folder).expanduser()
    if (folder / BENCH_MARK).is_file() and (folder / BENCH_IMAGES).is_dir():
        folder = folder / BENCH_IMAGES
    elif not (folder.name == BENCH_IMAGES and (folder.parent / BENCH_MARK).is_file()):
        return None
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def bench_images(folder: str | Path, flag: str) -> list[Path] | None:
    """A bench run's generated images, prompt folder by prompt folder; None where ``folder`` is none."""
    prompt_folders = bench_prompt_folders(folder)
    if prompt_folders is None:
        return None
    files = [f for sub in prompt_folders for f in list_images(sub, flag, allow_empty=True, quiet=True)]
    progress.message(f"{flag} {folder}: a dreambooth bench run; reading {len(files)} image(s) in "
                     f"{len(prompt_folders)} prompt folder(s)")
    return files


def bench_identifier(folder: str | Path) -> str | None:
    """The identifier a bench run's prompts said (its report.json), given its output or ``images/``."""
    folder = Path(folder).expanduser()
    if bench_prompt_folders(folder) is None:
        return None
    root = folder if (folder / BENCH_MARK).is_file() else folder.parent
    try:
        found = json.loads((root / "report.json").read_text()).get("identifier")
    except (OSError, ValueError, AttributeError):
        return None
    return found if isinstance(found, str) and found else None


def check_not_validation_folder(folder: str | Path, flag: str) -> None:
    """A training run's validation folder holds step folders, grids and curve.png, no one set of
    generations: a one-line error naming a step folder to give instead."""
    folder = Path(folder).expanduser()
    steps = sorted(p.name for p in folder.glob("step-*") if p.is_dir() and STEP_FOLDER.fullmatch(p.name)) \
        if folder.is_dir() else []
    if steps:
        raise UserError(f"{flag} {folder}: a training run's validation folder; give one of its step folders "
                        f"(e.g. {flag} {folder / steps[-1]}): the class prompt's images there are scored as PRES, "
                        f"apart, where the run's {TRAINING_ARGS_FILE} names its class prompt")


def validation_record(folder: str | Path) -> dict | None:
    """The training record of the run whose validation step folder ``folder`` is (it is written when
    the run finishes); None for any other folder."""
    folder = Path(folder).expanduser()
    if not (STEP_FOLDER.fullmatch(folder.name) and folder.parent.name == VALIDATION_DIR):
        return None
    try:
        record = json.loads((folder.parent.parent / TRAINING_ARGS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("instance_prompt"), str) else None


def generated_identifier(folder: str | Path) -> str | None:
    """The identifier the images in ``folder`` were made with, where a run records it: a bench run's, or
    the training run's whose validation step folder it is (found as validation found it)."""
    record = validation_record(folder)
    if record is not None:
        return subject_identifier(record["instance_prompt"], record.get("class_prompt") or None)
    return bench_identifier(folder)
