"""Training as persistent jobs: a SQLite store under ``--data-dir`` and one runner thread.

A job is a photo folder, the prompts, a preset and overrides with ``TrainConfig``'s names; it trains
through ``training.train``, the CLI's function, into ``DATA/jobs/<id>/output``. Jobs run one at a
time, checkpointing as they go (every tenth of the run unless asked otherwise). A server stopped or
killed and started again finds every job as it was: queued ones run, a running one resumes from its
last checkpoint. The trainer calls :meth:`engine.DeviceGate.between_steps` after each step, so
generation requests are served while a job runs."""
from __future__ import annotations

import json
import re
import shutil
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .. import progress
from ..errors import UserError, exception_line
from ..outputs import take_lock
from ..training.callbacks import CheckpointSaved, StepEnd, TrainingCallback, ValidationEnd
from ..training.checkpoint import finished_at
from ..training.config import TrainConfig, build_config
from ..training.phases import phase_line
from ..training.results import TrainingInterrupted
from ..training.trainer import train
from .engine import DeviceGate

STATES = ("queued", "running", "cancelling", "done", "failed", "cancelled")
ENDED = ("done", "failed", "cancelled")
COLUMNS = ("id", "created", "state", "request", "step", "max_steps", "losses", "eta", "error", "started", "finished",
           "validations", "method")
# Paths a client may not choose: the server puts the photos and the output in the job's own folder.
SERVER_FIELDS = ("instance_dir", "output", "class_dir", "resume", "overwrite", "model_config", "dino_model",
                 "clip_model", "vae", "model")
FORM_FIELDS = ("instance_prompt", "class_prompt")     # fields of the request itself, not overrides
LOCK_FILE = "server.lock"
_held: dict[Path, object] = {}


def hold_data_dir(data_dir: Path) -> None:
    """One server per data folder: a second would run the same jobs into the same folders. The lock
    (on ``DATA/server.lock``) lasts as long as the process; taking it again in the same process is a no-op."""
    folder = Path(data_dir).expanduser().resolve()
    if folder in _held:
        return
    folder.mkdir(parents=True, exist_ok=True)
    handle, holder = take_lock(folder / LOCK_FILE)
    if holder is not None:
        raise UserError(f"--data-dir {data_dir}: another dreambooth serve uses it"
                        f"{f' (pid {holder})' if holder else ''}; stop it, or give another --data-dir")
    _held[folder] = handle


class JobCancelled(Exception):
    pass


class JobStopped(Exception):
    """The server stops while the job makes its class images: back to the queue (those made are kept)."""


@dataclass
class Job:
    id: str
    created: float
    state: str
    request: dict
    step: int = 0
    max_steps: int = 0
    losses: list | None = None
    eta: float | None = None
    error: str | None = None
    started: float | None = None
    finished: float | None = None
    validations: list | None = None
    method: str | None = None


class JobStore:
    """The jobs, in SQLite (one file, safe against a kill at any moment)."""

    def __init__(self, data_dir: Path):
        self.root = Path(data_dir) / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = Path(data_dir) / "jobs.sqlite"
        self._lock = threading.Lock()
        self.adding = threading.Lock()          # a name checked and its job added as one step
        try:
            self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, created REAL, state TEXT, "
                            "request TEXT, step INTEGER, max_steps INTEGER, losses TEXT, eta REAL, error TEXT, "
                            "started REAL, finished REAL, validations TEXT, method TEXT)")
        except sqlite3.DatabaseError as exc:
            raise UserError(f"--data-dir {data_dir}: {self.path} is not a job store ({exc}); move it aside "
                            "to start with an empty one") from None

    def folder(self, job_id: str) -> Path:
        return self.root / job_id

    def output(self, job: Job) -> Path:
        """The job's trained model: named as the client asked (the model's or LoRA's name in the lists)."""
        return self.folder(job.id) / (job.request.get("name") or f"job-{job.id}")

    def add(self, request: dict, method: str, max_steps: int) -> Job:
        job = Job(uuid.uuid4().hex[:12], time.time(), "queued", request, 0, max_steps, [], None, None, None, None, [], method)
        with self._lock:
            self.db.execute(f"INSERT INTO jobs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                            self._row(job))
        return job

    def update(self, job_id: str, **values) -> None:
        sets = ", ".join(f"{k} = ?" for k in values)
        encoded = [json.dumps(v) if k in ("losses", "validations", "request") else v for k, v in values.items()]
        with self._lock:
            self.db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*encoded, job_id))

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self.db.execute(f"SELECT {', '.join(COLUMNS)} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._job(row) if row else None

    def all(self) -> list[Job]:
        with self._lock:
            rows = self.db.execute(f"SELECT {', '.join(COLUMNS)} FROM jobs ORDER BY created").fetchall()
        return [self._job(r) for r in rows]

    def delete(self, job_id: str) -> None:
        """An ended job: its row, photos, log and output (its model leaves the lists)."""
        with self._lock:
            self.db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        shutil.rmtree(self.folder(job_id), ignore_errors=True)

    def outputs(self) -> list[Path]:
        return [self.output(j) for j in self.all() if j.state == "done"]

    @staticmethod
    def _row(job: Job) -> tuple:
        return (job.id, job.created, job.state, json.dumps(job.request), job.step, job.max_steps,
                json.dumps(job.losses or []), job.eta, job.error, job.started, job.finished,
                json.dumps(job.validations or []), job.method)

    @staticmethod
    def _job(row) -> Job:
        values = dict(zip(COLUMNS, row))
        for key in ("request", "losses", "validations"):
            try:
                values[key] = json.loads(values[key]) if values[key] else ([] if key != "request" else {})
            except ValueError:
                values[key] = [] if key != "request" else {}
        return Job(**values)


# Settings the server chooses, as a job's client knows them (it cannot send them as overrides)
SERVER_WORDS = {"instance_dir": "photos", "model": "model", "dino_model": "the server's DINO model",
                "clip_model": "the server's CLIP model"}


def in_api_words(message: str, request: dict | None = None) -> str:
    """A training message names the CLI's flags; a job's client sent fields: ``--batch-size`` is its
    ``overrides.batch_size``, ``--class-prompt`` its ``class_prompt``, ``--no-use-8bit-adam`` what to
    send (``overrides {"use_8bit_adam": false}``); a setting the job's ``request`` did not override is
    its preset's (or a default), not a field the client sent."""
    fields = {f.name: f for f in TrainConfig.fields()}
    sent = None if request is None else set(request.get("overrides") or {}) | ({"vae"} if "vae" in request else set())

    def field(match: re.Match) -> str:
        negated, name = bool(match.group(1)), match.group(2).replace("-", "_")
        if negated:            # a switch's off form: what a client sends for it
            known = name in fields and fields[name].type in ("bool", bool) and name not in SERVER_FIELDS
            return f'overrides {{"{name}": false}}' if known else match.group(0)
        if name in FORM_FIELDS:
            return name
        if name in SERVER_WORDS:
            return SERVER_WORDS[name]
        if name not in fields or (name in SERVER_FIELDS and name != "vae"):
            return match.group(0)
        if sent is None or name in sent:
            return f"overrides.{name}"
        return f"{name} (of the {request.get('preset') or 'default'} settings)"
    return re.sub(r"(?<![\w-])--(no-)?([a-z][a-z0-9-]*)", field, message)


def job_config(request: dict, output: Path, photos: Path, model_spec: str) -> TrainConfig:
    """The TrainConfig of a job request: its preset and overrides, checked as the CLI checks them,
    with the paths the server chooses, and a checkpoint every tenth of the run unless they choose."""
    overrides = dict(request.get("overrides") or {})
    for name in overrides:
        if name in FORM_FIELDS:
            raise UserError(f"overrides.{name}: a field of the request itself; send it as {name}, not in overrides")
        if overrides[name] is None:
            raise UserError(f"overrides.{name}: null; leave it out for the preset's value")
        if name in SERVER_FIELDS:
            raise UserError(f"overrides.{name}: set by the server; not a job setting")
        if name not in {f.name for f in TrainConfig.fields()}:
            raise UserError(f"overrides.{name}: not a training setting (see dreambooth train --help)")
    values = {**overrides, "model": model_spec, "model_config": request.get("model_config"),
              "instance_dir": str(photos), "output": str(output),
              "instance_prompt": request.get("instance_prompt"), "class_prompt": request.get("class_prompt") or None}
    if "checkpoint_every" not in overrides:
        values["checkpoint_every"] = 0           # filled in below, once max_steps is known
    preset = request.get("preset") or None
    try:
        config = build_config(preset, {k: v for k, v in values.items() if v is not None})
    except UserError as exc:
        raise UserError(str(exc).replace("--config ", "preset ")) from None
    if "vae" in request:                         # a listed VAE the client chose ("": the model's own), not the preset's
        config = config.replace(vae=request["vae"] or None)
    config.validate()                            # every value checked before any is used
    if "checkpoint_every" not in overrides:      # the server's own choice, unless the client made one
        config = config.replace(checkpoint_every=max(1, config.max_steps // 10))
    return config


class JobCallback(TrainingCallback):
    """Records a job's progress, lets generation requests in between steps, and stops on cancel."""

    def __init__(self, store: JobStore, job_id: str, gate: DeviceGate, cancelled: Callable[[], bool],
                 stopping: Callable[[], bool] = lambda: False):
        self.store, self.job_id, self.gate, self.cancelled, self.stopping = store, job_id, gate, cancelled, stopping
        self.losses: list[float] = []
        self.validations: list[dict] = []
        self.started = time.monotonic()
        self.training = False

    def on_train_start(self, run) -> None:
        self.training = True
        self.losses = list(run.losses)
        self.first_step = run.step
        self.started = time.monotonic()

    def on_step_end(self, run, step: StepEnd) -> None:
        self.losses.append(step.loss)
        done = step.step - self.first_step
        eta = (time.monotonic() - self.started) / max(done, 1) * (step.max_steps - step.step)
        self.store.update(self.job_id, step=step.step, losses=self.losses, eta=eta)
        self.on_pause_point(run)

    def on_pause_point(self, run) -> None:
        """After a step, a batch of class images or a validation image: stop when cancelled, else let
        waiting generation requests run."""
        if self.cancelled():
            raise JobCancelled()
        if self.stopping():
            if not self.training:                  # class images: those made are kept, the rest made later
                raise JobStopped()
            run.request_stop()                     # a checkpoint before the next step: no step is lost
        self.gate.between_steps()
        if self.cancelled():                       # asked while the waiting requests ran: not one step more
            raise JobCancelled()

    def on_validation(self, run, validation: ValidationEnd) -> None:
        self.validations.append({"step": validation.step, "grid": validation.grid.name, **validation.metrics})
        self.store.update(self.job_id, validations=self.validations)

    def on_checkpoint(self, run, checkpoint: CheckpointSaved) -> None:
        progress.message(f"checkpoint at step {checkpoint.step}: {checkpoint.path.name}")


def write_log(folder: Path, message: str, level: str = "info") -> None:
    """A line of a job's log; a job deleted meanwhile (its folder gone) has none to write."""
    try:
        with (folder / "log.txt").open("a") as fh:
            fh.write(f"{time.strftime('%H:%M:%S')} {level}: {message}\n")
    except OSError:
        pass


class JobRunner:
    """One thread that runs queued jobs in order, one at a time."""

    def __init__(self, store: JobStore, gate: DeviceGate, model_spec: Callable[[dict], str],
                 transforms: Callable[[str | None, str], list], on_done: Callable[[], None]):
        self.store, self.gate, self.model_spec = store, gate, model_spec
        self.transforms, self.on_done = transforms, on_done
        self._wake = threading.Event()
        self._cancel: set[str] = set()
        self._stop = False
        # what the running job does now ("class images", "training", ...; its counts): before its first
        # step a job reads step 0 for minutes; the phase says why
        self.phases: dict[str, dict] = {}
        self.thread = threading.Thread(target=self._loop, name="dreambooth-jobs", daemon=True)

    def start(self) -> None:
        """Run the queue. A job a killed server left running resumes; one it was cancelling is cancelled."""
        for job in self.store.all():
            if job.state == "running":
                self.store.update(job.id, state="queued")
            elif job.state == "cancelling":
                self.store.update(job.id, state="cancelled", finished=time.time(), eta=None)
                write_log(self.store.folder(job.id), "cancelled (asked before the server stopped)")
        self.thread.start()

    def wake(self) -> None:
        self._wake.set()

    def cancel(self, job_id: str) -> None:
        """A queued job is cancelled now; a running one is "cancelling" (kept across a restart) until
        the run stops at its next step, class-image batch or validation image."""
        job = self.store.get(job_id)
        if job is not None and job.state == "queued":
            self.store.update(job_id, state="cancelled", finished=time.time(), eta=None)
        elif job is not None and job.state == "running":
            self.store.update(job_id, state="cancelling")
        if job is not None and job.state in ("queued", "running"):
            write_log(self.store.folder(job_id), "cancel asked" + (": cancelled" if job.state == "queued" else
                                                                    "; the job stops at its next step"))
        self._cancel.add(job_id)

    def shutdown(self, wait: float = 120.0) -> None:
        """Stop taking jobs; a running one stops at its next step (checkpointed there) or pause point,
        waited for up to ``wait`` seconds, and runs on when the server starts again."""
        self._stop = True
        self._wake.set()
        if self.thread.is_alive():
            self.thread.join(wait)

    def _loop(self) -> None:
        while not self._stop:
            queued = [j for j in self.store.all() if j.state == "queued"]
            if not queued:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            self._run(queued[0])

    def _run(self, job: Job) -> None:
        folder = self.store.folder(job.id)
        output = self.store.output(job)

        def record(event: progress.ProgressEvent) -> None:
            if event.kind == "message":
                write_log(folder, in_api_words(event.message, job.request), event.level)
            elif event.kind in ("start", "advance"):
                self.phases[job.id] = {"task": event.task, "done": event.done, "of": round(event.total)}

        self.store.update(job.id, state="running", started=job.started or time.time(), error=None)
        callback = JobCallback(self.store, job.id, self.gate, lambda: job.id in self._cancel, lambda: self._stop)
        callback.validations = list(job.validations or [])        # a resumed job's earlier ones stay listed
        try:
            config = job_config(job.request, output, folder / "photos", self.model_spec(job.request))
            resumable = any((output / "checkpoints").glob("checkpoint-*"))
            if resumable and finished_at(output) == config.max_steps:     # stopped after its model was written
                self.store.update(job.id, state="done", finished=time.time(), eta=0.0, step=config.max_steps)
                write_log(folder, "done (its model was written before the server stopped)")
                self.on_done()
                return
            config = config.replace(resume="latest" if resumable else None, overwrite=not resumable)
            with progress.subscribed(record), self.gate.training():
                callback.on_pause_point(None)      # cancelled or stopped while it waited for the device: nothing loaded
                record(progress.ProgressEvent("message", "", 0, message="resuming from the last checkpoint"
                                              if resumable else "started"))
                result = train(config, callbacks=[callback], transforms=self.transforms(job.request.get("preset"), config.model))
            record(progress.ProgressEvent("message", "", 0, message=phase_line(result.phases, result.phases_within)))
            self.store.update(job.id, state="done", finished=time.time(), eta=0.0)
            late = " (the cancel came after its last step)" if job.id in self._cancel else ""
            record(progress.ProgressEvent("message", "", 0, message=f"done{late}"))
            self.on_done()
        except (JobStopped, TrainingInterrupted):
            self.store.update(job.id, state="queued")
            step = self.store.get(job.id).step
            record(progress.ProgressEvent("message", "", 0, message=f"stopped with the server at step {step}; "
                                          "it goes on when the server starts again"))
        except JobCancelled:
            self.store.update(job.id, state="cancelled", finished=time.time(), eta=None)
            record(progress.ProgressEvent("message", "", 0, message="cancelled"))
        except UserError as exc:
            self.store.update(job.id, state="failed", error=in_api_words(str(exc), job.request), finished=time.time())
            record(progress.ProgressEvent("message", "", 0, message=str(exc), level="error"))
        except Exception as exc:      # a bug: the job fails, the server goes on
            message = f"unexpected {exception_line(exc)}"
            self.store.update(job.id, state="failed", error=message, finished=time.time())
            record(progress.ProgressEvent("message", "", 0, message=message, level="error"))
        finally:
            self._cancel.discard(job.id)
            self.phases.pop(job.id, None)
