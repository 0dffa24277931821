"""The API's paths answer alike with the web UI mounted at "/" and without it: a wrong method is a
405, a trailing slash a 307 to the route, an unknown path a 404 (as in A1111). Mounted at "/", the UI
takes every path no route takes whole, so without this ``GET /sdapi/v1/txt2img`` was the UI's 404."""
from __future__ import annotations

from fastapi import FastAPI, HTTPException
from starlette.datastructures import URL
from starlette.responses import RedirectResponse
from starlette.routing import Match, Mount, Route

API_PREFIXES = ("/sdapi/", "/dreambooth/")


class _Fallback:
    """An ASGI app for the API's paths that no route took whole: what Starlette's router answers
    when nothing else is mounted."""

    def __init__(self, app: FastAPI):
        self.app = app

    def _routes(self) -> list:
        """The app's routes and included routers, but for the fallback itself and what is mounted."""
        return [r for r in self.app.router.routes
                if not isinstance(r, Mount) and not (isinstance(r, Route) and r.endpoint is self)]

    async def __call__(self, scope, receive, send):
        for route in self._routes():
            match, child = route.matches(scope)
            if match == Match.PARTIAL:           # the path, another method: the route's own 405 (with Allow)
                return await route.handle({**scope, **child}, receive, send)
        path = scope["path"]
        other = {**scope, "path": path[:-1] if path.endswith("/") else path + "/"}
        if any(route.matches(other)[0] != Match.NONE for route in self._routes()):
            return await RedirectResponse(str(URL(scope=other)))(scope, receive, send)
        raise HTTPException(404)


def add_api_fallback(app: FastAPI) -> None:
    """After the API's routes, before anything mounted later (the web UI)."""
    fallback = _Fallback(app)
    for prefix in API_PREFIXES:
        app.router.add_route(prefix + "{rest:path}", fallback, include_in_schema=False)
