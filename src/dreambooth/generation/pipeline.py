"""A model ready for generation: the diffusers pipeline, what the infotext says about it, its LoRAs.

``load_generation_pipeline`` loads anything ``models.load_pipeline`` can, or a LoRA training output
folder (its base model, the VAE it was trained with, and the LoRA at weight 1), with ``--lora``
LoRAs and a LoRA library for ``<lora:name:weight>`` in prompts. ``GenerationPipeline`` also wraps a
pipeline that is already in memory (the trainer's, for validation images).
"""
from __future__ import annotations

import contextlib
import json
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..devices import DTYPES, generation_dtype, pick_device
from ..errors import UserError, exception_line
from ..host_memory import keep_freed_host_memory, release_freed_host_memory
from ..models.conv_layout import to_channels_last
from ..models.families import adapter_for
from ..models.hashes import model_hash
from ..models.loading import damaged_file_line, load_pipeline, lower_case_suffix, quietly
from ..models.specs import is_hub_id, is_lora_output, lora_output_base, resolve_model
from ..outputs import LORA_WEIGHTS_FILE, named_weights_file, recorded_spec
from ..parking import Parking
from .grammar import LoraTag
from .loras import LoraFile, LoraLibrary, lora_from_path


@dataclass
class ModelInfo:
    """What the infotext says about the base model."""
    name: str
    path: Path | None = None       # the folder or file (None: nothing to hash)
    spec: str | None = None        # as recorded for --from-image: absolute path, hub id or 'toy'
    vae: Path | None = None
    vae_spec: str | None = None    # as recorded for --from-image: the --vae given (absolute path or hub id)
    config: str | None = None      # the same for --model-config
    share_paths: bool = True       # False: the infotext records no path of this machine (a server's images)
    _hash: str | None = field(default=None, repr=False)

    @property
    def hash(self) -> str | None:
        if self._hash is None and self.path is not None and Path(self.path).exists():
            self._hash = model_hash(self.path)
        return self._hash


def model_info_for(spec: str, vae: str | None = None, model_config: str | None = None) -> ModelInfo:
    ref = resolve_model(spec)
    path = Path(spec).expanduser()
    name = spec if spec == "toy" or ref.kind == "hub" else (path.stem if path.is_file() else path.resolve().name)
    vae_path = Path(vae).expanduser() if vae and Path(vae).expanduser().exists() else None
    return ModelInfo(name=name, path=ref.path, spec=recorded_spec(spec), vae=vae_path, vae_spec=vae and recorded_spec(vae),
                     config=model_config and recorded_spec(model_config))


class GenerationPipeline:
    """A diffusers pipeline plus what generation needs around it: the model's infotext entry, the
    LoRA library and the LoRAs applied by default, the scheduler config samplers are built from, and
    the img2img / inpainting pipelines made from it on first use."""

    def __init__(self, pipe, info: ModelInfo | None = None, library: LoraLibrary | None = None,
                 default_loras: list[LoraTag] | None = None):
        self.pipe = pipe
        self.family = adapter_for(pipe)
        self.max_side = self.family.max_side
        pipe.set_progress_bar_config(disable=True)
        self.info = info or ModelInfo(name=type(pipe).__name__)
        self.library = library or LoraLibrary()
        self.default_loras = list(default_loras or [])
        self.scheduler_config = dict(pipe.scheduler.config)
        self._tasks: dict[str, object] = {"txt2img": pipe}
        self._adapters: dict[Path, str] = {}          # loaded LoRA file -> adapter name
        self._lora_enabled = False
        self._resident: dict[str, LoraFile] = {}      # LoRAs whose weights are in the modules already
        self.parking: Parking | None = None           # set: the parts take turns on the device (place_for)
        self.lock = threading.RLock()                 # one generate() at a time: a call swaps the scheduler,
                                                      # applies LoRAs and relays out weights while it runs

    def place_for(self, stage: str) -> None:
        """With ``parking``, what ``stage`` needs on the device and what it does not in CPU memory:
        "encode" parks the UNet and brings the text encoders, "sample" parks them and brings the UNet,
        "decode" parks the UNet. The VAE stays: img2img encodes inside the pipeline call. Parking the
        largest part first keeps the peak at the larger part. The UNet is already away when the next
        batch encodes: the moves are the UNet's and the encoders' once each way, a batch."""
        parking = self.parking
        if parking is None or not parking.enabled:
            return
        if stage == "encode":
            parking.park(self.pipe.unet)           # an optimizer's state beside it in validation: all
            for te in self.family.text_encoders:   # the weights at once would pass the steps' peak
                parking.ready(te)
        elif stage == "sample":
            for te in self.family.text_encoders:
                parking.park(te)
            if self.pipe.device.type != parking.device.type:     # a diffusers that reports the first part's
                for te in self.family.text_encoders:                     # device, not the accelerator's: it would
                    parking.ready(te)                             # make the latents on the CPU
            parking.ready(self.pipe.unet)
        elif stage == "decode":
            parking.park(self.pipe.unet)

    @contextlib.contextmanager
    def turns_inside(self, runner):
        """With ``parking``, within a pipeline call too: the UNet waits whenever the VAE runs at full
        size (the pipeline's own decode, outside autocast; a live preview between steps; img2img's
        encoding) and comes back whenever it runs. Forward pre-hooks, removed after the call."""
        if self.parking is None or not self.parking.enabled:
            yield
            return
        vae = [getattr(runner.vae, part) for part in ("encoder", "decoder") if hasattr(runner.vae, part)] or [runner.vae]

        def back(unet, args):                  # every step calls: only when something sent it away
            if self.parking.is_parked(unet):
                self.place_for("sample")
        hooks = [runner.unet.register_forward_pre_hook(back, prepend=True)]
        hooks += [part.register_forward_pre_hook(lambda module, args: self.place_for("decode"), prepend=True)
                  for part in vae]
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()

    def add_resident_lora(self, output: Path) -> None:
        """A LoRA being trained in these very modules (validation): recorded in every infotext as
        ``<lora:NAME:1>`` with the output folder's files, never loaded."""
        output = Path(output)
        lora = LoraFile(output.resolve().name, output / LORA_WEIGHTS_FILE, named_weights_file(output),
                        str(output.resolve()))
        self._resident[lora.name] = lora
        self.default_loras.append(LoraTag(lora.name, 1.0))

    @property
    def default_size(self) -> tuple[int, int]:
        """(width, height) the model was made for: UNet sample size x VAE scale factor."""
        size = int(self.pipe.unet.config.sample_size) * int(self.pipe.vae_scale_factor)
        return size, size

    def for_task(self, task: str):
        """The pipeline for txt2img, img2img or inpaint (sharing this one's modules)."""
        if task not in self._tasks:
            from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting
            auto = AutoPipelineForImage2Image if task == "img2img" else AutoPipelineForInpainting
            try:
                self._tasks[task] = auto.from_pipe(self.pipe)
            except Exception as exc:
                raise UserError(f"{'--init-image' if task == 'img2img' else '--mask'}: this model has no {task} "
                                f"pipeline ({type(exc).__name__})") from None
            self._tasks[task].set_progress_bar_config(disable=True)
        return self._tasks[task]

    def apply_loras(self, tags: list[LoraTag]) -> list[tuple[LoraFile, float]]:
        """Make exactly ``tags`` active (loading files on first use); returns (file, weight) pairs. A
        LoRA named twice applies twice, as in the WebUI: once at the sum of its weights."""
        summed: dict[str, float] = {}
        for tag in tags:
            summed[tag.name] = summed.get(tag.name, 0.0) + tag.weight
        tags = [LoraTag(name, weight) for name, weight in summed.items()]
        resident = [(self._resident[t.name], t.weight) for t in tags if t.name in self._resident]
        if any(weight != 1 for _, weight in resident):
            raise UserError("<lora:...>: the LoRA being trained is in the model at weight 1; no other weight")
        active = [(self.library.find(tag.name), tag.weight) for tag in tags if tag.name not in self._resident]
        names, weights = [], []
        for lora, weight in active:
            if lora.load not in self._adapters:
                adapter = f"lora{len(self._adapters)}"
                self._load_lora(lora, adapter)
                self._adapters[lora.load] = adapter
            names.append(self._adapters[lora.load])
            weights.append(weight)
        if names:
            self.pipe.enable_lora()
            self.pipe.set_adapters(names, adapter_weights=weights)
            self._lora_enabled = True
        elif self._lora_enabled:
            self.pipe.disable_lora()
            self._lora_enabled = False
        return resident + active

    def _load_lora(self, lora: LoraFile, adapter: str) -> None:
        """``lora`` loaded as ``adapter``; a one-line error where it does not fit this model (diffusers
        logs each layer that does not fit: kept quiet, the message says what it means)."""
        import diffusers
        family = self.family.name.upper()
        where = f" ({lora.source})" if self.info.share_paths else ""       # a server's clients see no path of it
        with quietly():          # the libraries as they were after (transformers' bar while a text encoder loads)
            diffusers.utils.logging.set_verbosity(diffusers.utils.logging.CRITICAL)
            try:
                with lower_case_suffix(lora.load) as readable, warnings.catch_warnings():
                    warnings.simplefilter("ignore")      # peft lists every layer that does not fit: said below, in a line
                    self.pipe.load_lora_weights(str(readable.parent), weight_name=readable.name, adapter_name=adapter)
            except Exception as exc:
                self._forget_adapter(adapter)          # what it loaded before failing (a text encoder's part)
                why = (f"its layers' sizes are not this {family} model's: a LoRA for another family?"
                       if "size mismatch" in str(exc) else damaged_file_line(lora.load) or exception_line(exc)[:200])
                raise UserError(f"<lora:{lora.name}>{where}: cannot apply to this model ({why})") from None
        if not self._has_adapter(adapter):
            raise UserError(f"<lora:{lora.name}>{where}: none of its layers is one of this {family} model's "
                            "(a LoRA for another family, or for a part this model lacks)")

    def _has_adapter(self, adapter: str) -> bool:
        return any(adapter in names for names in self.pipe.get_list_adapters().values())

    def _forget_adapter(self, adapter: str) -> None:
        if self._has_adapter(adapter):
            self.pipe.delete_adapters(adapter)

    def to(self, device, medvram: bool = False) -> "GenerationPipeline":
        """Moved to ``device`` for generation alone: the convolutions go channels-last there for good
        where that pays (models/conv_layout.py); a trainer's pipeline is never moved here. ``medvram``:
        on a GPU the parts take turns (``place_for``; the WebUI's --medvram), so only the VAE moves now
        and the others when they are first needed."""
        self.parking = Parking(device) if medvram else None
        if self.parking is not None and self.parking.enabled:
            for module in (*self.family.text_encoders, self.pipe.unet):
                self.parking.park(module)
            self.pipe.vae.to(device)
            return self
        self.pipe.to(device)
        if [w for module in (self.pipe.unet, self.pipe.vae) for w in to_channels_last(module)]:
            release_freed_host_memory()     # their old copies (mid-size model: 0.27 GiB held, 0.14 of the peak)
        return self


def load_generation_pipeline(model: str, loras=(), vae: str | None = None, device: str | torch.device | None = None,
                             dtype: torch.dtype | None = None, model_config: str | None = None,
                             lora_dirs=(), library: LoraLibrary | None = None, medvram: bool = False) -> GenerationPipeline:
    """Load ``model`` for generation; ``loras`` are ``[(path, weight), ...]`` applied to every prompt
    (as ``<lora:name:weight>`` tags appended to it). ``dtype``: a torch dtype or a name ("fp16", "bf16",
    "fp32", "auto"); default ``devices.generation_dtype``.
    ``medvram``: see ``GenerationPipeline.to``."""
    library = library or LoraLibrary(lora_dirs)
    default: list[LoraTag] = []
    if is_lora_output(model):
        lora = library.add(lora_from_path(model, "--model"))
        default.append(LoraTag(lora.name, 1.0))
        model, trained_vae, trained_config = lora_output_base(model)
        vae, model_config = vae or trained_vae, model_config or trained_config     # (a single-file base needs it)
    for spec, weight in loras:
        lora = library.add(lora_from_path(str(spec)))
        default.append(LoraTag(lora.name, float(weight)))
    device = pick_device(device)
    if isinstance(dtype, str):                # the CLI's names, as --dtype takes them
        if dtype not in DTYPES:
            raise UserError(f"dtype {dtype!r}: one of {', '.join(DTYPES)}")
        dtype = DTYPES[dtype]
    elif dtype is not None and not isinstance(dtype, torch.dtype):
        raise TypeError(f"load_generation_pipeline: dtype must be a torch.dtype or one of {', '.join(DTYPES)}")
    dtype = dtype or generation_dtype(device)
    if device.type == "cpu":
        keep_freed_host_memory()        # activations reused across steps, not faulted in afresh
    info = model_info_for(str(model), vae, model_config)
    pipe = load_pipeline(str(model), vae=vae, dtype=dtype, model_config=model_config)
    generation = GenerationPipeline(pipe, info, library, default)
    generation.apply_loras(default)            # fail on a bad LoRA now, not at the first prompt
    return generation.to(device, medvram)


def recorded_settings(info: dict) -> dict:
    """The ``--vae`` and ``--model-config`` an image was made with (our ``VAE path`` and ``Model
    config`` keys), where they still exist here: a replay loads them again."""
    found = {}
    for key, name in (("VAE path", "vae"), ("Model config", "model_config")):
        value = info.get(key)
        if value and (Path(value).expanduser().exists() or is_hub_id(value)):
            found[name] = value
    return found


def sources_from_infotext(info: dict) -> tuple[str | None, dict[str, str]]:
    """(model spec, {LoRA name: path}) recorded by our ``Model path`` / ``Lora paths`` keys, where
    they still exist here; the model is None when neither it nor ``Model`` resolves."""
    model = None
    for candidate in (info.get("Model path"), info.get("Model")):
        if candidate:
            try:
                resolve_model(candidate)
            except UserError:
                continue
            model = candidate
            break
    try:
        listed = json.loads(info["Lora paths"]) if info.get("Lora paths") else {}
    except ValueError:
        listed = {}
    loras = {str(k): str(v) for k, v in listed.items() if Path(str(v)).expanduser().exists()} \
        if isinstance(listed, dict) else {}
    return model, loras
