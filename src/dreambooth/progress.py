"""Progress bars and console output shared by every long job (rich, on stderr).

``DREAMBOOTH_NO_PROGRESS=1`` turns bars off (tests, logs); messages still print.
"""
from __future__ import annotations

import contextlib
import os
import sys

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text


def console() -> Console:
    # Built on demand so redirected stderr (tests, pipes) is honoured.
    return Console(file=sys.stderr, highlight=False, soft_wrap=True)


def enabled() -> bool:
    return os.environ.get("DREAMBOOTH_NO_PROGRESS", "0") != "1"


class RateColumn(ProgressColumn):
    """it/s, or s/it when slower than one per second."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        if not speed:
            return Text("-- it/s", style="progress.data.speed")
        return Text(f"{speed:.2f} it/s" if speed >= 1 else f"{1 / speed:.2f} s/it", style="progress.data.speed")


class _Bar:
    def __init__(self, progress: Progress | None, task):
        self.progress, self.task = progress, task

    def advance(self, n: int = 1, **fields) -> None:
        if self.progress is not None:
            self.progress.update(self.task, advance=n, **fields)

    def update(self, **fields) -> None:
        if self.progress is not None:
            self.progress.update(self.task, **fields)


@contextlib.contextmanager
def progress_bar(total: int, description: str, extra: str = "", completed: int = 0):
    """A bar with count, rate, elapsed and ETA; ``extra`` is a format string over task fields
    (e.g. ``"loss {task.fields[loss]:.4f}"``)."""
    if not enabled():
        yield _Bar(None, None)
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    if extra:
        columns.append(TextColumn(extra))
    with Progress(*columns, console=console(), transient=False) as progress:
        fields = {"loss": float("nan")} if "loss" in extra else {}
        task = progress.add_task(description, total=total, completed=completed, **fields)
        yield _Bar(progress, task)
