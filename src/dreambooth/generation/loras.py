"""LoRAs by name, as the WebUI finds them for ``<lora:name:weight>``.

A name resolves, in this order, from the LoRAs given explicitly (``--lora PATH``, a LoRA training
output as ``--model``, the ``Lora paths`` an infotext recorded), then the files and training outputs
in the LoRA folders (``--lora-dir``), then the training outputs this installation remembers. A file
is named by its stem, a training output by its folder (which is also the stem of its kohya file).

For a training output, diffusers loads ``pytorch_lora_weights.safetensors`` (exactly what was
trained), while the ``Lora hashes`` of the infotext are those of the kohya file beside it: the file
A1111 loads.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..models.hashes import lora_hash
from ..models.registry import trained_outputs
from ..models.specs import is_lora_output
from ..outputs import CHECKPOINTS_DIR, LORA_WEIGHTS_FILE, TRAINING_ARGS_FILE, named_weights_file

LORA_SUFFIXES = (".safetensors", ".pt", ".bin")
NOT_LORAS = ("model_index.json", "config.json", TRAINING_ARGS_FILE)   # folders whose files are no LoRAs


@dataclass(frozen=True)
class LoraFile:
    name: str             # what <lora:NAME:...> says
    load: Path            # the file diffusers loads
    shown: Path           # the file A1111 loads: its hash goes in the infotext
    source: str           # absolute path of what was given (file or output folder), for --from-image

    @property
    def hash(self) -> str | None:
        """None while the file is not written yet (a LoRA still training)."""
        return lora_hash(self.shown) if self.shown.is_file() else None


def parse_lora_spec(spec: str) -> tuple[str, float]:
    """``DIR_OR_FILE[:weight]`` -> (path, weight). A colon that is part of the path (``C:\\...``)
    is kept."""
    spec = str(spec)
    head, sep, tail = spec.rpartition(":")
    if sep and head and re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)", tail.strip()):
        return head, float(tail)
    if sep and head and not Path(spec).expanduser().exists() and Path(head).expanduser().exists():
        raise UserError(f"--lora {spec}: the weight {tail!r} is not a number")      # as <lora:name:abc> says
    return spec, 1.0


def lora_from_path(spec: str, flag: str = "--lora") -> LoraFile:
    """A LoRA file, or a folder holding one (a training output, or a folder with one .safetensors)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        if is_lora_output(path) or (path / LORA_WEIGHTS_FILE).exists():
            kohya = named_weights_file(path)
            load = path / LORA_WEIGHTS_FILE
            return LoraFile(path.resolve().name, load, kohya if kohya.is_file() else load, str(path.resolve()))
        found = sorted(path.glob("*.safetensors"))
        if len(found) == 1:
            return LoraFile(found[0].stem, found[0], found[0], str(found[0].resolve()))
        raise UserError(f"{flag} {spec}: folder has no {LORA_WEIGHTS_FILE}"
                        + (" and several .safetensors; name one" if found else ""))
    if path.is_file():
        if path.suffix.lower() not in LORA_SUFFIXES:
            raise UserError(f"{flag} {spec}: not a LoRA file; expected .safetensors")
        return LoraFile(path.stem, path, path, str(path.resolve()))
    raise UserError(f"{flag} {spec}: no such file or folder")


class LoraLibrary:
    """Where ``<lora:name>`` looks: explicit LoRAs, LoRA folders, remembered training outputs."""

    def __init__(self, dirs=(), use_registry: bool = True, not_found: str | None = None):
        self.dirs = [Path(d).expanduser() for d in dirs]
        self.not_found = not_found          # what to do about a name not found, where not the CLI's flags
        for d in self.dirs:
            if not d.is_dir():
                raise UserError(f"--lora-dir {d}: no such folder")
        self.use_registry = use_registry
        self._explicit: dict[str, LoraFile] = {}

    def add(self, lora: LoraFile) -> LoraFile:
        self._explicit[lora.name] = lora
        return lora

    def _scanned(self) -> dict[str, LoraFile]:
        """Each folder's LoRA files and training outputs, in sub-folders too (A1111's ``models/Lora/people/``):
        by name, the first in sorted order where two share one."""
        found: dict[str, LoraFile] = {}
        for folder in self.dirs:
            seen = set()
            for root, subdirs, files in os.walk(folder, followlinks=True):
                here = Path(root)
                if os.path.realpath(here) in seen:          # a link back up: once is enough
                    subdirs[:] = []
                    continue
                seen.add(os.path.realpath(here))
                if here != folder and is_lora_output(here):
                    found.setdefault(here.name, lora_from_path(str(here)))
                    subdirs[:] = []                     # its own files are that LoRA
                    continue
                if here != folder and (here.name == CHECKPOINTS_DIR or any((here / name).exists() for name in NOT_LORAS)):
                    subdirs[:] = []                     # a model's parts, a training output, a run's checkpoints
                    continue
                subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
                for name in sorted(files):
                    entry = here / name
                    if entry.suffix.lower() in LORA_SUFFIXES and not name.startswith(".") and entry.is_file():
                        found.setdefault(entry.stem, LoraFile(entry.stem, entry, entry, str(entry.resolve())))
        return found

    def _remembered(self) -> dict[str, LoraFile]:
        found: dict[str, LoraFile] = {}
        if self.use_registry:
            for folder in trained_outputs("lora"):
                if is_lora_output(folder):
                    found.setdefault(folder.name, lora_from_path(str(folder)))
        return found

    def available(self) -> dict[str, LoraFile]:
        """Every name this library resolves, in resolution order."""
        out = dict(self._explicit)
        for source in (self._scanned(), self._remembered()):
            for name, lora in source.items():
                out.setdefault(name, lora)
        return out

    def find(self, name: str) -> LoraFile:
        if name in self._explicit:
            return self._explicit[name]
        found = self.available().get(name)
        if found is None and self.not_found:
            raise UserError(f"<lora:{name}>: no LoRA of that name; {self.not_found}")
        if found is None:
            where = ", ".join(str(d) for d in self.dirs) or "no --lora-dir given"
            raise UserError(f"<lora:{name}>: no LoRA of that name ({where}; nor among the training outputs made "
                            "here); pass --lora PATH or --lora-dir DIR")
        return found
