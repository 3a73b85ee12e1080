"""The two wire clients the generator drives, both sending pre-encoded payloads.

gRPC: unary calls over our own HTTP/2 framing (grpc_h2.py: a third of grpcio's client CPU per call),
bytes in, status out (no protobuf work per request).
HTTP: a minimal keep-alive HTTP/1.1 client on asyncio protocols, one request per connection at a
time (as perf_analyzer and tritonclient do); only the status line and body length are parsed.
Both speak TLS when the target asks for it; the TLS context is built once per client.
"""

from __future__ import annotations

import asyncio
import http.client
import itertools
import ssl
from collections.abc import Sequence
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

from .grpc_h2 import Http2Connection, grpc_message, open_connection
from .spec import Target

__all__ = ["GrpcClient", "HttpClient", "HttpStatusError", "InferClient", "http_get", "make_client"]

INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"


def http_get(url: str, target: Target, timeout_s: float = 10.0) -> bytes:
    """GET `url` (model metadata, /metrics) with the target's TLS settings; the target's headers (its
    token) go only to the target's own host, and never in clear text when the target itself is
    reached over TLS. Raises OSError (ssl.SSLError included) or HttpStatusError."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port
    own = host == target.host and (parts.scheme == "https" or target.tls is None)
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        tls = target.tls if own and target.tls is not None else None
        context = tls.context() if tls is not None else ssl.create_default_context()
        name = (tls.server_name if tls is not None else None) or host
        connection = _HttpsTo(name, host, port, timeout=timeout_s, context=context)
    else:
        connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    server_name = target.tls.server_name if own and target.tls is not None else None
    headers = {"Host": f"{server_name}:{port}" if server_name and port else parts.netloc}
    headers |= dict(target.headers) if own else {}
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        body = response.read()
    except http.client.HTTPException as exc:
        raise ConnectionError(f"GET {url}: {exc}") from exc
    finally:
        connection.close()
    if response.status != 200:
        raise HttpStatusError(response.status)
    return body


class _HttpsTo(http.client.HTTPSConnection):
    """HTTPS to `host` whose certificate is checked against (and SNI says) `server_name`."""

    def __init__(self, server_name: str, host: str, port: int | None, **kwargs: Any) -> None:
        super().__init__(host, port, **kwargs)
        self._server_name = server_name

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self._server_name)  # type: ignore[attr-defined]


class HttpStatusError(OSError):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class InferClient(Protocol):
    async def connect(self, connections: int) -> None:
        """Open connections before load starts, so setting them up is never measured."""

    async def infer(self, index: int) -> None:
        """Send payload `index % len(payloads)`; raise on any failure or after the timeout."""

    async def close(self) -> None: ...


def make_client(
    target: Target, payloads: Sequence[bytes], *, channels: int = 1, max_connections: int = 1024
) -> InferClient:
    if target.protocol == "grpc":
        return GrpcClient(target, payloads, channels=channels)
    return HttpClient(target, payloads, max_connections=max_connections)


class GrpcClient:
    """Unary ModelInfer over `channels` HTTP/2 connections, round-robin; a failed one is reopened."""

    def __init__(self, target: Target, payloads: Sequence[bytes], *, channels: int = 1) -> None:
        self._target = target
        self._ssl = target.tls.context(alpn=("h2",)) if target.tls is not None else None
        self._messages = [grpc_message(p) for p in payloads]  # length-prefixed once, not per request
        self._timeout = target.request_timeout_s
        self._connections: list[Http2Connection | None] = [None] * max(1, channels)
        self._reopening = [asyncio.Lock() for _ in self._connections]
        self._next = itertools.cycle(range(len(self._connections)))

    async def connect(self, connections: int) -> None:
        opened = await asyncio.gather(*(self._open() for _ in self._connections))
        self._connections = list(opened)

    async def infer(self, index: int) -> None:
        slot = next(self._next)
        connection = self._connections[slot]
        if connection is None or not connection.usable:
            connection = await self._reopen(slot)
        await connection.call(self._messages[index % len(self._messages)])

    async def _reopen(self, slot: int) -> Http2Connection:
        async with self._reopening[slot]:  # one reconnect per slot, however many calls wait on it
            connection = self._connections[slot]
            if connection is None or not connection.usable:
                if connection is not None:
                    connection.close()
                connection = self._connections[slot] = await self._open()
            return connection

    async def _open(self) -> Http2Connection:
        target = self._target
        return await open_connection(
            target.host,
            target.port,
            INFER_PATH,
            self._timeout,
            ssl_context=self._ssl,
            server_name=target.tls.server_name if target.tls is not None else None,
            authority=target.authority,
            metadata=target.headers,
        )

    async def close(self) -> None:
        for connection in self._connections:
            if connection is not None:
                connection.close()


class HttpClient:
    """A pool of keep-alive connections; a request takes an idle one or opens a new one."""

    def __init__(self, target: Target, payloads: Sequence[bytes], *, max_connections: int = 1024) -> None:
        self._host, self._port = target.host, target.port
        self._ssl: ssl.SSLContext | None = None
        self._server_name: str | None = None
        if target.tls is not None:
            self._ssl = target.tls.context(alpn=("http/1.1",))
            self._server_name = target.tls.server_name or target.host
        # Each request as the writes that send it: the whole request, or its head and its body.
        # The target's headers (its token) are added here, once, so payloads never carry credentials.
        requests = [_with_headers(p, target.headers) for p in payloads]
        self._payloads = [_split(p) if target.http_split_writes else (p,) for p in requests]
        self._timeout = target.request_timeout_s
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max_connections)

    async def connect(self, connections: int) -> None:
        self._idle += await asyncio.gather(*(self._connect() for _ in range(connections)))

    async def infer(self, index: int) -> None:
        async with self._slots:
            connection = self._take_idle() or await self._connect()
            status = await connection.send(self._payloads[index % len(self._payloads)], self._timeout)
            if connection.reusable:
                self._idle.append(connection)
            if status != 200:
                raise HttpStatusError(status)

    def _take_idle(self) -> _Connection | None:
        """The most recently used open connection; ones the server closed meanwhile are dropped."""
        while self._idle:
            connection = self._idle.pop()
            if connection.reusable:
                return connection
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, connection = await asyncio.wait_for(
            loop.create_connection(
                _Connection, self._host, self._port, ssl=self._ssl, server_hostname=self._server_name
            ),
            self._timeout,
        )
        return connection

    async def close(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection, one request at a time; parses Content-Length or chunked bodies."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[int] | None = None
        self.reusable = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError(f"connection lost: {exc}"))

    def close(self) -> None:
        self.reusable = False
        if self._transport is not None:
            self._transport.close()

    async def send(self, writes: tuple[bytes, ...], timeout_s: float) -> int:
        """Write one request, return the response status. Raises TimeoutError, ConnectionError."""
        if self._transport is None or self._transport.is_closing():
            raise ConnectionError("connection closed")
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        self._buffer.clear()
        for data in writes:
            self._transport.write(data)
        timer = loop.call_later(timeout_s, self._expire, waiter)
        try:
            status: int = await waiter
            return status
        finally:
            timer.cancel()
            self._waiter = None

    def _expire(self, waiter: asyncio.Future[int]) -> None:
        if not waiter.done():
            waiter.set_exception(TimeoutError("request timed out"))
            self.close()  # a late answer must not be read as the next request's

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._waiter is None or self._waiter.done():
            return
        parsed = _parse_response(self._buffer)
        if parsed is not None:
            status, keep_alive = parsed
            self.reusable = self.reusable and keep_alive
            if not keep_alive:
                self.close()
            self._waiter.set_result(status)


def _with_headers(request: bytes, headers: Sequence[tuple[str, str]]) -> bytes:
    """`request` with `headers` added after its request line."""
    if not headers:
        return request
    line_end = request.index(b"\r\n") + 2
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers).encode("latin-1")
    return request[:line_end] + extra + request[line_end:]


def _split(request: bytes) -> tuple[bytes, bytes]:
    end = request.index(b"\r\n\r\n") + 4
    return request[:end], request[end:]


def _parse_response(buffer: bytearray) -> tuple[int, bool] | None:
    """(status, keep-alive) once `buffer` holds a whole response, else None."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buffer[:end]).decode("latin-1").split("\r\n")
    parts = head[0].split(" ", 2)
    status = int(parts[1])
    headers = {k.strip().lower(): v.strip().lower() for k, _, v in (line.partition(":") for line in head[1:])}
    keep_alive = headers.get("connection", "") != "close" and parts[0] != "HTTP/1.0"
    body_start = end + 4
    if "content-length" in headers:
        done = len(buffer) - body_start >= int(headers["content-length"])
    elif headers.get("transfer-encoding") == "chunked":
        done = _chunked_complete(buffer, body_start)
    else:
        done = status in (204, 304) or 100 <= status < 200
    return (status, keep_alive) if done else None


def _chunked_complete(buffer: bytearray, pos: int) -> bool:
    while True:
        line_end = buffer.find(b"\r\n", pos)
        if line_end < 0:
            return False
        size = int(bytes(buffer[pos:line_end]).split(b";")[0], 16)
        if size == 0:
            return buffer.find(b"\r\n", line_end + 2) >= 0  # trailers end with an empty line
        pos = line_end + 2 + size + 2
        if pos > len(buffer):
            return False
