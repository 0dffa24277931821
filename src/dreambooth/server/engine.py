"""The server's one device: the model loaded for generation, the gate that shares the device with a
training job, and the state ``/sdapi/v1/progress`` reports.

Generation runs through ``generation.sampling.generate``, the CLI's own path. Requests run one at a
time; while a training job runs, a request waits only for the training step in progress: the job
calls :meth:`DeviceGate.between_steps` after each step and pauses while requests wait."""
from __future__ import annotations

import base64
import io
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from .. import progress
from ..devices import generation_dtype, pick_device
from ..generation.params import GenerationParams
from ..generation.pipeline import GenerationPipeline, model_info_for
from ..errors import UserError, exception_line
from ..generation.previews import PREVIEW_METHODS, preview_image
from ..generation.sampling import Controls, GeneratedImage, generate
from .catalog import Catalog, ModelEntry, VaeEntry
from .client_gone import ClientGone
from .model_configs import load_entry
from .json_bodies import shortened



class Stopping(UserError):
    """A request refused because the server stops: a 503 with Retry-After (the client did nothing wrong)."""


class DeviceGate:
    """Generation requests and a training job take turns on the device, a request between two steps."""

    def __init__(self):
        self._cond = threading.Condition()
        self._requests = threading.Lock()        # one request at a time
        self._waiting = 0
        self._training = False
        self._paused = False
        self.closed = False                        # the server stops: no request starts any more
        self.last_wait = 0.0                       # seconds the last request waited for a training step

    @contextmanager
    def request(self, gone: threading.Event | None = None):
        """The device for one request; ``gone``, once set, ends the wait (its client has left): ClientGone."""
        arrived, held = time.monotonic(), False
        left = gone.is_set if gone is not None else lambda: False
        with self._cond:
            self._waiting += 1
        try:
            with self._cond:
                while self._training and not self._paused and not self.closed and not left():
                    self._cond.wait(0.5 if gone is not None else None)
            while not self.closed and not held and not left():     # (a wait the lock's release ends at once)
                held = self._requests.acquire(timeout=0.2)
            if self.closed:
                raise Stopping("the server is stopping; send the request again once it is back")
            if not held:
                raise ClientGone()
            self.last_wait = time.monotonic() - arrived
            yield
        finally:
            if held:
                self._requests.release()
            with self._cond:
                self._waiting -= 1
                self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    @contextmanager
    def training(self):
        """A training job holds the device as a request does, from before it loads its models until it
        is done, but for ``between_steps``: diffusers' loading swaps process-wide state for a while (the
        default dtype, ``torch.nn.init``, accelerate's meta-device parameters), which a generation or a
        model loaded in another thread at that moment would take."""
        with self._cond:
            self._training = True
        self._requests.acquire()                    # the request under way, if any, finishes first
        try:
            yield
        finally:
            self._requests.release()
            with self._cond:
                self._training, self._paused = False, False
                self._cond.notify_all()

    def between_steps(self) -> None:
        """Called by the training job after each step: let waiting requests run, then go on."""
        with self._cond:
            if not self._waiting:
                return
            self._paused = True
            self._cond.notify_all()
        self._requests.release()
        try:
            with self._cond:
                while self._waiting:
                    self._cond.wait()
                self._paused = False
        finally:
            self._requests.acquire()


@dataclass
class Progress:
    """What ``/sdapi/v1/progress`` reports, kept up to date by the progress events of the request. As
    in the WebUI, a job is a batch (``job_count`` is ``n_iter``), and its sampling steps count from 0."""
    job: str = ""
    job_count: int = 0
    per_job: int = 1                 # images a job makes: the batch size
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0
    fraction: float = 0.0
    eta: float = 0.0
    started: float = 0.0
    job_timestamp: str = "0"
    interrupted: bool = False
    skipped: bool = False
    preview: str | None = None
    watched: bool = False            # someone asked for the preview during this request: keep making it
    lock: threading.Lock = field(default_factory=threading.Lock)
    shows_messages = False           # (a class attribute: messages go to the log, progress.emit)

    def take_preview(self) -> str | None:
        """The latest live preview (base64 PNG); asking is what makes the next ones (``Engine._preview``)."""
        self.watched = True
        return self.preview

    def __call__(self, event: progress.ProgressEvent) -> None:
        if event.kind == "message":
            return
        with self.lock:
            self.fraction = min(1.0, event.completed / max(event.total, 1))
            jobs = event.completed / self.per_job + 1e-6         # (a sum of step fractions falls short of whole)
            self.job_no = int(jobs)
            self.sampling_step = int((jobs - int(jobs)) * self.sampling_steps)
            self.eta = event.eta or 0.0

    def ask(self, what: str) -> None:
        """Interrupt (``"interrupt"``) or skip the image of whatever runs now, as A1111's buttons do."""
        with self.lock:
            if self.job:
                setattr(self, "interrupted" if what == "interrupt" else "skipped", True)

    def stop(self) -> str | None:
        if self.interrupted:
            return "interrupt"
        if self.skipped:
            return "skip"
        return None


# The WebUI's live-preview options, with its defaults but two: the full VAE (we ship no "Approx NN"
# network), and so the first image alone (a grid would decode every image of the batch).
PREVIEW_DEFAULTS = {"live_previews_enable": True, "show_progress_every_n_steps": 10, "show_progress_type": "Full",
                    "show_progress_grid": False}
PREVIEW_OPTIONS = tuple(PREVIEW_DEFAULTS)


def check_preview_option(key: str, value) -> None:
    """A live-preview option as ``/sdapi/v1/options`` or a request's ``override_settings`` sets it: a
    one-line error naming it, if wrong."""
    if key in ("live_previews_enable", "show_progress_grid") and not isinstance(value, bool):
        raise UserError(f"{key}: expected true or false")
    if key == "show_progress_type" and value not in PREVIEW_METHODS:
        raise UserError(f"show_progress_type: {shortened(repr(value))} is not a preview method here; "
                        f"expected one of {', '.join(PREVIEW_METHODS)}")
    if key == "show_progress_every_n_steps" and (isinstance(value, bool) or not isinstance(value, int) or value < -1):
        raise UserError("show_progress_every_n_steps: expected a whole number of steps, or -1 for no live preview")


class Engine:
    def __init__(self, catalog: Catalog, device: str | None = None, preview_every: int = 10, medvram: bool = False):
        self.catalog = catalog
        self.device = pick_device(device)
        self.gate = DeviceGate()
        self.state = Progress()
        # (/sdapi/v1/options changes them for the next requests)
        self.options = {**PREVIEW_DEFAULTS, "show_progress_every_n_steps": preview_every}
        self.medvram = medvram
        self._load_lock = threading.Lock()
        self.pipeline: GenerationPipeline | None = None
        self.entry: ModelEntry | None = None
        self.vae: VaeEntry | None = None
        self.parked = False                  # unload(): in host memory until a request or reload() wants it

    def load(self, entry: ModelEntry, vae: VaeEntry | None = None, field: str = "sd_model_checkpoint") -> None:
        """Make ``entry`` (with ``vae``, or its own) the model requests use; ``field`` names it in errors."""
        with self._load_lock:
            if self.entry is entry and self.vae is vae and self.pipeline is not None:
                return
            pipe = load_entry(entry, str(vae.path) if vae else None, generation_dtype(self.device), field)
            info = model_info_for(entry.spec, str(vae.path) if vae else None, entry.config)
            # the infotext's paths (for the CLI's --from-image) are the server's folders: never in what it shares
            info.name, info.share_paths = entry.name, False
            self.pipeline = GenerationPipeline(pipe, info, self.catalog.library()).to(self.device, self.medvram)
            self.entry, self.vae, self.parked = entry, vae, False

    def unload(self) -> None:
        """A1111's unload-checkpoint: the model leaves the GPU, its memory free for other programs, until
        the next request or ``reload`` (on a CPU it stays where it is)."""
        with self.gate.request():
            if self.pipeline is not None and self.device.type != "cpu" and not self.parked:
                self.pipeline.to(torch.device("cpu"))
                torch.cuda.empty_cache()
                self.parked = True

    def reload(self) -> None:
        with self.gate.request():
            self._on_device()

    def _on_device(self) -> None:
        if self.parked and self.pipeline is not None:
            self.pipeline.to(self.device, self.medvram)
            self.parked = False

    def refresh_loras(self) -> None:
        if self.pipeline is not None:
            self.pipeline.library = self.catalog.library()

    def generate(self, params: GenerationParams, switch: tuple | None = None, output_dir=None,
                 options: dict | None = None, gone: threading.Event | None = None):
        """One request: waits its turn on the device, reports progress, can be interrupted. ``switch``:
        (model, VAE, restore afterwards) and ``options`` (live-preview options for this request alone)
        from the request's ``override_settings``; ``gone``, once set, stops it (its client left).
        Returns the images and the (model, VAE) that made them."""
        with self.gate.request(gone):
            before = (self.entry, self.vae)
            self._on_device()
            if switch is not None:
                self.load(switch[0], switch[1], "override_settings: sd_model_checkpoint")
            try:
                return self._generate(params, output_dir, options, gone), (self.entry, self.vae)
            finally:
                if switch is not None and switch[2]:
                    self.load(*before)

    def run(self, work):
        """Any generation function ``work(pipeline, controls)`` (prompt matrix, X/Y/Z) under the same
        rules as ``generate``: its turn on the device, progress, interrupt, skip and live previews."""
        with self.gate.request():
            self._on_device()
            return self._tracked(lambda controls: work(self.pipeline, controls), 1, 0)

    def run_on(self, entry: ModelEntry, work):
        """``work(pipeline)`` on ``entry`` (its own VAE), then back to the model loaded before."""
        with self.gate.request():
            before = (self.entry, self.vae)
            self._on_device()
            self.load(entry, None)
            try:
                return self._tracked(lambda controls: work(self.pipeline), 1, 0)
            finally:
                self.load(*before)

    def _generate(self, params: GenerationParams, output_dir=None, options: dict | None = None,
                  gone: threading.Event | None = None) -> list[GeneratedImage]:
        steps = params.steps + ((params.hires_steps or params.steps) if params.hires else 0)   # the hires pass's too
        return self._tracked(lambda controls: generate(self.pipeline, params, output_dir, controls=controls),
                             params.batch_count * params.batch_size * params.passes, steps, options,
                             params.batch_size * params.passes, gone)

    def _tracked(self, work, images: int, steps: int, options: dict | None = None, per_job: int = 1,
                 gone: threading.Event | None = None):
        s = self.state
        with s.lock:
            s.job, s.job_count, s.per_job, s.job_no = "txt2img", max(1, images // per_job), per_job, 0
            s.fraction, s.eta = 0.0, 0.0
            s.sampling_steps, s.sampling_step, s.interrupted, s.skipped, s.preview = steps, 0, False, False, None
            s.watched = False
            s.started = time.time()
            s.job_timestamp = time.strftime("%Y%m%d%H%M%S")
        chosen = {**self.options, **(options or {})}
        every = chosen["show_progress_every_n_steps"]
        method, grid = chosen["show_progress_type"], chosen["show_progress_grid"]
        preview = (lambda latents: self._preview(latents, method, grid)) \
            if chosen["live_previews_enable"] and every > 0 else None
        stop = self._stop if gone is None else lambda: "interrupt" if gone.is_set() else self._stop()
        controls = Controls(stop=stop, preview=preview, preview_every=max(1, every))
        try:
            with progress.subscribed(s):
                return work(controls)
        finally:
            with s.lock:
                s.job, s.job_count, s.fraction, s.sampling_step, s.preview = "", 0, 0.0, 0, None

    def close(self) -> None:
        """The server stops (SIGTERM, Ctrl-C): the running request ends at its next step (the images so far
        are its reply) and the waiting ones are refused, so that uvicorn, which waits for every open
        request, is not kept up by generations whose clients may be gone."""
        self.gate.close()
        self.state.interrupted = True

    def _stop(self) -> str | None:
        if self.gate.closed:
            return "interrupt"
        answer = self.state.stop()
        if answer == "skip":
            self.state.skipped = False              # the skip ends one image only
        return answer

    def _preview(self, latents: torch.Tensor, method: str = "Full", grid: bool = False) -> None:
        """The batch as it stands (its first image, or a grid), made only while someone asks for it (a
        client polling ``/progress``, the web UI): an API client that only waits for its images pays nothing.
        On the sampling thread, between two steps, so its memory never adds to a step's."""
        if not self.state.watched:
            return
        try:
            image = preview_image(self.pipeline.pipe, latents, method, grid)
        except Exception as exc:       # (out of memory, say) a preview never costs the request its images
            progress.warn(f"live preview skipped: {exception_line(exc)}")
            return
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        self.state.preview = base64.b64encode(buffer.getvalue()).decode()
