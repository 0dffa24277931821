"""The FastAPI application: the A1111 API, training jobs, HTTP Basic auth on every route, and one
rule for errors: bad input is a 4xx whose ``detail`` is one line naming the field, never a traceback.

``create_app`` is what ``dreambooth serve`` runs (and what a test or the web UI mounts on)."""
from __future__ import annotations

import base64
import binascii
import contextlib
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import Headers

from ..errors import UserError
from . import a1111, extras, jobs_api
from .api_paths import add_api_fallback
from .catalog import Catalog
from .client_gone import ClientGone
from .engine import Engine, Stopping
from .json_bodies import one_line, shortened
from .jobs import JobRunner, JobStore, hold_data_dir
from .a1111_options import FIXED_OPTIONS, HOUSEKEEPING_OPTIONS
from .schemas import GENERATION_OPTIONS


@dataclass
class ServerSettings:
    model: str = "toy"
    data_dir: Path = Path("dreambooth-data")
    models_dir: str | None = None
    model_configs: list[str] = field(default_factory=list)     # configs of single files, one per family
    loras_dir: str | None = None
    api_auth: str | None = None          # "user:pass[,user2:pass2]"
    cors_origins: list[str] = field(default_factory=list)     # A1111's --cors-allow-origins (comma lists split)
    cors_origin_regex: str | None = None                        # A1111's --cors-allow-origins-regex
    device: str | None = None
    preview_every: int = 10             # steps between live previews (the WebUI's default)
    medvram: bool = False                # the parts take turns on the GPU (load_generation_pipeline)
    # what the toy preset passes in (given by the CLI, which may import the toy world: the library may not)
    transforms: Callable[[str | None, str], list] = lambda preset, model: []
    flags: dict = field(default_factory=dict)


def parse_auth(text: str | None) -> dict[str, str]:
    users = {}
    for pair in (text or "").split(","):
        if not pair.strip():
            continue
        user, sep, password = pair.strip().partition(":")
        if not sep or not user or not password:
            raise UserError("--api-auth: expected user:password[,user2:password2]")
        users[user] = password
    return users


def _authorized(header: str | None, users: dict[str, str]) -> bool:
    if not header or not header.lower().startswith("basic "):
        return False
    try:
        user, _, password = base64.b64decode(header[6:], validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return False
    ok = False
    for known, secret in users.items():          # every entry compared, each in constant time
        ok |= secrets.compare_digest(user.encode(), known.encode()) & secrets.compare_digest(password.encode(), secret.encode())
    return ok


def _field_of(message: str) -> str:
    """A library message names CLI flags; the API's fields are the same words with underscores."""
    message = a1111.api_field_message(message)
    if message.startswith("--"):
        flag, _, rest = message[2:].partition(" ")
        return flag.replace("-", "_") + (" " + rest if rest else "")
    return message


def check_port_free(host: str, port: int) -> None:
    """A one-line error, before the model loads, when something already listens on the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)     # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UserError(f"--port {port}: {host}:{port} cannot be served ({exc.strerror or exc}); another "
                            "server there? Stop it, or choose another --port") from None


MAX_JSON_BODY = 256 * 2**20     # bytes: a few large init images in base64; a body read whole into memory


class TooLarge(HTTPException):
    def __init__(self, size: str):
        super().__init__(413, too_large(size))


def too_large(size: str) -> str:
    return f"body: {size} bytes; at most {MAX_JSON_BODY:,} on this server"


class BasicAuth:
    """``--api-auth``: a 401 for a request without a known user's password. Plain ASGI, not
    ``@app.middleware``: Starlette's BaseHTTPMiddleware hands the route a receive channel of its own,
    in which a client's disconnect never shows (client_gone then let an abandoned generation run on)."""

    def __init__(self, app, users: dict[str, str]):
        self.app, self.users = app, users

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and not _authorized(Headers(scope=scope).get("authorization"), self.users):
            return await JSONResponse({"detail": "Not authenticated"}, status_code=401,
                                      headers={"WWW-Authenticate": "Basic"})(scope, receive, send)
        return await self.app(scope, receive, send)


class JsonBodyLimit:
    """The A1111 routes read their JSON body whole: one over MAX_JSON_BODY (by its Content-Length, or
    as it arrives) is a 413, not a server out of memory. (Photos for jobs stream to files.)"""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/sdapi/"):
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > MAX_JSON_BODY:
            return await JSONResponse({"detail": too_large(f"{int(length):,}")}, 413)(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > MAX_JSON_BODY:
                raise TooLarge(f"over {MAX_JSON_BODY:,}")
            return message
        return await self.app(scope, counted, send)


def create_app(settings: ServerSettings) -> FastAPI:
    users = parse_auth(settings.api_auth)
    data_dir = Path(settings.data_dir).expanduser().resolve()    # job outputs as the model registry names them
    hold_data_dir(data_dir)                  # before the model loads: another server's folder is one line
    store = JobStore(data_dir)
    catalog = Catalog(settings.model, settings.models_dir, settings.loras_dir, store.outputs, settings.model_configs)
    engine = Engine(catalog, settings.device, settings.preview_every, settings.medvram)
    engine.load(catalog.models()[0], field="--model")

    def job_done() -> None:
        catalog.refresh()
        engine.refresh_loras()

    def model_spec(request: dict) -> str:
        """The model a job trains on: as listed at submission; the same model where a restarted server lists
        it no longer (another --model), as long as it is there."""
        if not request.get("model"):
            return engine.entry.spec
        try:
            return catalog.find_model(request["model"], "model").spec
        except UserError:
            spec = request.get("model_spec")
            if spec and (spec == "toy" or Path(spec).exists()):
                return spec
            raise

    runner = JobRunner(store, engine.gate, model_spec, settings.transforms, job_done)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        runner.start()                      # queued jobs (and one a killed server left running) go on
        yield
        runner.shutdown()

    app = FastAPI(title="dreambooth", description="An AUTOMATIC1111-compatible API, and DreamBooth training jobs.",
                  lifespan=lifespan)
    app.state.engine, app.state.store, app.state.runner, app.state.catalog = engine, store, runner, catalog
    options = engine.options            # the live-preview ones steer the engine
    options.update({**HOUSEKEEPING_OPTIONS, **FIXED_OPTIONS,
                    **{k: default for k, (default, _) in GENERATION_OPTIONS.items()}})
    app.include_router(a1111.router(engine, options, settings.flags, data_dir / "outputs"))
    app.include_router(extras.router())
    app.include_router(jobs_api.router(store, runner, catalog, lambda: engine.entry))
    async def ping():         # A1111's liveness probe: on the event loop, never behind generations (a1111.py)
        return {}
    app.add_api_route("/internal/ping", ping, methods=["GET"], name="ping")
    add_api_fallback(app)              # last of the API's routes: a UI mounted at "/" comes after

    if users:
        app.add_middleware(BasicAuth, users=users)
    app.add_middleware(JsonBodyLimit)
    origins = [o.strip() for given in settings.cors_origins for o in given.split(",") if o.strip()]
    if origins or settings.cors_origin_regex:
        from fastapi.middleware.cors import CORSMiddleware       # A1111's arguments (its configure_cors_middleware)
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_origin_regex=settings.cors_origin_regex or None,
                           allow_methods=["*"], allow_headers=["*"], allow_credentials=True)

    @app.exception_handler(jobs_api.NotFound)
    async def not_found(request: Request, exc: jobs_api.NotFound):
        return JSONResponse({"detail": one_line(str(exc))}, status_code=404)

    @app.exception_handler(Stopping)
    async def stopping(request: Request, exc: Stopping):      # not the client's fault: retry later
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "30"})

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, exc: ClientGone):    # no one reads it (nginx's "client closed")
        return Response(status_code=499)

    @app.exception_handler(UserError)
    async def bad_input(request: Request, exc: UserError):
        return JSONResponse({"detail": one_line(_field_of(str(exc)))}, status_code=getattr(exc, "status", 400))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = shortened(".".join(str(p) for p in first.get("loc", ()) if p != "body")) or "body"
        kind = "unknown field" if first.get("type") == "extra_forbidden" else first.get("msg", "invalid")
        detail = f"{where}: {kind}"
        unknown = [shortened(".".join(str(p) for p in e["loc"] if p != "body")) for e in exc.errors()
                   if e.get("type") == "extra_forbidden"]
        if len(unknown) > 1 and first.get("type") == "extra_forbidden":       # every one at once, not one a try
            detail = f"{', '.join(unknown)}: unknown fields"
        elif unknown and first.get("type") != "extra_forbidden":
            detail += f"; and unknown field{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}"
        sent = request.headers.get("content-type", "").split(";")[0].strip().lower()
        what = shortened(sent) or "a body without a Content-Type"
        if first.get("type") == "json_invalid":          # its loc names a character, not a field
            detail = f"body: not valid JSON ({first.get('ctx', {}).get('error', 'invalid')} at character {where})"
        elif request.url.path.rstrip("/").endswith("/dreambooth/v1/jobs") and jobs_api.not_a_form(sent):
            detail = jobs_api.not_a_form(sent)
        elif where == "body" and first.get("type") in ("dict_type", "model_attributes_type"):
            read_as_json = sent in ("", "application/json") or sent.endswith("+json")     # (json_bodies.JsonRoute)
            detail = ("body: a JSON object of fields ({...}), not a list or a single value" if read_as_json
                      else f"body: send a JSON object (Content-Type: application/json), not {what}")
        errors = [{"loc": [shortened(p) if isinstance(p, str) else p for p in e.get("loc", ())],
                   "msg": shortened(str(e.get("msg")), 200), "type": e.get("type")} for e in exc.errors()[:5]]
        return JSONResponse({"detail": one_line(detail), "errors": errors}, status_code=422)

    @app.exception_handler(RecursionError)
    async def too_deep(request: Request, exc: RecursionError):     # JSON nested thousands deep
        return JSONResponse({"detail": "body: nested too deeply to read"}, status_code=400)

    @app.exception_handler(torch.OutOfMemoryError)
    async def out_of_memory(request: Request, exc: torch.OutOfMemoryError):
        torch.cuda.empty_cache()              # what the failed request held, back for the next
        return JSONResponse({"detail": "out of GPU memory for this request: a smaller width, height or batch_size, or "
                                       "the server started with --medvram"}, status_code=503)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        what = shortened(str(exc).splitlines()[0], 200) if str(exc).strip() else ""
        return JSONResponse({"detail": f"unexpected {type(exc).__name__}: {what}"}, status_code=500)

    return app
