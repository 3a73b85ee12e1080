"""CallContext: what a handler sees of its call on our server, the part of grpc.aio.ServicerContext we serve.

Handlers written for grpc.aio (`(request, context)`) run unchanged: metadata, peer, auth context,
deadline, abort, trailing metadata, and `write` for server-streaming handlers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn

import grpc

__all__ = ["AbortError", "CallContext", "Metadata"]

Metadata = tuple[tuple[str, str | bytes], ...]


class AbortError(Exception):
    """Raised by `CallContext.abort`: the call ends with this status, as grpc.aio's abort does."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class CallContext:
    """One call's context. Runs on the event loop."""

    __slots__ = ("_auth", "_cancelled", "_code", "_deadline", "_details", "_done", "_metadata", "_peer",
                 "_trailing", "_writer")

    def __init__(self, metadata: Metadata, peer: str, auth: dict[str, list[bytes]], deadline: float | None,
                 writer: Callable[[Any], Awaitable[None]] | None = None) -> None:
        self._metadata = metadata
        self._peer = peer
        self._auth = auth
        self._deadline = deadline  # loop.time() seconds
        self._writer = writer
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self._trailing: tuple[tuple[str, str | bytes], ...] = ()
        self._done = False
        self._cancelled = False

    def attach_writer(self, writer: Callable[[Any], Awaitable[None]]) -> None:
        """Where `write` sends (the server sets it once, for streaming responses)."""
        self._writer = writer

    def invocation_metadata(self) -> Metadata:
        """(key, value) pairs as the client sent them: str values, bytes for '-bin' keys."""
        return self._metadata

    def peer(self) -> str:
        """'ipv4:127.0.0.1:5555', 'ipv6:[::1]:5555' or 'unix:...'."""
        return self._peer

    def auth_context(self) -> dict[str, list[bytes]]:
        """Like grpc's: x509_common_name and transport_security_type under TLS, empty in plaintext."""
        return self._auth

    def peer_identities(self) -> list[bytes] | None:
        return self._auth.get("x509_common_name")

    def time_remaining(self) -> float | None:
        """Seconds until the call's deadline, None without one."""
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - asyncio.get_running_loop().time())

    async def abort(self, code: grpc.StatusCode, details: str = "",
                    trailing_metadata: Sequence[tuple[str, str | bytes]] = ()) -> NoReturn:
        if trailing_metadata:
            self._trailing = tuple(trailing_metadata)
        raise AbortError(code, details)

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str:
        return self._details

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, str | bytes]]) -> None:
        self._trailing = tuple(metadata)

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._trailing

    async def send_initial_metadata(self, metadata: Sequence[tuple[str, str | bytes]]) -> None:
        """Accepted for compatibility; response headers are prebuilt and carry no custom metadata."""

    async def write(self, message: Any) -> None:
        """Send one response message (server-streaming handlers that write instead of yielding)."""
        if self._writer is None:
            raise RuntimeError("write() is for streaming responses")
        await self._writer(message)

    def cancelled(self) -> bool:
        """Whether the client reset the call, the connection went away, or the deadline passed."""
        return self._cancelled

    def done(self) -> bool:
        return self._done

    def mark_done(self) -> None:
        self._done = True

    def mark_cancelled(self) -> None:
        self._cancelled = self._done = True
