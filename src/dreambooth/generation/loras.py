"""LoRAs by name, as the WebUI finds them for ``<lora:name:weight>``.

A name resolves, in this order, from the LoRAs given explicitly (``--lora PATH``, a LoRA training
output as ``--model``, the ``Lora paths`` an infotext recorded), then the files and training outputs
in the LoRA folders (``--lora-dir``), then the training outputs this installation remembers. A file
is named by its stem, a training output by its folder (which is also the stem of its kohya file).

For a training output, diffusers loads ``pytorch_lora_weights.safetensors`` (exactly what was
trained), while the ``Lora hashes`` of the infotext are those of the kohya file beside it: the file
A1111 loads.

A LoRA run's checkpoint (``--lora OUTPUT/checkpoints/checkpoint-N``, what kohya's
``--save_every_n_steps`` gives as a file) is the LoRA it holds at that step, named as kohya names its
step files (``OUTPUT-step00000080``). Its ``trainable.safetensors`` has the trainer's parameter names and
no alpha, so it is written once as a kohya file in the cache folder, with the alpha the run recorded.
That file copied on its own is refused: nothing in it says its alpha (loaded as it is, peft's names
match no layer and the image comes out NaN).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..models.hashes import lora_hash
from ..models.registry import trained_outputs
from ..models.specs import CHECKPOINT_WEIGHTS, checkpoint_method, is_lora_output, training_args, unfinished_run
from ..outputs import (CHECKPOINTS_DIR, LORA_WEIGHTS_FILE, TRAINING_ARGS_FILE, checkpoint_step, named_weights_file,
                       user_cache_dir)

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
    if path.is_dir() and checkpoint_method(path) is not None:
        return checkpoint_lora(path, spec, flag)
    if path.is_dir():
        if is_lora_output(path) or (path / LORA_WEIGHTS_FILE).exists():
            kohya = named_weights_file(path)
            load = path / LORA_WEIGHTS_FILE
            return LoraFile(path.resolve().name, load, kohya if kohya.is_file() else load, str(path.resolve()))
        found = sorted(path.glob("*.safetensors"))
        if len(found) == 1:
            return LoraFile(found[0].stem, found[0], found[0], str(found[0].resolve()))
        if not found and (unfinished := unfinished_run(path, flag, spec)):    # its LoRA kept in .previous
            raise UserError(unfinished)
        raise UserError(f"{flag} {spec}: folder has no {LORA_WEIGHTS_FILE}"
                        + (" and several .safetensors; name one" if found else ""))
    if path.is_file():
        if path.suffix.lower() not in LORA_SUFFIXES:
            raise UserError(f"{flag} {spec}: not a LoRA file; expected .safetensors")
        return refuse_checkpoint_weights(LoraFile(path.stem, path, path, str(path.resolve())), f"{flag} {spec}")
    raise UserError(f"{flag} {spec}: no such file or folder")


def refuse_checkpoint_weights(lora: LoraFile, said: str) -> LoraFile:
    """``lora``, unless its file is a training checkpoint's ``trainable.safetensors`` (peft's
    ``.lora_A.<adapter>.weight`` names, no alpha): then a one-line error saying what to give instead."""
    if lora.load.suffix.lower() != ".safetensors":
        return lora
    from safetensors import safe_open
    try:
        with safe_open(str(lora.load), "pt") as f:
            keys = list(f.keys())
    except Exception:            # damaged: the loader says so, naming the file
        return lora
    if any(re.search(r"\.lora_[AB]\.[^.]+\.weight$", k) for k in keys):
        raise UserError(f"{said}: a training checkpoint's weights (its {CHECKPOINT_WEIGHTS}, without the alpha "
                        "that scales them), not a LoRA file; give the checkpoint folder instead "
                        "(--lora OUTPUT/checkpoints/checkpoint-N), or the run's output folder or kohya file")
    return lora


def checkpoint_lora(folder: Path, spec: str, flag: str) -> LoraFile:
    """The LoRA a run's checkpoint holds, as a kohya file in the cache folder (written once per
    checkpoint); a full run's checkpoint or one whose alpha is recorded nowhere is a one-line error."""
    said = f"{flag} {spec}"
    if checkpoint_method(folder) not in ("lora", "?"):
        raise UserError(f"{said}: a full fine-tuning run's training checkpoint: state to go on training from "
                        f"(`dreambooth train --resume {spec}`), not a LoRA; the run's output folder is the model "
                        "once the run has finished")
    try:
        settings = json.loads((folder / "settings.json").read_text())
    except (OSError, ValueError):
        settings = None
    if not isinstance(settings, dict) or settings.get("method") != "lora":
        raise UserError(f"{said}: damaged checkpoint (settings.json names no method)")
    output = folder.resolve().parent.parent
    args = training_args(output, flag) if (output / TRAINING_ARGS_FILE).is_file() else {}
    same_run = args.get("method") == "lora" and str(args.get("rank")) == str(settings.get("rank"))
    alpha = settings.get("alpha", args.get("alpha") if same_run else None)
    if alpha is None:
        raise UserError(f"{said}: a LoRA run's checkpoint whose alpha is not recorded yet (the run writes it to "
                        f"{output / TRAINING_ARGS_FILE} when it ends); give it again once the run has finished, or "
                        f"go on training from it (`dreambooth train --resume {spec}`)")
    step = checkpoint_step(folder)
    name = f"{output.name}-step{step:08d}"           # kohya's name for a --save_every_n_steps file
    digest = lora_hash(folder / CHECKPOINT_WEIGHTS)         # (a file cut short: said as the load fails)
    cached = user_cache_dir() / "checkpoint-loras" / f"{name}-{digest[:12]}-a{float(alpha):g}.safetensors"
    if not cached.is_file():
        try:
            _write_checkpoint_lora(folder, cached, name, float(alpha), step, args if same_run else {})
        except OSError as exc:
            raise UserError(f"{said}: cannot write its LoRA file into the cache folder {cached.parent} "
                            f"({exc.strerror or type(exc).__name__}); set DREAMBOOTH_CACHE to a writable folder") from None
    return LoraFile(name, cached, cached, str(folder.resolve()))


def _write_checkpoint_lora(folder: Path, path: Path, name: str, alpha: float, step: int, args: dict) -> None:
    from safetensors.torch import load_file

    from ..models.lora import checkpoint_kohya, kohya_metadata, write_kohya_file
    family = args.get("family", "sd1")
    unet_config = None
    base_unet = Path(str(args.get("model", ""))).expanduser() / "unet"
    if family == "sdxl" and (base_unet / "config.json").is_file():   # kohya's SGM names; else diffusers' (read too)
        from diffusers import UNet2DConditionModel
        unet_config = UNet2DConditionModel.load_config(base_unet)
    try:
        weights = load_file(str(folder / CHECKPOINT_WEIGHTS))
    except Exception as exc:          # cut short or overwritten: the checkpoint is damaged
        raise UserError(f"{folder}: damaged checkpoint ({CHECKPOINT_WEIGHTS} unreadable: {type(exc).__name__}); "
                        "give another checkpoint") from None
    rank = next((t.shape[0] for k, t in weights.items() if ".lora_A." in k), 0)
    metadata = kohya_metadata(family, rank, alpha, args.get("prediction_type", "epsilon"),
                              {"ss_output_name": name, "ss_steps": step})
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    write_kohya_file(partial, checkpoint_kohya(weights, alpha, family, unet_config), metadata)
    os.replace(partial, path)            # whole or not there: another process may read it meanwhile


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
                if here != folder and (here.name == CHECKPOINTS_DIR or checkpoint_method(here) is not None
                                       or any((here / name).exists() for name in NOT_LORAS)):
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
        if found is not None:
            found = refuse_checkpoint_weights(found, f"<lora:{name}> ({found.source})")
        if found is None and self.not_found:
            raise UserError(f"<lora:{name}>: no LoRA of that name; {self.not_found}")
        if found is None:
            where = ", ".join(str(d) for d in self.dirs) or "no --lora-dir given"
            raise UserError(f"<lora:{name}>: no LoRA of that name ({where}; nor among the training outputs made "
                            "here); pass --lora PATH or --lora-dir DIR")
        return found
