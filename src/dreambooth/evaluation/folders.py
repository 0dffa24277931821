"""A bench run's folder as ``dreambooth evaluate`` reads it: its images lie one folder per prompt."""
from __future__ import annotations

import json
from pathlib import Path

from .. import progress
from ..images import list_images

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
