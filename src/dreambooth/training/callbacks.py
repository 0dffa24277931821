"""What a training run tells the world as it goes: the callback protocol.

The trainer calls every callback at these points, in this order, with typed arguments:

* ``on_train_start(run)``: set up, resumed if asked; nothing trained yet this session.
* ``on_step_end(run, step)``: after each optimizer step (:class:`StepEnd`: step, loss, learning
  rate). Raising here stops the run (a server cancels a job this way).
* ``on_pause_point(run)``: between two pieces of work that are not steps (a batch of class images,
  a validation image): a server lets generation requests in here. Raising here stops the run.
* ``on_validation(run, validation)``: validation images were made (:class:`ValidationEnd`:
  step, grid, image files, metrics when the evaluation models load).
* ``on_checkpoint(run, checkpoint)``: a resumable checkpoint was written (:class:`CheckpointSaved`).
* ``on_train_end(run, result)``: the output is written (:class:`TrainResult`).

``run`` is the trainer, seen through :class:`TrainingRun`: what a callback may rely on. Subclass
:class:`TrainingCallback` and override what you need; the terminal's progress bar is not a callback
but a subscriber of the progress events (``dreambooth.progress``), which the trainer sends as well.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from ..generation.pipeline import GenerationPipeline
from .config import TrainConfig
from .results import TrainResult


class TrainingRun(Protocol):
    """What callbacks (and validation) may use of a running trainer."""
    config: TrainConfig            # resolved: resolution, learning rate and alpha filled in
    output: Path
    step: int                      # optimizer steps done
    autocast_dtype: torch.dtype | None   # the mixed precision sampling runs in (None: none)

    def warn(self, message: str) -> None:
        """A warning said now, and again in the run's closing summary (a long run's early lines scroll away)."""
        ...

    def save_model(self, directory: Path) -> list[Path]:
        """The current weights, in the output's format, written to ``directory``."""
        ...

    def generation_pipeline(self, for_output: bool = True) -> GenerationPipeline:
        """The weights in memory, ready for ``generation.sampling.generate``."""
        ...


@dataclass(frozen=True)
class StepEnd:
    step: int               # optimizer steps done
    max_steps: int
    loss: float
    learning_rate: float


@dataclass(frozen=True)
class ValidationEnd:
    step: int
    grid: Path
    images: list[Path]
    metrics: dict = field(default_factory=dict)   # dino, clip_i, clip_t, pres (absent without the models)


@dataclass(frozen=True)
class CheckpointSaved:
    step: int
    path: Path


@runtime_checkable
class TrainingCallbackProtocol(Protocol):
    def on_train_start(self, run: TrainingRun) -> None: ...
    def on_step_end(self, run: TrainingRun, step: StepEnd) -> None: ...
    def on_pause_point(self, run: TrainingRun) -> None: ...
    def on_validation(self, run: TrainingRun, validation: ValidationEnd) -> None: ...
    def on_checkpoint(self, run: TrainingRun, checkpoint: CheckpointSaved) -> None: ...
    def on_train_end(self, run: TrainingRun, result: TrainResult) -> None: ...


class TrainingCallback:
    """A callback that does nothing: subclass it and override the events you need."""

    def on_train_start(self, run: TrainingRun) -> None:
        pass

    def on_step_end(self, run: TrainingRun, step: StepEnd) -> None:
        pass

    def on_pause_point(self, run: TrainingRun) -> None:
        pass

    def on_validation(self, run: TrainingRun, validation: ValidationEnd) -> None:
        pass

    def on_checkpoint(self, run: TrainingRun, checkpoint: CheckpointSaved) -> None:
        pass

    def on_train_end(self, run: TrainingRun, result: TrainResult) -> None:
        pass


HOOKS = ("on_train_start", "on_step_end", "on_pause_point", "on_validation", "on_checkpoint", "on_train_end")


class _Completed:
    """A callback that defines only some hooks (duck-typed): the others do nothing."""

    def __init__(self, callback):
        self.callback = callback

    def __getattr__(self, name):
        if name in HOOKS and not hasattr(self.callback, name):
            return lambda *args: None
        return getattr(self.callback, name)


def as_callbacks(callbacks) -> list:
    """The trainer's list of callbacks: one given alone is a list of one; each has every hook."""
    if callbacks is None:
        return []
    if not isinstance(callbacks, (list, tuple)):
        callbacks = [callbacks]
    for cb in callbacks:       # (``print`` was taken and never called: a callback with no hook does nothing)
        if not any(hasattr(cb, h) for h in HOOKS):
            raise TypeError(f"train: callback {cb!r} has none of the hooks {', '.join(HOOKS)} "
                            "(subclass dreambooth.training.TrainingCallback)")
    return [cb if all(hasattr(cb, h) for h in HOOKS) else _Completed(cb) for cb in callbacks]
