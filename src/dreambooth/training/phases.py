"""Where a training run's time went, for its summary: each long phase's wall time (class images,
caching latents, training, validation, saving), read from the progress events those phases already
report, and what is left (loading the model, setting up). A run that is slow end to end then says
which part to speed up (more class images at once, fewer validations) without a profiler.

A phase that runs inside another (validation during training) is counted within it and named
beside it, so the phases add up to the whole."""
from __future__ import annotations

import time

from ..progress import ProgressEvent

REST = "loading and setup"


class PhaseClock:
    """A progress subscriber (``progress.subscribed(clock)``) timing the run from its creation."""
    shows_messages = False

    def __init__(self):
        self.started = time.monotonic()
        self._open: dict[int, int | None] = {}      # task id → the task it runs within (None: top level)
        self._names: dict[int, str] = {}
        self.top: dict[str, float] = {}              # phase → seconds, in the order phases first ended
        self.within: dict[str, dict[str, float]] = {}   # phase → {inner phase → seconds}

    def __call__(self, event: ProgressEvent) -> None:
        if event.kind == "start":
            self._open[event.task_id] = next(reversed(self._open), None)
            self._names[event.task_id] = event.task
        elif event.kind == "end" and event.task_id in self._open:
            parent = self._open.pop(event.task_id)
            if parent is None:
                self.top[event.task] = self.top.get(event.task, 0.0) + event.elapsed
            else:
                inner = self.within.setdefault(self._names[parent], {})
                inner[event.task] = inner.get(event.task, 0.0) + event.elapsed

    def seconds(self) -> dict[str, float]:
        """{phase: seconds} of the run so far, the rest as ``REST``, and ``"total"``."""
        total = time.monotonic() - self.started
        return {REST: max(0.0, total - sum(self.top.values())), **self.top, "total": total}

    def stamped(self, result):
        """``result`` (a TrainResult) with the phases' times."""
        result.phases, result.phases_within = self.seconds(), {k: dict(v) for k, v in self.within.items()}
        return result


def phase_line(phases: dict[str, float], within: dict[str, dict[str, float]] | None = None) -> str:
    """``time: 163.6 s in all: loading and setup 12.0 s, class images 40.2 s, ..., training 100.1 s
    (of which validation 8.0 s), saving 3.3 s``."""
    within = within or {}
    parts = []
    for name, seconds in phases.items():
        if name == "total":
            continue
        inner = ", ".join(f"{n} {s:.1f} s" for n, s in within.get(name, {}).items())
        parts.append(f"{name} {seconds:.1f} s" + (f" (of which {inner})" if inner else ""))
    return f"time: {phases['total']:.1f} s in all: " + ", ".join(parts)
