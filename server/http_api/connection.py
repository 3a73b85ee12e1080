"""Limits on one HTTP connection that uvicorn lacks: a deadline for the request head, a deadline
for the body, and a cap on the head's size.

`guarded_protocol(...)` returns a subclass of uvicorn's httptools protocol, passed as
`uvicorn.Config(http=...)`. A connection that has not sent a complete head within the header
timeout (from when it opened, or since its previous response) is closed; so is one whose body is
still arriving after the body timeout; a head over the size cap is answered 431 and closed.
Everything here runs on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["ConnectionLimits", "guarded_protocol"]

logger = logging.getLogger(__name__)

_TOO_LARGE_BODY = b'{"error": "request header fields are too large"}'
_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
              b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(_TOO_LARGE_BODY), _TOO_LARGE_BODY))


class ConnectionLimits:
    """The per-connection limits, in seconds and bytes; 0 switches one off."""

    __slots__ = ("body_timeout_s", "header_timeout_s", "max_header_bytes")

    def __init__(self, header_timeout_s: float, body_timeout_s: float, max_header_bytes: int) -> None:
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self.max_header_bytes = max_header_bytes


class _GuardedProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with a deadline per phase (head, body) and a cap on the head's bytes."""

    limits: ConnectionLimits = ConnectionLimits(0, 0, 0)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._in_head = True
        self._head_bytes = 0

    def _arm(self, seconds: float, phase: str) -> None:
        self._disarm()
        if seconds > 0:
            self._deadline = self.loop.call_later(seconds, self._expire, phase, seconds)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self, phase: str, seconds: float) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            logger.debug("closing HTTP connection from %s: no complete request %s within %g s",
                         self.client, phase, seconds)
            self.transport.close()

    def _start_head(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._arm(self.limits.header_timeout_s, "head")

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        cap = self.limits.max_header_bytes
        if self._in_head and cap and self._head_bytes > cap and not self.transport.is_closing():
            logger.debug("closing HTTP connection from %s: request head over %d bytes", self.client, cap)
            self.transport.write(_TOO_LARGE)
            self.transport.close()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._arm(self.limits.body_timeout_s, "body")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._start_head()


def guarded_protocol(limits: ConnectionLimits, base: type[HttpToolsProtocol] = HttpToolsProtocol
                     ) -> type[HttpToolsProtocol]:
    """The protocol class for `uvicorn.Config(http=...)` that enforces `limits` on every connection,
    on top of `base` (uvicorn's own, or the TLS one that reports client certificates)."""
    bases = (_GuardedProtocol,) if base is HttpToolsProtocol else (_GuardedProtocol, base)
    return type("GuardedHttpToolsProtocol", bases, {"limits": limits})
