"""A generation whose client has gone (it timed out, or was closed) stops: otherwise every other
client waits behind images that no one will receive."""
from __future__ import annotations

import asyncio
import threading
from typing import Callable, TypeVar

from fastapi import Request
from starlette.concurrency import run_in_threadpool

T = TypeVar("T")
CHECK_EVERY = 0.5            # seconds between two looks at the connection (each look costs next to nothing)


class ClientGone(Exception):
    """The client left before its request had its turn: nothing was made, and no one reads a reply."""


async def while_connected(request: Request, work: Callable[[threading.Event], T]) -> T:
    """``work(gone)`` in a worker thread; ``gone`` is set once the client has disconnected (the engine
    then ends the generation at its next step, or skips it if it has not started)."""
    gone = threading.Event()
    task = asyncio.ensure_future(run_in_threadpool(work, gone))
    while not task.done():
        await asyncio.wait({task}, timeout=CHECK_EVERY)
        if not task.done() and not gone.is_set() and await request.is_disconnected():
            gone.set()
    return task.result()
