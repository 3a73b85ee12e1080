"""The static OpenAPI document describes exactly the routes the HTTP app serves."""

from __future__ import annotations

import json
from pathlib import Path

from starlette.routing import Route

import server.http_api.routes as routes_module
from server.app import App
from server.http_api.routes import HttpRoutes

from ..conftest import RunningServer


def _served(app: App) -> set[tuple[str, str]]:
    routes = HttpRoutes(app.dataplane, app.metrics, 1).routes()
    return {(r.path, m.lower()) for r in routes if isinstance(r, Route) for m in (r.methods or ()) if m != "HEAD"}


def test_every_served_route_is_documented_and_nothing_else(running_server: RunningServer) -> None:
    document = json.loads(Path(routes_module.__file__).with_name("openapi.json").read_text())
    documented = {(path, method) for path, item in document["paths"].items() for method in item
                  if method in ("get", "post", "put", "delete")}
    assert documented == _served(running_server.app)
