"""Progress of long jobs as events: the one interface every long job reports through.

A job opens a :func:`task` (training, class images, generation, DreamBench) and advances it; each
change becomes a :class:`ProgressEvent` handed to every subscriber. Messages (a warning, a note)
are events too. Nothing here draws: the terminal bar (``dreambooth.terminal``) is one subscriber,
a server's job log or progress endpoint another.

Subscribers are global (:func:`subscribe`) or limited to the current context
(:func:`subscribed`, a ``contextvars`` scope: one server thread's job sees only its own events).
"""
from __future__ import annotations

import contextlib
import contextvars
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

KINDS = ("start", "advance", "end", "message")


@dataclass(frozen=True)
class ProgressEvent:
    """One change of one task, or a message (``kind == "message"``)."""
    kind: str                      # start | advance | end | message
    task: str                      # what runs: "training", "class images", "generating", ...
    task_id: int                   # unique per task in this process
    completed: float = 0.0
    total: float = 0.0
    elapsed: float = 0.0           # seconds since the task started
    fields: dict = field(default_factory=dict)   # e.g. {"loss": 0.12, "lr": 1e-4}
    message: str = ""
    level: str = "info"            # info | warning (messages)
    started_from: float = 0.0      # ``completed`` when the task started (a resumed run starts part-way)
    own: bool = False              # (a message) this process's alone: its share of work split across processes

    @property
    def done(self) -> int:
        """Whole units finished, as a count shows them: the unit under way is not counted until it ends
        (rounding 1.9 images up would claim one not yet written). A sum of step fractions that falls a
        hair short of whole still counts."""
        return int(self.completed + 1e-6)

    @property
    def percent(self) -> int:
        """The share of the work done, the unit under way's part included, rounded down: never 100 before
        the end, and never below what ``done`` of ``total`` says."""
        return min(100, int(100 * (self.completed + 1e-6) / self.total)) if self.total > 0 else 0

    @property
    def rate(self) -> float | None:
        """Units per second done since the task started (None before the first unit)."""
        done = self.completed - self.started_from
        return done / self.elapsed if done > 0 and self.elapsed > 0 else None

    @property
    def eta(self) -> float | None:
        """Seconds left at the rate so far (None while unknown)."""
        rate = self.rate
        return max(0.0, (self.total - self.completed) / rate) if rate and self.total else None


class Subscriber(Protocol):
    """A callable taking events; one that keeps no messages for anyone to read (a clock, a state)
    sets ``shows_messages = False``, and messages nobody shows go to the ``dreambooth`` logger."""
    def __call__(self, event: ProgressEvent) -> None: ...


_global: list[Subscriber] = []
_lock = threading.Lock()
_scoped: contextvars.ContextVar[tuple[Subscriber, ...]] = contextvars.ContextVar("dreambooth_subscribers", default=())
_ids = itertools.count(1)
_log = logging.getLogger("dreambooth")


def subscribe(subscriber: Subscriber) -> Callable[[], None]:
    """Send every event of this process to ``subscriber``; returns the function that stops it."""
    with _lock:
        _global.append(subscriber)

    def unsubscribe() -> None:
        with _lock:
            if subscriber in _global:
                _global.remove(subscriber)
    return unsubscribe


@contextlib.contextmanager
def subscribed(subscriber: Subscriber) -> Iterator[None]:
    """Within the block (and only in this context: thread, task), events also go to ``subscriber``."""
    token = _scoped.set(_scoped.get() + (subscriber,))
    try:
        yield
    finally:
        _scoped.reset(token)


def emit(event: ProgressEvent) -> None:
    with _lock:
        targets = list(_global)
    scoped = _scoped.get()
    for subscriber in (*targets, *scoped):
        subscriber(event)
    if event.kind == "message" and not any(getattr(s, "shows_messages", True) for s in (*targets, *scoped)):
        # nobody shows them (a Python caller without show_progress()): messages go to Python's logging,
        # whose default prints warnings on stderr, so a warning (validation metrics off) is never lost
        _log.log(logging.WARNING if event.level == "warning" else logging.INFO, event.message)


def message(text: str, level: str = "info", task: str = "", own: bool = False) -> None:
    """A line for the user (``level`` "warning" for warnings), through the subscribers; ``own``: one
    that only this process of several (``accelerate launch``) would say, which each then shows."""
    emit(ProgressEvent("message", task, 0, message=text, level=level, own=own))


def warn(text: str, task: str = "") -> None:
    message(text, "warning", task)


class Task:
    """A running task: ``advance`` it as units complete; fields ride along (loss, learning rate)."""

    def __init__(self, name: str, total: float, completed: float = 0.0, **fields):
        self.name, self.total, self.completed = name, float(total), float(completed)
        self.id = next(_ids)
        self.fields = dict(fields)
        self.started = time.monotonic()
        self._start_completed = self.completed

    def _event(self, kind: str) -> ProgressEvent:
        # the rate counts only what this run did (a resumed run starts part-way)
        elapsed = time.monotonic() - self.started
        return ProgressEvent(kind, self.name, self.id, self.completed, self.total, elapsed, dict(self.fields),
                             started_from=self._start_completed)

    def advance(self, n: float = 1, **fields) -> None:
        self.completed += n
        self.fields.update(fields)
        emit(self._event("advance"))

    def update(self, **fields) -> None:
        self.fields.update(fields)
        emit(self._event("advance"))

    @property
    def done_this_run(self) -> float:
        return self.completed - self._start_completed


@contextlib.contextmanager
def task(name: str, total: float, completed: float = 0.0, **fields) -> Iterator[Task]:
    """Open a task: a start event now, an end event when the block ends (also on error)."""
    current = Task(name, total, completed, **fields)
    emit(current._event("start"))
    try:
        yield current
    finally:
        emit(current._event("end"))
