"""What a training run returns or raises, and its summary for the terminal."""
from __future__ import annotations

import resource
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UserError
from .phases import phase_line


@dataclass
class TrainResult:
    output: Path
    steps: int
    losses: list[float]
    seconds: float
    peak_memory_bytes: int
    files: list[Path]
    skipped_steps: int = 0
    warnings: list[str] = field(default_factory=list)
    main_process: bool = True        # False in the other processes of a multi-process run (they write nothing)
    phases: dict[str, float] = field(default_factory=dict)       # phase → wall seconds, and "total" (phases.py)
    phases_within: dict[str, dict[str, float]] = field(default_factory=dict)   # phases run inside another
    first_step: int = 0              # where this run began: a resumed run's checkpoint step


class TrainingStopped(UserError):
    """Training cannot go on (e.g. the loss keeps being non-finite); nothing broken was saved."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: at which step, and the newest checkpoint (None: there is none)."""

    def __init__(self, step: int, checkpoint: Path | None, every: tuple[int, int] = (0, 0)):
        self.step, self.checkpoint = step, checkpoint
        super().__init__(f"training interrupted at step {step}; {last_checkpoint(checkpoint, step, every)}")


def last_checkpoint(checkpoint: Path | None, step: int = 0, every: tuple[int, int] = (0, 0)) -> str:
    """Where a stopped run can be resumed from, in words; ``every``: (--checkpoint-every, --max-steps),
    to say when the first would have come where none was written yet."""
    if checkpoint:
        return f"the last checkpoint is {checkpoint}"
    if not every[0]:
        return "no checkpoint had been written yet (--checkpoint-every N makes them)"
    first = min((step // every[0] + 1) * every[0], every[1] or step + every[0])
    return f"no checkpoint had been written yet: the first comes at step {first} (--checkpoint-every {every[0]})"


def peak_memory() -> int:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # Linux reports KiB


def summary(result: TrainResult) -> str:
    mem = result.peak_memory_bytes / 2**30
    ran = result.steps - result.first_step
    done = f"trained {result.steps} steps" if not result.first_step else \
        f"trained to step {result.steps} ({ran} from step {result.first_step})"
    lines = [f"{done} in {result.seconds:.1f} s ({ran / max(result.seconds, 1e-9):.2f} steps/s), "
             f"peak memory {mem:.2f} GiB",
             f"final loss {result.losses[-1]:.4f}" if result.losses else "no step ran"]
    if result.skipped_steps:
        lines.append(f"{result.skipped_steps} step(s) skipped for a non-finite loss")
    if result.phases:
        lines.append(phase_line(result.phases, result.phases_within))
    lines.append(f"output: {result.output}")
    lines += [f"  {p}" for p in result.files]
    lines += [f"warning: {w}" for w in dict.fromkeys(result.warnings)]
    return "\n".join(lines)
