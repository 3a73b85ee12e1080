"""The HTTP/REST transport: thin Starlette routes over the DataPlane, served by uvicorn."""

from __future__ import annotations

from .routes import ROUTING_KEY_HEADER, build_http_app

__all__ = ["ROUTING_KEY_HEADER", "build_http_app"]
