"""Nothing the user had is lost: the checks before a run touches anything, and the output's staging.

Before anything is written, :func:`check_inputs` checks every input (the photo folder readable, a
class-image folder that is a folder, the output not a file nor inside a read-only place) and, with
``--overwrite``, refuses an output that contains or lies inside an input: the photos, the class
images, the checkpoint being resumed. The trainer then loads the model and the photos; only then
does :class:`OutputStage` touch the output:

* a non-empty output needs ``--overwrite``, and so does resuming into one from another run's
  checkpoint;
* with ``--overwrite`` the old output's entries (all but ``class_images``, which are reused) are
  moved aside into ``OUTPUT/.previous`` and deleted only once the new run has written its result.
  A run that fails puts them back as they were; a run interrupted after writing a checkpoint keeps
  both (the new run can be resumed; the old output stays in ``.previous``).
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import torch

from .. import progress
from ..devices import first_process
from ..errors import UserError, file_operation
from ..evaluation.encoders import resolve_encoder
from ..images import list_files
from ..models.specs import SINGLE_FILE_SUFFIXES
from ..outputs import (CHECKPOINTS_DIR, CLASS_IMAGES_DIR, PREVIOUS_OUTPUT_DIR, TRAINING_ARGS_FILE, VALIDATION_DIR,
                       check_output_folder, checkpoint_step, output_lock, release_lock, take_lock, within)
from . import checkpoint as ckpt
from .config import TrainConfig
from .data import image_subfolders
from .prior import class_folder, existing_class_images, refuse_other_prompts
from .trainables import EIGHT_BIT_WITHOUT_CUDA

KEPT_ON_OVERWRITE = (CLASS_IMAGES_DIR,)


def check_inputs(cfg: TrainConfig, warn=progress.warn) -> None:
    """One-line errors for inputs and an output that cannot work, before anything is written; ``warn``:
    the run's (its closing summary says the settings that do nothing again)."""
    output = Path(cfg.output).expanduser()
    list_files(cfg.instance_dir, "--instance-dir", quiet=True)      # a readable folder (or a one-line error)
    check_output_folder(output)
    if output.suffix.lower() in SINGLE_FILE_SUFFIXES and not output.exists():
        raise UserError(f"--output {output}: a folder (the files go in it, the A1111 one named after it); give "
                        f"{output.with_suffix('')} instead")
    if cfg.class_dir and Path(cfg.class_dir).expanduser().exists() and not Path(cfg.class_dir).expanduser().is_dir():
        raise UserError(f"--class-dir {cfg.class_dir}: exists and is not a folder")
    if cfg.use_prior:
        classes, photos = class_folder(cfg), Path(cfg.instance_dir)
        if within(classes, photos) or within(photos, classes):
            raise UserError(f"--class-dir {classes}: {'is' if within(classes, photos) and within(photos, classes) else 'overlaps'}"
                            f" the photo folder (--instance-dir {photos}): the class images would mix with the photos; "
                            "give another folder (the default is OUTPUT/class_images)")
        if classes.is_dir() and not existing_class_images(classes) and (inner := image_subfolders(classes)):
            raise UserError(f"--class-dir {classes}: no image in it, only in its sub-folders, which are not read (the "
                            f"class images would be made beside them); give one, e.g. --class-dir '{inner[0]}'")
        refuse_other_prompts(classes, cfg.class_prompt, cfg.model)
    if cfg.validate_every:       # models named explicitly must be there (the defaults may be missing: grids only)
        for flag, spec in (("--dino-model", cfg.dino_model), ("--clip-model", cfg.clip_model)):
            if spec:
                resolve_encoder(spec, flag)
    for message in idle_settings(cfg):
        warn(message)
    inputs = [("--instance-dir", cfg.instance_dir)]
    inputs += [(flag, path) for flag, path in (("--model", cfg.model), ("--vae", cfg.vae), ("--model-config", cfg.model_config))
               if path and path != "toy" and Path(path).expanduser().exists()]       # local ones (not hub ids)
    if cfg.class_dir and not within(Path(cfg.class_dir), output / CLASS_IMAGES_DIR):
        inputs.append(("--class-dir", cfg.class_dir))
    if cfg.resume and cfg.resume != "latest" and (Path(cfg.resume).expanduser() / CHECKPOINTS_DIR).is_dir():
        raise UserError(f"--resume {cfg.resume}: a run's output, not a checkpoint; give --resume latest with --output "
                        f"{cfg.resume}, or one of its {CHECKPOINTS_DIR}/checkpoint-N folders")
    if cfg.resume and cfg.resume != "latest" and not within(Path(cfg.resume), output / CHECKPOINTS_DIR):
        inputs.append(("--resume", cfg.resume))      # (its own checkpoints: --overwrite moves nothing)
    # with --overwrite, or where the output is not empty (the advice would be --overwrite, then refused)
    for flag, path in inputs if cfg.overwrite or (not cfg.resume and _entries(output)) else ():
        path = Path(path)
        if not path.expanduser().exists():        # a class folder still to be made: nothing of it to lose
            continue
        if within(output, path):
            raise UserError(f"--output {output}: lies inside {flag} {path}, which --overwrite would change; "
                            "write the model somewhere else")
        if within(path, output):
            raise UserError(f"--output {output}: holds {flag} {path}, which --overwrite would delete; "
                            "write the model somewhere else")
    # without --overwrite too (not resuming into it): "pass --overwrite" would only lead to this refusal
    refuse_foreign(output, cfg.overwrite or not cfg.resume, cfg.overwrite)


def refuse_foreign(output: Path, check: bool, overwrite: bool) -> None:
    """An output holding what no training run wrote (other LoRAs, notes) is never replaced: a one-line
    error naming it, and with no word of --overwrite unless it was given."""
    foreign = not_written_by_training(output) if check else []
    if foreign:
        names = ", ".join(p.name + ("/" if p.is_dir() else "") for p in foreign[:3]) + (" ..." if len(foreign) > 3 else "")
        why = "--overwrite replaces only a training output (one with training_args.json)" if overwrite else \
            "a run writes only into a new or empty folder, or a training output"
        raise UserError(f"--output {output}: holds what no training run wrote ({names}); {why}: choose another "
                        "--output, or move them away")


# What an unfinished run leaves in its output before its model and training_args.json are written.
RUN_LEFTOVERS = (CHECKPOINTS_DIR, CLASS_IMAGES_DIR, VALIDATION_DIR, PREVIOUS_OUTPUT_DIR)


# What a finished output holds beside them: a diffusers pipeline's parts, the weights files, the records.
OUTPUT_PARTS = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler",
                "feature_extractor", "safety_checker", "image_encoder")
OUTPUT_FILES = (".safetensors", ".ckpt", ".bin", ".json")


def not_written_by_training(output: Path) -> list[Path]:
    """The entries of ``output`` that are not a training run's (a user's notes or generations kept in a
    finished output, another model's files in a folder that is no output), for --overwrite to refuse."""
    finished = (output / TRAINING_ARGS_FILE).is_file()
    return [p for p in _entries(output) if p.name not in RUN_LEFTOVERS and not (finished and (
        (p.is_dir() and p.name in OUTPUT_PARTS) or (p.is_file() and p.suffix.lower() in OUTPUT_FILES)))]


def idle_settings(cfg: TrainConfig) -> list[str]:
    """Settings given that this run would not use, each said in a line."""
    idle = []
    if cfg.keep_best and not cfg.validate_every:
        idle.append("--keep-best: without --validate-every there is no validation to pick the best step by; "
                    "the last step is the output")
    if cfg.export_single_file and cfg.method == "lora":
        idle.append("--export-single-file is for full fine-tuning; a LoRA run writes its LoRA file (kohya's, for "
                    "A1111 and ComfyUI) instead")
    if cfg.class_dir and not cfg.use_prior:
        idle.append(f"--class-dir {cfg.class_dir}: without --class-prompt there is no prior preservation, so its "
                    "images are not used; give --class-prompt (e.g. 'a photo of dog')")
    if cfg.text_encoder_lr is not None and not cfg.train_text_encoder:
        idle.append("--text-encoder-lr: the text encoder is not trained without --train-text-encoder")
    if cfg.caption_dropout >= 1:
        idle.append(f"--caption-dropout {cfg.caption_dropout:g}: every picture is shown with an empty prompt, so "
                    "nothing ties the subject to the identifier; 0.05 to 0.1 trains CFG's empty prompt alongside")
    if cfg.lr_warmup_steps >= cfg.max_steps:
        idle.append(f"--lr-warmup-steps {cfg.lr_warmup_steps} with --max-steps {cfg.max_steps}: the learning rate "
                    "never reaches --learning-rate")
    return idle


def _launched_with(env: str) -> bool:
    return os.environ.get(env, "").lower() in ("1", "true", "yes")        # set by accelerate launch


# What FSDP leaves out: (refused, the flag, how to turn it off, why). FSDP serves full fine-tuning
# of the UNet (SDXL full: docs/multi-gpu.md).
NOT_SHARDED = (
    (lambda c: c.method == "lora", "--method lora", "--method full", "a LoRA's few weights need no sharding"),
    (lambda c: c.train_text_encoder, "--train-text-encoder", "--no-train-text-encoder",
     "accelerate's FSDP2 shards one model, the UNet"),
    (lambda c: c.method == "full" and bool(c.identifier_lr), "--identifier-lr", "--identifier-lr 0",
     "accelerate's FSDP2 shards one model, the UNet"),
    (lambda c: c.use_8bit_adam, "--use-8bit-adam", "--no-use-8bit-adam", "FSDP already splits AdamW's state across the GPUs"),
    (lambda c: c.fused_backward_pass, "--fused-backward-pass", "--no-fused-backward-pass",
     "FSDP reduces gradients after the backward pass"),
)


def check_distributed(cfg: TrainConfig, warn=progress.warn) -> bool:
    """Before anything is written: DeepSpeed is refused; FSDP (``accelerate launch`` with an FSDP
    config) must be FSDP2 and a full fine-tune of the UNet alone. DDP (``--multi_gpu``) takes anything.
    True when launched with FSDP. ``warn``: the run's (now and in its closing summary)."""
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")         # accelerate's flag or config file
    if launched not in ("", "no", cfg.mixed_precision) and first_process():
        warn(f"accelerate launch's mixed precision {launched} is not used: this run trains in "
                      f"{cfg.mixed_precision} (pass --mixed-precision {launched} to dreambooth train for it)")
    if launched_alone():
        warn("accelerate launch started this one process: without a GPU, --num_processes N needs "
                      "--multi_gpu to start N processes (on the CPU, docs/multi-gpu.md)")
    if _launched_with("ACCELERATE_USE_DEEPSPEED"):
        raise UserError("accelerate launch with DeepSpeed: dreambooth train does not run under DeepSpeed; shard "
                        "with FSDP (configs/accelerate/fsdp.yaml) or launch with --multi_gpu (DDP), see docs/multi-gpu.md")
    if not _launched_with("ACCELERATE_USE_FSDP"):
        return False
    if os.environ.get("FSDP_VERSION", "1") != "2":
        raise UserError("accelerate launch with FSDP version 1: dreambooth train shards with FSDP2; pass "
                        "--fsdp_version 2 (or fsdp_version: 2 in the config file), see configs/accelerate/fsdp.yaml")
    for refused, flag, off, why in NOT_SHARDED:
        if refused(cfg):
            raise UserError(f"{flag}: not with FSDP ({why}); pass {off}, or launch with --multi_gpu (DDP)")
    return True


def launched_alone() -> bool:
    """``accelerate launch --num_processes N`` on a machine without GPUs and without ``--multi_gpu``
    runs its plain launcher: one process, given a main address as if it had peers (MPI sets its own)."""
    env = os.environ
    return "ACCELERATE_MIXED_PRECISION" in env and "MASTER_ADDR" in env and "WORLD_SIZE" not in env \
        and not any(name in env for name in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE"))


def check_precision_device(cfg: TrainConfig, device) -> None:
    """A precision the device has no arithmetic for (before accelerate is asked for it)."""
    if cfg.mixed_precision == "fp16" and torch.device(device).type == "cpu":
        raise UserError("--mixed-precision fp16 needs a GPU; use bf16, auto or no on CPU")


def check_one_process_options(cfg: TrainConfig, device, processes: int, sharded: bool, warn) -> None:
    """What this device cannot train with, and what acts inside the backward pass and so runs on one
    process: ``--fused-backward-pass`` steps each weight there (``fused_backward``); ``--cuda-graphs``
    records it (``cuda_graphs``, CUDA only). The server's job submission asks it too."""
    check_precision_device(cfg, device)
    if cfg.use_8bit_adam and torch.device(device).type != "cuda":       # said before class images are made
        raise UserError(EIGHT_BIT_WITHOUT_CUDA)
    if cfg.cuda_graphs and torch.device(device).type != "cuda":
        raise UserError("--cuda-graphs needs a CUDA GPU (it replays the UNet's passes as CUDA graphs); drop it on this machine")
    if cfg.cuda_graphs and (processes > 1 or sharded):
        raise UserError("--cuda-graphs runs on one process (DDP and FSDP act inside the backward pass); "
                        "drop it, or launch one process")
    if not cfg.fused_backward_pass:
        return
    if processes > 1:
        raise UserError("--fused-backward-pass runs on one process (DDP averages gradients after each weight "
                        "was already stepped); drop it, or launch one process")
    if cfg.max_grad_norm > 0:
        warn("--fused-backward-pass: gradients are not clipped (--max-grad-norm needs all of them at once)")


def _entries(output: Path) -> list[Path]:
    return [p for p in output.iterdir() if p.name not in KEPT_ON_OVERWRITE and p.name != PREVIOUS_OUTPUT_DIR] \
        if output.is_dir() else []


def hold_output(output: Path, cleanup: contextlib.ExitStack) -> None:
    """One run writes an output at a time: a second (a resume started while the first still runs, the
    workers a killed ``accelerate launch`` left) is refused; the lock goes when ``cleanup`` closes. Taken
    first, before the output's checkpoints are looked at: the first run may not have written one yet."""
    lock = output_lock(output)
    handle, holder = take_lock(lock)
    if holder is not None:
        raise UserError(f"--output {output}: another dreambooth train is writing it"
                        f"{f' (pid {holder})' if holder else ''}; wait for it or stop it, or choose another --output")
    if handle is not None:
        cleanup.callback(release_lock, handle, lock)


class OutputStage:
    """The output folder while a run writes it (see the module doc)."""

    def __init__(self, output: Path, overwrite: bool, resume_from: Path | None, latest: bool = False):
        self.output, self.overwrite, self.resume_from = Path(output), overwrite, resume_from
        self.latest = latest           # resume_from is what --resume latest found, not a checkpoint named
        self.previous = self.output / PREVIOUS_OUTPUT_DIR
        self.moved: list[str] = []
        self.committed, self.created = False, []

    def prepare(self) -> None:
        """Refuse to clobber what is there unless asked; with ``--overwrite`` move it aside. The run
        holds the output already (``hold_output``)."""
        own_resume = self.resume_from is not None and within(self.resume_from, self.output / CHECKPOINTS_DIR)
        entries = _entries(self.output)
        if self.previous.exists() and not own_resume:
            resume = ", or --resume latest" if ckpt.list_checkpoints(self.output) else ""
            raise UserError(f"--output {self.output}: {self.previous} holds the output an interrupted --overwrite "
                            f"run replaced; move it back or delete it{resume}")
        finished = ckpt.finished_at(self.output) if own_resume else None
        resumed_at = checkpoint_step(self.resume_from) if own_resume else None
        if finished is not None and self.latest and resumed_at is not None and resumed_at < finished:
            lost = f"step {finished}" if finished == resumed_at + 1 else f"steps {resumed_at + 1}-{finished}"
            raise UserError(f"--resume latest: the newest checkpoint ({self.resume_from.name}) is older than the model "
                            f"of step {finished} in {self.output}, so {lost} would be lost; "
                            f"name it to resume from it anyway (--resume {self.resume_from} --overwrite), or train that model "
                            "on as a new run (--model OUTPUT --output NEW)")
        # training a finished run on replaces its model: asked once (a checkpoint past it was made so)
        if finished is not None and not self.overwrite and (resumed_at is None or resumed_at <= finished):
            raise UserError(f"--output {self.output}: holds the model of a finished run (step {finished}); pass "
                            "--overwrite to replace it with this run's, or copy it elsewhere first")
        if entries and not own_resume:
            if not self.overwrite:
                refuse_foreign(self.output, True, False)       # (resuming another run's checkpoint into it)
                hint = " or --resume latest to continue" if ckpt.list_checkpoints(self.output) else ""
                if hint and ckpt.finished_at(self.output) is not None:
                    hint = ", or --resume latest --max-steps MORE --overwrite to train it on"
                why = " (resuming another run's checkpoint into it)" if self.resume_from is not None else ""
                raise UserError(f"--output {self.output}: exists and is not empty{why}; pass --overwrite to replace "
                                f"it (class images are kept){hint}")
            with file_operation("move the old output aside", "--output"):
                self.previous.mkdir()
                for entry in entries:
                    os.replace(entry, self.previous / entry.name)
                    self.moved.append(entry.name)
        with file_operation("create the output folder", "--output"):
            self.created = [folder for folder in (self.output, *self.output.parents) if not folder.exists()]
            self.output.mkdir(parents=True, exist_ok=True)

    def commit(self) -> None:
        """The new output is written: the old one goes, and the new one stays whatever happens next
        (a failure in the final validation or a callback)."""
        self.committed = True
        if self.previous.exists():
            shutil.rmtree(self.previous)

    def abandon(self, interrupted_with_checkpoint: bool) -> None:
        """The run failed: put the old output back (or, when the run can be resumed, keep both)."""
        if self.created and not self.committed:
            with contextlib.suppress(OSError):       # folders it made and wrote nothing in do not stay behind
                for folder in self.created:          # the output first, then the parents --output named anew
                    folder.rmdir()
        if not self.moved or self.committed:
            return
        if interrupted_with_checkpoint:
            progress.warn(f"the output this run replaces is kept in {self.previous} until the run finishes")
            return
        for entry in _entries(self.output):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        for name in self.moved:
            os.replace(self.previous / name, self.output / name)
        shutil.rmtree(self.previous, ignore_errors=True)
        progress.message(f"{self.output} is back as it was before this run")
