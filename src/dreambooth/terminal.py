"""The terminal subscriber: progress events as rich bars on stderr (count, it/s, elapsed, ETA,
loss when the task reports one), messages as lines.

``show_progress()`` subscribes it; the CLI does so for every command. ``DREAMBOOTH_NO_PROGRESS=1``
keeps the bars off (logs, tests); messages still print.
"""
from __future__ import annotations

import os
import sys
import threading
import time

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text

from . import progress
from .progress import ProgressEvent

LINE_EVERY = 30.0        # seconds between a task's lines in a log file


def console() -> Console:
    # Built on demand so redirected stderr (tests, pipes) is honoured.
    return Console(file=sys.stderr, highlight=False, soft_wrap=True)


def bars_enabled() -> bool:
    return os.environ.get("DREAMBOOTH_NO_PROGRESS", "0").lower() not in ("1", "true", "yes")


class RateColumn(ProgressColumn):
    """it/s, or s/it when slower than one per second."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        if not speed:
            return Text("-- it/s", style="progress.data.speed")
        return Text(f"{speed:.2f} it/s" if speed >= 1 else f"{1 / speed:.2f} s/it", style="progress.data.speed")


class FieldsColumn(ProgressColumn):
    """The numbers a task reports beside its count (``loss 0.1234``); none before the first (training
    starts its bar with a NaN loss, which is no loss yet)."""

    def render(self, task) -> Text:
        shown = [f"{k} {v:.4f}" for k, v in task.fields.items() if k == "loss" and isinstance(v, float) and v == v]
        return Text("  ".join(shown))


class TerminalBars:
    """One rich display for all open tasks; a task's bar stays on screen when it ends."""

    def __init__(self, bars: bool | None = None, every_message: bool = True):
        self.bars = bars_enabled() if bars is None else bars
        self.every_message = every_message      # False: only a message marked this process's own
        self._lock = threading.Lock()
        self._display: Progress | None = None
        self._rows: dict[int, object] = {}
        self._said: dict[int, float] = {}          # (log files) when each task's last line was printed

    def __call__(self, event: ProgressEvent) -> None:
        with self._lock:
            if event.kind == "message" and not (self.every_message or event.own):
                return
            if event.kind == "message":
                text = f"[yellow]warning:[/] {event.message}" if event.level == "warning" else event.message
                (self._display.console if self._display else console()).print(text)
            elif self.bars and not console().is_terminal:     # a log file (nohup): lines, not a bar drawn at the end
                self._line(event)
            elif self.bars:
                self._bar(event)

    def _line(self, event: ProgressEvent) -> None:
        """A task's progress as a plain line when it ends and every ``LINE_EVERY`` seconds while it runs."""
        now = time.monotonic()
        if event.kind == "start":
            self._said[event.task_id] = now
            return
        if event.kind == "advance" and now - self._said.get(event.task_id, now) < LINE_EVERY:
            return
        self._said[event.task_id] = now
        rate, eta = event.rate, event.eta
        loss = event.fields.get("loss")
        console().print(f"{event.task} {event.done}/{event.total:.0f}"          # whole units; the one under way in %
                        + (f" ({event.percent}%)" if event.total else "")
                        + (f", {rate:.2f} it/s" if rate and rate >= 1 else f", {1 / rate:.2f} s/it" if rate else "")
                        + (f", ETA {eta:.0f} s" if eta and event.kind != "end" else "")
                        + (f", loss {loss:.4f}" if isinstance(loss, float) and loss == loss else "")
                        + (f", {'done in' if event.completed >= event.total else 'stopped after'} {event.elapsed:.0f} s"
                           if event.kind == "end" else ""))
        if event.kind == "end":
            self._said.pop(event.task_id, None)

    def _bar(self, event: ProgressEvent) -> None:
        if event.kind == "start":
            if self._display is None:
                self._display = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                         RateColumn(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                         FieldsColumn(), console=console(), transient=False)
                self._display.start()
            self._rows[event.task_id] = self._display.add_task(event.task, total=event.total,
                                                               completed=event.completed, **event.fields)
            return
        row = self._rows.get(event.task_id)
        if row is None or self._display is None:
            return
        self._display.update(row, completed=event.completed, total=event.total, **event.fields)
        if event.kind == "end":
            del self._rows[event.task_id]
            if not self._rows:
                self._display.stop()
                self._display = None


    def close(self) -> None:
        """Stop a display still drawing (a Ctrl-C between two of its events): the next line starts its own."""
        with self._lock:
            if self._display is not None:
                self._display.stop()
                self._display, self._rows = None, {}


_installed: TerminalBars | None = None


def close_display() -> None:
    if _installed is not None:
        _installed.close()


def show_progress(bars: bool | None = None, every_message: bool = True) -> None:
    """Show every long job's progress in this terminal (once per process); ``every_message`` False:
    only the messages that are this process's own (the others' first process shows the rest)."""
    global _installed
    if _installed is None:
        _installed = TerminalBars(bars, every_message)
        progress.subscribe(_installed)
