"""What the server can load, by name: checkpoints (``--model``, ``--models-dir``, finished training
outputs), VAEs (``--models-dir``/VAE) and LoRAs (``--loras-dir``, finished LoRA outputs).

A client names a model, VAE or LoRA by the title this catalog lists; a name is looked up here and
never used as a path, so ``../../etc/passwd`` is simply not in the list."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import UserError
from ..generation.loras import LoraFile, LoraLibrary, lora_from_path
from ..models.hashes import known_model_hash, model_hash
from ..models.registry import trained_outputs
from ..models.specs import SINGLE_FILE_SUFFIXES, is_lora_output, resolve_model
from .model_configs import config_for_file, given_configs
from .json_bodies import shortened


@dataclass
class ModelEntry:
    title: str            # what clients send as sd_model_checkpoint
    name: str
    spec: str             # what models.load_pipeline takes (never from a client)
    filename: str
    _hash: str | None = None
    kind: str = "folder"      # "file": a single-file checkpoint
    local: bool = False       # a file or folder here when listed (gone since: deleted, not a hub id to fetch)
    config: str | None = None   # a single file's configs (model_configs.config_for_file)

    @property
    def hash(self) -> str | None:
        """The WebUI's short hash, as the infotext's ``Model hash`` (the toy model's and a hub model's
        too); computed on first use (a big checkpoint takes seconds), then cached."""
        if self._hash is None:
            try:
                self._hash = model_hash(resolve_model(self.spec).path)
            except (UserError, OSError):        # gone since it was listed: no hash, the request goes on
                return None
        return self._hash

    @property
    def known_hash(self) -> str | None:
        """The hash if it was ever computed for these files (this entry, an earlier listing, an earlier
        server), else None: what ``/sdapi/v1/sd-models`` lists without reading a checkpoint."""
        if self._hash is None:
            try:
                self._hash = known_model_hash(resolve_model(self.spec).path)
            except (UserError, OSError):
                return None
        return self._hash


@dataclass
class VaeEntry:
    name: str
    path: Path


def _is_checkpoint_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in SINGLE_FILE_SUFFIXES and not path.name.startswith(".")


class Catalog:
    def __init__(self, initial_model: str, models_dir: str | Path | None = None, loras_dir: str | Path | None = None,
                 job_outputs: Callable[[], list[Path]] = lambda: [], model_configs: list[str] | tuple = ()):
        self.initial_model = initial_model
        self.model_configs = given_configs(model_configs)      # checked at start: one line for a wrong one
        self.models_dir = Path(models_dir).expanduser() if models_dir else None
        self.loras_dir = Path(loras_dir).expanduser() if loras_dir else None
        for flag, folder in (("--models-dir", self.models_dir), ("--loras-dir", self.loras_dir)):
            if folder is not None and not folder.is_dir():
                raise UserError(f"{flag} {folder}: no such folder")
        self.job_outputs = job_outputs
        self._lock = threading.Lock()
        self._models: dict[str, ModelEntry] = {}
        self._loras: dict[str, LoraFile] = {}
        self._vaes: dict[str, VaeEntry] = {}
        self.refresh()

    # ----- scanning --------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Scan again (A1111's refresh-checkpoints and refresh-loras)."""
        models, loras, vaes = {}, {}, {}

        def add_model(spec: str, label: str | None = None) -> None:
            path = Path(spec)
            filename = str(path.resolve()) if spec != "toy" else "toy"
            if any(m.filename == filename for m in models.values()):    # --model inside --models-dir: listed once
                return
            name = label or (path.stem if path.is_file() else path.name) or spec
            title = path.name if path.is_file() else name
            while title in models:                      # two outputs of one name: both listed
                title = f"{title}'"
            models[title] = ModelEntry(title, name, spec, filename, kind="file" if path.is_file() else "folder",
                                       local=spec != "toy" and path.exists())

        resolve_model(self.initial_model)                # a one-line error for a --model that is not there
        add_model(self.initial_model, "toy" if self.initial_model == "toy" else None)
        if self.models_dir is not None:
            for entry in sorted(self.models_dir.iterdir()):
                if entry.is_dir() and (entry / "model_index.json").exists():
                    add_model(str(entry))
                elif _is_checkpoint_file(entry) and not is_lora_output(entry.parent):
                    add_model(str(entry))
            vae_dir = self.models_dir / "VAE"
            if vae_dir.is_dir():
                for entry in sorted(vae_dir.iterdir()):
                    if _is_checkpoint_file(entry) or (entry / "config.json").is_file():
                        vaes[entry.name] = VaeEntry(entry.name, entry)
        outputs = list(self.job_outputs()) + trained_outputs()
        for out in dict.fromkeys(outputs):
            if (out / "model_index.json").exists():
                add_model(str(out))
            elif is_lora_output(out):
                lora = lora_from_path(str(out))
                loras.setdefault(lora.name, lora)
        if self.loras_dir is not None:
            for name, lora in LoraLibrary([self.loras_dir], use_registry=False).available().items():
                loras.setdefault(name, lora)
        folders = [m.spec for m in models.values() if m.kind == "folder" and m.local]
        for entry in models.values():
            if entry.kind == "file":
                entry.config = config_for_file(Path(entry.spec), self.model_configs, folders)
        with self._lock:
            self._models, self._loras, self._vaes = models, loras, vaes

    # ----- lookups ---------------------------------------------------------------------------------
    def models(self) -> list[ModelEntry]:
        with self._lock:
            return list(self._models.values())

    def loras(self) -> dict[str, LoraFile]:
        with self._lock:
            return dict(self._loras)

    def vaes(self) -> list[VaeEntry]:
        with self._lock:
            return list(self._vaes.values())

    def find_model(self, title: str, field: str = "sd_model_checkpoint") -> ModelEntry:
        """A listed model by its title, its name, or its title without the ``[hash]`` A1111 appends."""
        if not isinstance(title, str) or not title.strip():
            raise UserError(f"{field}: {shortened(repr(title))} names no model; give a title of GET /sdapi/v1/sd-models")
        wanted = title.strip()
        base, _, given = wanted.partition(" [")
        for entry in self.models():
            if wanted in (entry.title, entry.name):
                return entry
        for entry in self.models():
            if base in (entry.title, entry.name):
                known = entry.hash if given else None
                if known and not (given.rstrip("]").startswith(known) or known.startswith(given.rstrip("]"))):
                    raise UserError(f"{field}: {shortened(repr(wanted))}: {entry.title}'s hash is [{known}], not that one "
                                    "(another file of that name?); send its title as listed")
                return entry
        raise UserError(f"{field}: no model named {shortened(repr(wanted))}; GET /sdapi/v1/sd-models lists them")

    def find_vae(self, name: str, field: str = "sd_vae") -> VaeEntry | None:
        """None for A1111's "Automatic" and "None" (the model's own VAE)."""
        if name in (None, "", "Automatic", "None"):
            return None
        for entry in self.vaes():
            if entry.name == name:
                return entry
        raise UserError(f"{field}: no VAE named {shortened(repr(name))}; GET /sdapi/v1/sd-vae lists them")

    def library(self) -> LoraLibrary:
        """A LoRA library of exactly the listed LoRAs (never a path from a prompt)."""
        library = LoraLibrary(use_registry=False, not_found="this server's are listed by GET /sdapi/v1/loras and "
                              "in the web UI (refresh them after adding a file to its --loras-dir)")
        for lora in self.loras().values():
            library.add(lora)
        return library
