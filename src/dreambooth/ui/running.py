"""One generation of one browser tab, on the server's engine: its own progress and preview, its own
Interrupt and Skip, and its images saved as the API saves them.

The engine runs requests one at a time and reports the one running in ``engine.state``, whoever sent
it (another tab, an API client). A tab's request therefore tells its own turn apart: the engine runs
it on the tab's thread, so the first progress event that thread sees (``progress.subscribed`` is
scoped to it) is the request's start, and ``engine.state.started`` then marks it. Until then the tab
says it waits, and its Interrupt or Skip cancels the request before it makes anything."""
from __future__ import annotations

import base64
import io
import os
import threading
import time
from pathlib import Path

import gradio as gr

from .. import progress
from ..errors import UserError, exception_line
from ..generation.infotext import read_infotext
from ..generation.params import GenerationParams
from ..generation.xyz import run_prompt_matrix, run_xyz
from ..grid import batch_grid
from ..images import write_png
from ..outputs import GRID_PREFIX, claim_numbered
from ..server.engine import Engine
from .errors import ui_error


class Request:
    """A tab's request: waiting for the device until its first progress event, then running."""
    shows_messages = False          # (a progress subscriber that shows no messages: they go to the log)

    def __init__(self, engine: Engine):
        self.engine = engine
        self.lock = threading.Lock()
        self.started: float | None = None       # engine.state.started of this request, once it runs
        self.cancelled = False

    def __call__(self, event) -> None:
        """A progress event on the request's own thread: the engine runs it now."""
        self.begin()

    def begin(self) -> bool:
        """Mark the request running (the engine's state is now its own); False if cancelled before."""
        with self.lock:
            s = self.engine.state
            if self.started is None and s.job:
                self.started = s.started
                if self.cancelled:                 # asked while it waited: it ends before its first step
                    s.interrupted = True
            return not self.cancelled

    def running(self) -> bool:
        s = self.engine.state
        return self.started is not None and bool(s.job) and s.started == self.started

    def stop(self, what: str) -> None:
        """Interrupt or Skip (``what``) this request: cancelled if it still waits."""
        with self.lock:
            if self.started is None:
                self.cancelled = True
                return
        s = self.engine.state
        with s.lock:                               # (the engine starts the next request under this lock)
            if self.running():
                setattr(s, "interrupted" if what == "interrupt" else "skipped", True)


def save_grid(made: list, grids: Path | None) -> Path | None:
    """As the API's ``save_images`` and A1111: several images get a grid, saved among the grids."""
    if len(made) < 2 or grids is None:
        return None
    return write_png(batch_grid([m.image for m in made]), claim_numbered(grids, made[0].seed, GRID_PREFIX),
                     made[0].infotext)


def among_grids(path: Path | None, grids: Path) -> Path | None:
    """A plot's grid (saved by ``run_xyz`` beside its cells) moved among the grids, as A1111 keeps it."""
    if path is None:
        return None
    target = claim_numbered(grids, int(path.stem.rsplit("-", 1)[-1]), GRID_PREFIX)
    os.replace(path, target)
    return target


def run(engine: Engine, request: Request, params: GenerationParams, images: Path, grids: Path, script: str,
        x: str, y: str, z: str):
    """Generate in a thread and stream (gallery, preview, progress text, info) while it runs."""
    box: dict = {}

    def script_run(work):
        def started(pipeline, controls):
            return work(pipeline, controls) if request.begin() else None
        return engine.run(started)

    def work() -> None:
        try:
            with progress.subscribed(request):
                if script == "Prompt matrix":
                    result = script_run(lambda p, c: run_prompt_matrix(p, params, images, controls=c))
                elif script == "X/Y/Z plot":
                    result = script_run(lambda p, c: run_xyz(p, params, x or None, y or None, z or None,
                                                             images, controls=c))
                else:
                    result = engine.generate(params, output_dir=images)
            # the grid here, not where the page is answered: written even if the tab has gone (an
            # interrupted run's too, of the images it made, as A1111 writes it)
            if isinstance(result, tuple):                        # engine.generate: (images, (model, vae))
                box["made"], box["grid"] = result[0], save_grid(result[0], grids)
            elif result is not None:                             # prompt matrix / X/Y/Z
                box["made"], box["grid"] = result.images, among_grids(result.grid_path, grids)
        except UserError as exc:
            box["error"] = str(exc)
        except Exception as exc:   # one line in the UI, never a traceback
            box["error"] = f"unexpected {exception_line(exc)}"

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    text = "waiting..."
    while thread.is_alive():
        s, preview = engine.state, None
        if request.running():                  # this tab's own request: its progress and preview alone
            text = f"{s.fraction:.0%}  ETA {s.eta:.1f} s"
            shown = s.take_preview()
            preview = _image(shown) if shown else None
        elif request.started is None:
            text = "waiting... (after the generation under way)" if s.job else "waiting..."
        yield gr.update(), preview, text, gr.update()
        time.sleep(0.4)
    if "error" in box:
        raise ui_error(box["error"])
    made, grid = box.get("made", []), box.get("grid")
    if request.cancelled and not made:
        yield gr.update(), None, "interrupted before it started: nothing made", gr.update()   # the last images stay
        return
    # each item's caption is its infotext (the grid's own: a plot's names its axes), which the info shows
    items = ([(str(grid), read_infotext(grid) or "")] if grid else []) + [(str(m.path), m.infotext) for m in made]
    info = items[0][1] if items else ""
    yield items, None, f"done: {len(made)} image(s)" + (" and their grid" if grid else ""), info


def others_run(engine: Engine, mine):
    """A generation that is not this tab's (another tab's, the API's, or this page's own before a
    reload), shown while it runs and until ``mine()`` (this tab has sent its own): (progress text)."""
    yield gr.update()                   # (a generator that yields nothing keeps gradio's stream open)
    shown = False
    while engine.state.job and not mine():
        s = engine.state
        yield f"a generation under way (another tab's or the API's): {s.fraction:.0%}  ETA {s.eta:.1f} s; " \
              "Interrupt stops it"
        shown = True
        time.sleep(0.5)
    if shown and not mine():
        yield ""


def _image(data: str):
    from PIL import Image
    return Image.open(io.BytesIO(base64.b64decode(data)))
