"""The one place gRPC maps errors: every handler is wrapped by `guarded` when it is registered."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from .. import observation
from ..errors import TesseraError, status_for

__all__ = ["abort_status", "failure", "guarded"]

logger = logging.getLogger(__name__)
Req = TypeVar("Req")
Resp = TypeVar("Resp")


def abort_status(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status and message a client sees for an error; unknown errors stay generic."""
    if isinstance(error, TesseraError):
        code_name, _ = status_for(error)
        return grpc.StatusCode[code_name], error.message
    logger.error("unhandled error in gRPC handler", exc_info=error)
    return grpc.StatusCode.INTERNAL, "internal error"


def failure(error: BaseException, context: Any) -> tuple[grpc.StatusCode, str]:
    """What both servers do when a handler raises: the status and message for the client, and the
    request's observation ended with the error (its trace id then rides in the trailing metadata)."""
    code, message = abort_status(error)
    if observation.ACTIVE is not None and (trace := observation.fail(error)):
        context.set_trailing_metadata(tuple(trace.items()))
    return code, message


def guarded(handler: Callable[[Req, grpc.aio.ServicerContext], Awaitable[Resp]]
            ) -> Callable[[Req, grpc.aio.ServicerContext], Awaitable[Resp]]:
    @functools.wraps(handler)
    async def wrapper(request: Req, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await handler(request, context)
        except Exception as exc:
            code, message = failure(exc, context)
        await context.abort(code, message)

    return wrapper
