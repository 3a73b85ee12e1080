"""The one place HTTP maps errors: TesseraError -> status and {"error": msg}; anything else -> 500.

`ErrorMiddleware` wraps the whole app, so every route shares it; Starlette's own HTTPExceptions
(unknown route, wrong method) get the same body shape through `HTTP_EXCEPTION_HANDLERS`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import observation
from ..errors import TesseraError, Unauthenticated, status_for

__all__ = ["HTTP_EXCEPTION_HANDLERS", "ErrorMiddleware", "error_response"]

logger = logging.getLogger(__name__)


def error_response(error: BaseException) -> Response:
    """The response a client sees for an error; unknown errors stay generic and are logged."""
    if isinstance(error, TesseraError):
        _, status = status_for(error)
        # RFC 6750: a 401 names the scheme the client should use.
        headers = {"WWW-Authenticate": 'Bearer realm="tessera"'} if isinstance(error, Unauthenticated) else None
        return _error(int(status), error.message, headers)
    logger.error("unhandled error in HTTP handler", exc_info=error)
    return _error(500, "internal error")


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps({"error": message}), status_code=status, headers=headers,
                    media_type="application/json")


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = exc.detail
    if exc.status_code == 404:
        message = f"no route for {request.method} {request.url.path}"
    return _error(exc.status_code, message, exc.headers)


HTTP_EXCEPTION_HANDLERS: dict[Any, Any] = {HTTPException: _http_exception}


class ErrorMiddleware:
    """Pure ASGI middleware: turns an exception raised before the response started into a response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            trace_headers = observation.fail(exc) if observation.ACTIVE is not None else None
            if started:
                raise
            response = error_response(exc)
            if trace_headers:
                response.headers.update(trace_headers)
            await response(scope, receive, send)
