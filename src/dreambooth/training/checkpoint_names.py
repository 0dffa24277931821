"""``--resume NAME``: the checkpoint folder a name means.

Checkpoints are written as ``OUTPUT/checkpoints/checkpoint-000080`` (padded, so they sort). Users
type ``checkpoint-80`` (diffusers' ``--resume_from_checkpoint`` takes a bare name and looks it up in
its ``--output_dir``) or the number unpadded; both mean that folder. Where none matches, the error
names the checkpoints there are."""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..outputs import CHECKPOINTS_DIR, checkpoint_step

SHOWN = 6      # checkpoints named in the error (the newest)


def resume_folder(resume: str, output: Path) -> Path:
    """The folder ``--resume`` names: as given where it exists; else, by its step, the checkpoint of
    the folder it names (a bare name: OUTPUT/checkpoints). A one-line error listing those there otherwise."""
    path = Path(resume).expanduser()
    if path.exists():
        return path
    root = Path(output) / CHECKPOINTS_DIR if path.parent == Path(".") else path.parent
    found = sorted((step, p) for p in (root.iterdir() if root.is_dir() else ())
                   if p.is_dir() and (step := checkpoint_step(p)) is not None)
    wanted = checkpoint_step(path)
    for step, folder in found:
        if step == wanted:
            return folder
    if not found:
        raise UserError(f"--resume {resume}: no such folder, and {root} holds no checkpoint; use a "
                        "checkpoints/checkpoint-N folder or 'latest'")
    names = ", ".join(p.name for _, p in found[-SHOWN:])
    more = f" (and {len(found) - SHOWN} older)" if len(found) > SHOWN else ""
    raise UserError(f"--resume {resume}: no such checkpoint; {root} holds {names}{more}: name one, or use 'latest'")
