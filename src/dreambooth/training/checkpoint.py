"""Resumable checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint folder holds the trainable weights only (the LoRA adapters, or the fine-tuned UNet and
text encoders), the optimizer and LR-schedule state, the step, and every random stream (noise and
timesteps, data order and crops, the global torch/numpy/python RNGs of every training process: the
first two are one stream all processes share, the global ones are each process's own). It is
written to a hidden temporary folder and renamed into place, so a kill at any moment leaves either
the previous checkpoint or the new one, never half of one.

Copied, synced or half-deleted checkpoints still happen, so each one records its files with their
sizes and SHA-256 (``manifest.json``). ``--resume DIR`` on a damaged one is a one-line error naming
the damaged file; ``--resume latest`` skips damaged ones (saying which and why) and continues from
the newest intact one.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .. import progress
from ..errors import UserError
from ..models.tokens import identifier_words, trained_identifier_words
from ..outputs import (CHECKPOINTS_DIR, PREVIOUS_OUTPUT_DIR, TRAINING_ARGS_FILE, as_user_file, checkpoint_name,
                       checkpoint_step, within)
from .checkpoint_names import resume_folder
from .processes import ProcessLost, peer_gone
from .resume_settings import changed_settings, refused_changes
from .schedule_resume import schedule_change
from .results import TrainingInterrupted
from .sharding import copy_whole, is_sharded, load_optimizer_state, whole_optimizer_state, whole_weights



def checkpoint_dir(output: Path) -> Path:
    return output / CHECKPOINTS_DIR


@contextlib.contextmanager
def interruptible(output: Path, step: Callable[[], int], every: tuple[int, int] = (0, 0)):
    """Ctrl-C becomes a TrainingInterrupted that names the last checkpoint (the CLI prints how to resume),
    or when the first comes (``every``: --checkpoint-every, --max-steps), and so does, as a ProcessLost,
    another process of the run stopping."""
    try:
        yield
    except (KeyboardInterrupt, RuntimeError) as exc:
        if isinstance(exc, TrainingInterrupted) or (isinstance(exc, RuntimeError) and not peer_gone(exc)):
            raise
        found = list_checkpoints(output)
        ctrl_c = isinstance(exc, KeyboardInterrupt)
        raise (TrainingInterrupted if ctrl_c else ProcessLost)(step(), found[-1] if found else None, every) \
            from (None if ctrl_c else exc)          # (--debug shows the backend's error a lost peer left)


def list_checkpoints(output: Path) -> list[Path]:
    root = checkpoint_dir(output)
    if not root.is_dir():
        return []
    found = [(step, p) for p in root.iterdir() if (step := checkpoint_step(p)) is not None and p.is_dir()]
    return [p for _, p in sorted(found)]


MANIFEST = "manifest.json"
FILES = ("trainable.safetensors", "optimizer.pt", "state.pt", "settings.json")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def damage(path: Path) -> str | None:
    """Why the checkpoint at ``path`` cannot be resumed ("optimizer.pt: 1234 bytes, 5678 recorded"),
    or None when it is intact. One without a manifest (an older one) is checked file by file."""
    manifest = path / MANIFEST
    try:
        recorded = json.loads(manifest.read_text()) if manifest.exists() else None
    except (OSError, ValueError):
        return f"{MANIFEST}: unreadable"
    if not isinstance(recorded, dict) and recorded is not None:
        return f"{MANIFEST}: not a JSON object"
    for name in FILES:
        file = path / name
        if not file.is_file():
            return f"{name}: missing"
        if recorded is None:
            why = _whole(file)
            if why is not None:
                return f"{name}: {why}"
            continue
        entry = recorded.get(name)
        if not isinstance(entry, dict):
            return f"{name}: not in {MANIFEST}"
        size = file.stat().st_size
        if size != entry.get("size"):
            return f"{name}: {size} bytes, {entry.get('size')} recorded"
        if _sha256(file) != entry.get("sha256"):
            return f"{name}: its checksum differs from the one recorded"
    try:
        json.loads((path / "settings.json").read_text())
    except (OSError, ValueError):
        return "settings.json: not valid JSON"
    return None


def _whole(file: Path) -> str | None:
    """Without a manifest's sizes: whether a file of the checkpoint is cut short (a safetensors file's
    header names more bytes than there are; torch's zip archives keep their directory at the end)."""
    size = file.stat().st_size
    if file.suffix == ".safetensors":
        try:
            with open(file, "rb") as f:
                length = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(length)) if 0 < length <= size - 8 else None
        except (OSError, ValueError):
            header = None
        if not isinstance(header, dict):
            return "its header is unreadable"
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
                   and isinstance(v.get("data_offsets"), list)), default=0)
        return f"cut short ({size} bytes of {8 + length + end})" if 8 + length + end > size else None
    if file.suffix == ".pt" and not zipfile.is_zipfile(file):
        return "cut short or not torch's format"
    return None


def check_within_run(path: Path, step: int | None, max_steps: int) -> None:
    """A checkpoint past the run's last step (``--max-steps`` lowered) cannot be resumed: the run
    would end at once with nothing trained and replace the finished output."""
    if step is not None and step > max_steps:
        raise UserError(f"--resume {path}: the checkpoint is at step {step}, past --max-steps {max_steps}; "
                        f"give --max-steps {step} or more to go on from it")


def find_checkpoint(resume: str, output: Path, max_steps: int | None = None, warn=progress.warn) -> Path:
    """The checkpoint ``--resume`` names, intact: ``latest`` is the newest intact one of ``output``;
    with ``max_steps``, one within the run (by its name here; by its state when it is loaded).
    ``warn``: the run's (a damaged checkpoint skipped is said again in its closing summary)."""
    path = _found_checkpoint(resume, output, warn)
    if max_steps is not None:
        step = checkpoint_step(path)
        check_within_run(path, step, max_steps)
        if step == max_steps and within(path, checkpoint_dir(output)) and finished_at(output) == step:
            raise UserError(f"--resume {resume}: the run finished at step {step} and {output} holds its model; "
                            f"give --max-steps above {step} to train on from it")
    return path


def finished_at(output: Path) -> int | None:
    """The last step of the finished run whose model ``output`` holds (its training_args.json), or None."""
    try:
        return int(json.loads((output / TRAINING_ARGS_FILE).read_text(encoding="utf-8"))["steps_done"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _found_checkpoint(resume: str, output: Path, warn) -> Path:
    if resume == "latest":
        found = list_checkpoints(output)
        previous = output / PREVIOUS_OUTPUT_DIR      # an --overwrite run killed before its first checkpoint
        kept = f"; {previous} holds the output an interrupted --overwrite run replaced, with its checkpoints: move " \
            "it back to resume that run" if list_checkpoints(previous) else ""
        if not found:
            raise UserError(f"--resume latest: no checkpoint in {checkpoint_dir(output)}{kept}")
        for path in reversed(found):
            why = damage(path)
            if why is None:
                return path
            warn(f"--resume latest: skipping {path}, which is damaged ({why})")
        raise UserError(f"--resume latest: every checkpoint in {checkpoint_dir(output)} is damaged; "
                        "start again without --resume")
    path = resume_folder(resume, output)      # checkpoint-80: OUTPUT/checkpoints/checkpoint-000080
    if not path.is_dir() or not any((path / name).exists() for name in FILES):
        raise UserError(f"--resume {resume}: not a checkpoint folder (no state.pt); use a checkpoints/checkpoint-N "
                        "folder or 'latest'")
    why = damage(path)
    if why is not None:
        raise UserError(f"--resume {resume}: damaged checkpoint: {why}; use an intact one or --resume latest")
    return path


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(output: Path, step: int, weights: dict[str, torch.Tensor], optimizer_state: dict, state: dict,
                    settings: dict, keep: int) -> Path:
    """Write ``weights`` (``sharding.whole_weights``) and the rest as the checkpoint of ``step``."""
    root = checkpoint_dir(output)
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = root / f".tmp-{checkpoint_name(step)}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(weights, str(tmp / "trainable.safetensors"))
    torch.save(optimizer_state, tmp / "optimizer.pt")
    torch.save({**state, "step": step, "rng": rng_state()}, tmp / "state.pt")
    (tmp / "settings.json").write_text(json.dumps(settings, indent=2, default=str))
    manifest = {name: {"size": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)} for name in FILES}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    as_user_file(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    if keep > 0:
        for old in list_checkpoints(output)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _damaged(path: Path, exc: Exception) -> UserError:
    """Damaged in a way sizes did not show (an older checkpoint: no checksums)."""
    said = str(exc).splitlines()[0] if str(exc) else ""
    if len(said) > 120:
        said = said[:120].rsplit(" ", 1)[0] + " ..."
    return UserError(f"--resume {path}: damaged checkpoint ({type(exc).__name__}: {said})")


def check_resumable(path: Path, settings: dict) -> dict:
    """The checkpoint's settings, where this run's (``settings``) can resume it; a one-line error
    otherwise. Read before anything is made (class images, latents): settings.json and the names of
    the weights alone."""
    saved = json.loads((path / "settings.json").read_text())
    if refused := refused_changes(saved, settings):
        key, was, now = refused[0]
        raise UserError(f"--resume {path}: checkpoint was made with {key}={was}, "
                        f"this run has {key}={now}; use the same setting to resume")
    try:
        with safe_open(str(path / "trainable.safetensors"), framework="pt") as weights:
            offsets = any(key.endswith("token_embedding.delta") for key in weights.keys())
    except Exception as exc:
        raise _damaged(path, exc) from None
    if offsets:
        _same_identifier(path, saved, settings)
    return saved


def load_checkpoint(path: Path, models: dict[str, torch.nn.Module], optimizer, settings: dict,
                    process: tuple[int, int] = (0, 1), sharded: bool = False) -> dict:
    """Load the weights and optimizer state (each process its shard, ``sharded``); restore the global
    RNGs of this process (``process``: rank, world): its own when the checkpoint was written by as
    many processes, else the first's. The weights are read one tensor at a time, and under FSDP only
    the first process reads the optimizer state and sends it on: a host running 8 processes holds a
    checkpoint (SDXL's: 31 GB) once, not 8 times."""
    saved = check_resumable(path, settings)

    def read(name: str):
        try:
            return torch.load(path / name, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise _damaged(path, exc) from None

    state = read("state.pt")
    params = {name: dict(model.named_parameters()) for name, model in models.items()}
    try:
        weights = safe_open(str(path / "trainable.safetensors"), framework="pt")
    except Exception as exc:
        raise _damaged(path, exc) from None
    with weights:
        for key in weights.keys():
            comp, _, pname = key.partition(".")
            if comp not in params:
                continue
            if pname not in params[comp]:
                raise UserError(f"--resume {path}: weight {key} does not exist in this model")
            try:
                value = weights.get_tensor(key)
            except Exception as exc:
                raise _damaged(path, exc) from None
            want = tuple(params[comp][pname].shape)
            if tuple(value.shape) != want and not hasattr(params[comp][pname], "device_mesh"):
                hint = (" (the identifier's embedding: --instance-prompt or --class-prompt names other words than "
                        "the checkpoint's run)") if key.endswith("token_embedding.delta") else ""
                raise UserError(f"--resume {path}: weight {key} is {list(value.shape)} there and {list(want)} in this "
                                f"run{hint}; resume with that run's settings, or start afresh")
            copy_whole(params[comp][pname], value)
    try:
        load_optimizer_state(models, optimizer, lambda: read("optimizer.pt"), sharded, process[0] == 0)
        per_process = state.get("rng_per_process") or [state["rng"]]
        set_rng_state(per_process[process[0]] if len(per_process) == process[1] else state["rng"])
    except (KeyError, ValueError, TypeError) as exc:
        raise UserError(f"--resume {path}: the checkpoint's optimizer or random state does not fit this run "
                        f"({type(exc).__name__})") from None
    return state


def _same_identifier(path: Path, saved: dict, settings: dict) -> None:
    """A checkpoint's identifier offset (--identifier-lr) is of its run's identifier: another one (even
    of as many tokens) would start from it."""
    # checkpoints before 2026-12-07 record no words: they trained every word beside the class's
    was = saved.get("identifier_words") or identifier_words(saved.get("instance_prompt") or "", saved.get("class_prompt"))
    now = trained_identifier_words(settings.get("instance_prompt") or "", settings.get("class_prompt"))
    if "instance_prompt" in saved and was != now and saved["instance_prompt"] == settings.get("instance_prompt") \
            and saved.get("class_prompt") == settings.get("class_prompt"):
        raise UserError(f"--resume {path}: the checkpoint trained the embeddings of {' '.join(was)} (--identifier-lr, as "
                        f"versions before 2026-12-07 did: every word beside the class's); this version trains those of "
                        f"{' '.join(now)} alone; start afresh (or finish the run with the version that wrote it)")
    if "instance_prompt" in saved and was != now:
        same = saved["instance_prompt"] == settings.get("instance_prompt")      # then --class-prompt tells them apart
        fix = f"--instance-prompt '{saved['instance_prompt']}'" if not same else \
            f"--class-prompt '{saved['class_prompt']}'" if saved.get("class_prompt") else "no --class-prompt"
        raise UserError(f"--resume {path}: the checkpoint trained the embedding of {' '.join(was)} (--identifier-lr), "
                        f"this run's identifier is {' '.join(now) or 'none'}; resume with {fix}, or start afresh")


def save_run(run) -> Path | None:
    """The trainer's checkpoint. Every process calls it and hands in its global RNG states; the main
    process writes (the others get None). The data and noise streams are one for all processes."""
    from accelerate.utils import gather_object
    acc = run.accelerator
    rng_per_process = gather_object([rng_state()])
    run.assert_finite()                  # every process checks (and, sharded, gathers) alike: all stop alike
    sharded = is_sharded(acc)
    if not (sharded or acc.is_main_process):     # under FSDP every process takes part in gathering
        return None
    weights = whole_weights(run.trainables, sharded)
    optimizer_state = whole_optimizer_state(run.trainables, run.optimizer, sharded)
    if not acc.is_main_process:
        return None
    state = {"losses": run.losses, "skipped": run.skipped, "lr_scheduler": run.lr_scheduler.state_dict(),
             "stream": run.stream.state_dict(), "noise_gen": run.noise_gen.get_state(),
             "num_processes": acc.num_processes, "rng_per_process": rng_per_process}
    settings = {**run.settings(),       # the words whose embeddings --identifier-lr trained, for a resume
                "identifier_words": trained_identifier_words(run.config.instance_prompt, run.config.class_prompt)}
    return save_checkpoint(run.output, run.step, weights, optimizer_state, state, settings, run.config.keep_checkpoints)


def resume_run(run, path: Path) -> None:
    """Put the trainer where the checkpoint at ``path`` left it: weights, optimizer, LR schedule, the
    data and noise streams, this process's global RNGs, the step and the losses so far."""
    acc = run.accelerator
    state = load_checkpoint(path, run.trainables, run.optimizer, run.settings(), (acc.process_index, acc.num_processes),
                            is_sharded(acc))
    check_within_run(path, state["step"], run.config.max_steps)
    run.step, run.losses, run.skipped = state["step"], state["losses"], state["skipped"]
    asked = list(run.lr_scheduler.base_lrs)          # this run's --learning-rate (a resume may change it)
    run.lr_scheduler.load_state_dict(state["lr_scheduler"])
    scheduler = run.lr_scheduler
    if hasattr(scheduler, "lr_lambdas"):              # diffusers' schedules: base rate x a rule of the step
        scheduler.base_lrs = asked
        scheduler._last_lr = [base * rule(scheduler.last_epoch) for base, rule in zip(asked, scheduler.lr_lambdas)]
        for group, lr in zip(run.optimizer.param_groups, scheduler._last_lr):
            group["lr"] = lr                          # the same numbers when nothing changed
    restarted = run.stream.load_state_dict(state["stream"])      # the kinds of pictures now more or fewer
    run.noise_gen.set_state(state["noise_gen"])
    saved = json.loads((path / "settings.json").read_text())
    warn = run.warn                      # now, and in the closing summary (the first process's terminal alone)
    if "seed" in saved and saved["seed"] != run.config.seed:      # the streams are the checkpoint's
        warn(f"--resume: --seed {run.config.seed} is not used; the random streams go on from the "
             f"checkpoint's (--seed {saved['seed']}), which the output records")
        run.config = run.config.replace(seed=saved["seed"])
    changed = changed_settings(saved, run.config, getattr(run, "photos", None), restarted)
    rates = state["lr_scheduler"].get("_last_lr"), scheduler.get_last_lr()       # at this step: the old rule's, the new
    if note := schedule_change(saved, run.config, run.step, *rates):
        warn(note)
    if changed:
        warn(f"--resume: this run's {', '.join(changed)} {'differs' if len(changed) == 1 else 'differ'} from the "
             "checkpoint's: training goes on from it, but not exactly as the run would have without the interruption")
    written_by = state.get("num_processes", 1)
    if written_by != acc.num_processes:
        warn(f"--resume: {path} was written by {written_by} process(es), this run has {acc.num_processes}: "
             "the global batch and the random streams differ, so training goes on, not exactly as before")
    progress.message(f"resumed from {path} at step {run.step}")
