"""JSON from clients, read in one place: the A1111 routes' bodies (``JsonRoute``), ``/sdapi/v1/options``
and a job's ``overrides``. Whatever a client sends, the reply is a one-line 4xx naming the field.

JSON may hold characters that are no text: ``"\\udcff"`` is valid JSON, but half of a UTF-16 pair,
which the tokenizer refuses, which no UTF-8 reply can echo, and which a stored job would carry into
every later job list. Such strings are refused as they arrive. Echoed values are shortened: an error
that repeats a client's megabyte of base64 helps no one."""
from __future__ import annotations

import json
import re
from collections import deque
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from ..errors import UserError

SHOWN = 80                  # characters of a client's value an error repeats
_SURROGATE = re.compile("[\ud800-\udfff]")
_LONG_RUN = re.compile(r"\S{121,}")     # base64, say, that a library message repeated whole


class BadBody(UserError):
    """A body (or a JSON field) that cannot be read; ``status`` as FastAPI answers one (422)."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


def shortened(text: str, limit: int = SHOWN) -> str:
    """``text`` as a reply can carry it: half surrogate pairs as ``\\udcff``, at most ``limit`` characters."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[:limit - 1] + "…"


def shown(value: Any, limit: int = SHOWN) -> str:
    """A client's value as it wrote it (JSON), shortened."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return shortened(text, limit)


def printable(value: Any) -> Any:
    """``value`` (dicts, lists, strings) with every string safe to encode as UTF-8: what was stored
    before ``check_characters`` refused such strings still lists."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8") if _SURROGATE.search(value) else value
    if isinstance(value, dict):
        return {printable(k): printable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [printable(v) for v in value]
    return value


def one_line(detail: str) -> str:
    """An error's detail as sent: long unbroken runs a message repeated (a base64 image) shortened."""
    detail = shortened(detail.splitlines()[0] if detail else "", 2000)
    return _LONG_RUN.sub(lambda m: shortened(m.group()), detail)


def check_characters(value: Any, where: str = "") -> None:
    """A BadBody naming the first string (or key) in ``value`` that holds half a surrogate pair
    (JSON's ``\\ud83d`` alone); ``where``: the field ``value`` is ("" for a whole body)."""
    todo = deque([(where, value)])          # breadth first, no recursion: the shallowest is named
    while todo:
        path, item = todo.popleft()
        if isinstance(item, str):
            found = _SURROGATE.search(item)
            if found:
                raise BadBody(f"{path or 'body'}: {shortened(found.group())} (at character {found.start()}) is not "
                              "a valid character, but half of a UTF-16 surrogate pair; send whole characters")
        elif isinstance(item, dict):
            for key, inner in item.items():
                if isinstance(key, str) and _SURROGATE.search(key):
                    raise BadBody(f"{path or 'body'}: the key {shown(key)} holds a character that is not valid "
                                  "(half of a UTF-16 surrogate pair); send whole characters")
                todo.append((f"{path}.{key}" if path else str(key), inner))
        elif isinstance(item, list):
            todo.extend((f"{path or 'body'}[{k}]", inner) for k, inner in enumerate(item))


def read_json(data: bytes | str, where: str = "") -> Any:
    """Parse a client's JSON, every failure a BadBody naming ``where`` (a field; "" for the body)."""
    label = where or "body"
    if isinstance(data, bytes):
        try:
            data = data.decode(json.detect_encoding(data))
        except UnicodeDecodeError as exc:
            raise BadBody(f"{label}: not valid UTF-8 (byte 0x{exc.object[exc.start]:02x} at byte {exc.start}); "
                          "send JSON encoded as UTF-8") from None
    try:
        value = json.loads(data)
    except json.JSONDecodeError as exc:
        raise BadBody(f"{label}: not valid JSON ({exc.msg} at character {exc.pos})") from None
    except RecursionError:
        raise BadBody(f"{label}: nested too deeply to read (lists and objects at most a few hundred deep)", 400) from None
    check_characters(value, where)
    return value


class _ParsedRequest(Request):
    """A request whose JSON body ``read_json`` has read: FastAPI's ``request.json()`` returns it."""
    parsed: Any = None

    async def json(self) -> Any:
        return self.parsed


def _is_json(content_type: str | None) -> bool:
    """JSON, or no Content-Type at all: A1111 (its FastAPI) reads such a body as JSON, and
    ``requests.post(url, data=json.dumps(...))`` sends none."""
    if not content_type:
        return True
    kind = content_type.split(";")[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


class JsonRoute(APIRoute):
    """A route whose JSON body is read by ``read_json`` before FastAPI sees it (FastAPI answers a body
    of bad UTF-8 or nested thousands deep "There was an error parsing the body"). Its router must take
    bodies without a Content-Type (``strict_content_type=False``)."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def checked(request: Request) -> Response:
            ours = _ParsedRequest(request.scope, request.receive)
            if request.method in ("POST", "PUT", "PATCH") and _is_json(request.headers.get("content-type")):
                body = await ours.body()
                if body:
                    ours.parsed = read_json(body)
            return await handler(ours)
        return checked
