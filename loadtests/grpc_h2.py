"""Unary gRPC calls over HTTP/2 on an asyncio protocol: the load generator's gRPC client.

Why not grpcio: its Python layer (call objects, the completion-queue poller thread) cost 310-390 us
of client CPU per call on our 2-core machine, against 140-210 us for this client; at concurrency 1
that gap is latency perf_analyzer (C++) does not have, and the harness read 0.83x its throughput.
The h2 state machine was tried too and cost more (470 us). So frames are laid out here (with the
frame constants, builders and splitter of server/grpc_api/h2/frames.py, which Tessera's own gRPC
server uses too), header blocks are encoded and decoded by hpack, and each request's bytes are one write.

What is covered: the client preface and SETTINGS, both levels of flow control (DATA is split to
the peer's frame size and windows), the peer's stream limit, PING, WINDOW_UPDATE, RST_STREAM,
GOAWAY, CONTINUATION, padding, gRPC status and message from trailers (or a trailers-only answer),
and deadlines (grpc-timeout sent; RST_STREAM CANCEL on expiry), TLS (ALPN h2, a server name to
verify and send as SNI other than the host dialled) and call metadata (a bearer token, any header).
Not covered: compression, streaming RPCs - the harness sends uncompressed unary calls.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Sequence
from typing import cast
from urllib.parse import unquote

import grpc
import hpack

from server.grpc_api.h2 import frames as h2

__all__ = ["GrpcStatusError", "Http2Connection", "grpc_message", "open_connection"]

_STATUS_BY_CODE = {code.value[0]: code for code in grpc.StatusCode}
# How gRPC reads an HTTP/2 RST_STREAM error code (its doc/PROTOCOL-HTTP2.md).
_RESET_STATUS = {0x8: grpc.StatusCode.CANCELLED,
                 0xB: grpc.StatusCode.RESOURCE_EXHAUSTED, 0xC: grpc.StatusCode.PERMISSION_DENIED}


class GrpcStatusError(Exception):
    """The call ended with a non-OK gRPC status (from the server, or read from a stream reset)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code


class _RefusedStream(Exception):
    """RST_STREAM REFUSED_STREAM: the server did no work on it, so it is sent again."""


def grpc_message(body: bytes) -> bytes:
    """`body` as a gRPC length-prefixed message (uncompressed)."""
    return b"\x00" + len(body).to_bytes(4, "big") + body


class _Stream:
    __slots__ = ("done", "status", "unsent", "window")

    def __init__(self, done: asyncio.Future[None], window: int, unsent: memoryview) -> None:
        self.done = done
        self.window = window
        self.unsent = unsent
        self.status: bytes | None = None  # the :status of the response headers


class Http2Connection(asyncio.Protocol):
    """One HTTP/2 connection carrying unary calls to one method; many calls may be in flight."""

    def __init__(
        self,
        authority: str,
        path: str,
        timeout_s: float,
        *,
        scheme: str = "http",
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        never_indexed = [
            hpack.NeverIndexedHeaderTuple(name, value) for name, value in (
                (":method", "POST"), (":scheme", scheme), (":path", path), (":authority", authority),
                ("content-type", "application/grpc"), ("te", "trailers"),
                ("grpc-timeout", f"{max(1, int(timeout_s * 1000))}m"),
                *((name.lower(), value) for name, value in metadata),
            )
        ]
        # Literals never indexed leave both HPACK tables alone, so this block is valid for every request.
        self._request_headers = hpack.Encoder().encode(never_indexed, huffman=False)
        self._timeout_s = timeout_s
        self._decoder = hpack.Decoder()
        self._decoder.max_allowed_table_size = 1 << 16
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._streams: dict[int, _Stream] = {}
        self._blocked: deque[int] = deque()  # streams with DATA waiting for window
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._next_stream_id = 1
        self._send_window = h2.DEFAULT_WINDOW
        self._peer_initial_window = h2.DEFAULT_WINDOW
        self._peer_max_frame = 16_384
        self._peer_max_streams = 1 << 31
        self._received_unacked = 0
        self._header_block = bytearray()  # CONTINUATION frames follow their HEADERS with nothing between
        self._header_flags = 0
        self._continuing: int | None = None  # stream id whose header block is incomplete
        self._last_allowed_stream = 1 << 31  # lowered by GOAWAY
        self.error: Exception | None = None  # set once the connection can take no new calls
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def usable(self) -> bool:
        return self.error is None and self._next_stream_id <= min(self._last_allowed_stream, h2.MAX_WINDOW)

    # -- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports don't subclass it
        settings = (h2.SETTING.pack(h2.SETTINGS_ENABLE_PUSH, 0)
                    + h2.SETTING.pack(h2.SETTINGS_INITIAL_WINDOW_SIZE, h2.MAX_WINDOW))
        # Large receive windows: answers are never held back by our acknowledgements.
        self._transport.write(
            h2.PREFACE + h2.frame_header(len(settings), h2.SETTINGS, 0, 0) + settings
            + h2.frame_header(4, h2.WINDOW_UPDATE, 0, 0) + h2.UINT32.pack(h2.MAX_WINDOW - h2.DEFAULT_WINDOW)
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail_all(ConnectionError(f"connection lost: {exc}" if exc else "connection closed by the server"))

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        try:
            frames, used, _ = h2.split_frames(buffer, h2.MAX_FRAME_LIMIT)
            del buffer[:used]
            for kind, flags, stream_id, payload in frames:
                self._on_frame(kind, flags, stream_id, payload)
        except Exception as exc:  # a frame we cannot read: the connection is unusable
            self._fail_all(ConnectionError(f"HTTP/2 protocol error: {exc}"))
            self.close()

    # -- calls ---------------------------------------------------------------------------------------

    async def call(self, message: bytes) -> None:
        """Send one length-prefixed message; return when the call ends OK, else raise.

        Raises GrpcStatusError, TimeoutError (deadline passed; the stream is cancelled), or
        ConnectionError (the connection failed or is going away; open another).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        while True:
            await self._stream_slot(deadline)
            stream_id, stream = self._start_stream(message)
            timer = loop.call_at(deadline, self._expire, stream_id)
            try:
                await stream.done
                return
            except _RefusedStream:
                # The server did not process it (RFC 9113 8.7), as grpcio's transparent retry assumes:
                # C-core can refuse a stream it still counts as open after sending its trailers.
                continue
            except asyncio.CancelledError:  # the caller gave up: free the stream on both sides
                self._reset(stream_id, None)
                raise
            finally:
                timer.cancel()

    async def _stream_slot(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        while len(self._streams) >= self._peer_max_streams and self.error is None:
            slot: asyncio.Future[None] = loop.create_future()
            self._slot_waiters.append(slot)
            try:
                await asyncio.wait_for(slot, deadline - loop.time())
            except TimeoutError:
                raise TimeoutError(f"no stream free within {self._timeout_s:g} s") from None
        if not self.usable:
            raise self.error or ConnectionError("connection is going away")

    def _start_stream(self, message: bytes) -> tuple[int, _Stream]:
        assert self._transport is not None
        stream_id = self._next_stream_id
        self._next_stream_id += 2
        stream = _Stream(asyncio.get_running_loop().create_future(), self._peer_initial_window, memoryview(message))
        self._streams[stream_id] = stream
        headers = (h2.frame_header(len(self._request_headers), h2.HEADERS, h2.END_HEADERS, stream_id)
                   + self._request_headers)
        self._send_data(stream_id, stream, headers)
        return stream_id, stream

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _send_data(self, stream_id: int, stream: _Stream, headers: bytes = b"") -> None:
        """As much of the stream's message as the windows allow; the rest waits for WINDOW_UPDATE.

        `headers` (a new stream's HEADERS frame) go out in the same write as the first DATA frame:
        for the usual small request, the whole call is one write.
        """
        assert self._transport is not None
        while stream.unsent:
            size = min(len(stream.unsent), self._peer_max_frame, self._send_window, stream.window)
            if size <= 0:
                if headers:
                    self._transport.write(headers)
                if stream_id not in self._blocked:
                    self._blocked.append(stream_id)
                return
            chunk, stream.unsent = stream.unsent[:size], stream.unsent[size:]
            self._send_window -= size
            stream.window -= size
            flags = 0 if stream.unsent else h2.END_STREAM
            self._transport.write(headers + h2.frame_header(size, h2.DATA, flags, stream_id) + chunk)
            headers = b""

    def _expire(self, stream_id: int) -> None:
        self._reset(stream_id, TimeoutError(f"no answer within {self._timeout_s:g} s"))

    def _reset(self, stream_id: int, error: Exception | None) -> None:
        """Cancel a stream still open: RST_STREAM to the server, `error` to the caller."""
        if stream_id in self._streams and self._transport is not None and not self._transport.is_closing():
            self._transport.write(h2.frame_header(4, h2.RST_STREAM, 0, stream_id) + h2.UINT32.pack(h2.CANCEL))
        self._finish(stream_id, error)

    def _finish(self, stream_id: int, error: Exception | None) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        if not stream.done.done():
            if error is None:
                stream.done.set_result(None)
            else:
                stream.done.set_exception(error)
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break

    def _fail_all(self, error: Exception, above: int = 0) -> None:
        if self.error is None:
            self.error = error
        if not self.ready.done():
            self.ready.set_exception(error)
            self.ready.exception()  # retrieved: nobody may be awaiting it any more
        for stream_id in [s for s in self._streams if s > above]:
            self._finish(stream_id, error)
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the woken call sees `error` and raises it

    # -- frames --------------------------------------------------------------------------------------

    def _on_frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if (self._continuing is not None or kind == h2.CONTINUATION) and (kind, stream_id) != (
                h2.CONTINUATION, self._continuing):
            raise ValueError("a header block was interrupted")
        if kind == h2.DATA:
            self._on_data(flags, stream_id, payload)
        elif kind in (h2.HEADERS, h2.CONTINUATION):
            self._on_headers(kind, flags, stream_id, payload)
        elif kind == h2.RST_STREAM:
            code = h2.UINT32.unpack(payload[:4])[0]
            if code == h2.REFUSED_STREAM:
                self._finish(stream_id, _RefusedStream())
            else:
                status = _RESET_STATUS.get(code, grpc.StatusCode.INTERNAL)
                self._finish(stream_id, GrpcStatusError(status, f"stream reset by the server (HTTP/2 error {code})"))
        elif kind == h2.SETTINGS:
            if not flags & h2.ACK:
                self._on_settings(payload)
        elif kind == h2.PING:
            if not flags & h2.ACK and self._transport is not None:
                self._transport.write(h2.frame_header(8, h2.PING, h2.ACK, 0) + payload)
        elif kind == h2.GOAWAY:
            last_stream = h2.UINT32.unpack(payload[:4])[0] & h2.MAX_WINDOW
            code = h2.UINT32.unpack(payload[4:8])[0]
            detail = payload[8:].decode("utf-8", "replace")
            self._last_allowed_stream = last_stream
            self._fail_all(ConnectionError(f"server sent GOAWAY (HTTP/2 error {code}) {detail}".strip()), last_stream)
        elif kind == h2.WINDOW_UPDATE:
            self._on_window_update(stream_id, h2.UINT32.unpack(payload[:4])[0] & h2.MAX_WINDOW)
        # PRIORITY, PUSH_PROMISE (disabled in our SETTINGS) and unknown kinds carry nothing for us.

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        # Padding counts against flow control too, so the whole payload length is acknowledged.
        self._received_unacked += len(payload)
        if self._received_unacked >= h2.MAX_WINDOW // 2 and self._transport is not None:
            self._transport.write(h2.frame_header(4, h2.WINDOW_UPDATE, 0, 0) + h2.UINT32.pack(self._received_unacked))
            self._received_unacked = 0
        if flags & h2.END_STREAM:
            self._finish(stream_id, GrpcStatusError(grpc.StatusCode.INTERNAL, "stream ended without grpc-status"))

    def _on_headers(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if kind == h2.HEADERS:
            start, end = 0, len(payload)
            if flags & h2.PADDED:
                start, end = 1, end - payload[0]
            if flags & h2.PRIORITY_FLAG:
                start += 5
            self._header_block[:] = payload[start:end]
            self._header_flags = flags  # END_STREAM rides on HEADERS, never on CONTINUATION
        else:
            self._header_block += payload
        if not flags & h2.END_HEADERS:
            self._continuing = stream_id
            return
        self._continuing = None
        # Every block is decoded, even one for a stream we gave up on, to keep the HPACK table in step.
        fields = dict(cast(list[tuple[bytes, bytes]], self._decoder.decode(bytes(self._header_block), raw=True)))
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        stream.status = fields.get(b":status", stream.status)
        if stream.status not in (None, b"200"):
            self._finish(stream_id, GrpcStatusError(grpc.StatusCode.UNKNOWN, f"HTTP status {stream.status!r}"))
        elif b"grpc-status" in fields:  # trailers, or a trailers-only answer
            code = _STATUS_BY_CODE.get(int(fields[b"grpc-status"]), grpc.StatusCode.UNKNOWN)
            if code is grpc.StatusCode.OK:
                self._finish(stream_id, None)
            else:
                message = unquote(fields.get(b"grpc-message", b"").decode("ascii", "replace"))
                self._finish(stream_id, GrpcStatusError(code, message))
        elif self._header_flags & h2.END_STREAM:
            self._finish(stream_id, GrpcStatusError(grpc.StatusCode.INTERNAL, "stream ended without grpc-status"))

    def _on_settings(self, payload: bytes) -> None:
        for offset in range(0, len(payload) - len(payload) % 6, 6):
            key, value = h2.SETTING.unpack_from(payload, offset)
            if key == h2.SETTINGS_MAX_CONCURRENT_STREAMS:
                self._peer_max_streams = value
            elif key == h2.SETTINGS_INITIAL_WINDOW_SIZE:
                delta = value - self._peer_initial_window
                self._peer_initial_window = value
                for stream in self._streams.values():
                    stream.window += delta
            elif key == h2.SETTINGS_MAX_FRAME_SIZE:
                self._peer_max_frame = value
        assert self._transport is not None
        self._transport.write(h2.frame_header(0, h2.SETTINGS, h2.ACK, 0))
        if not self.ready.done():
            self.ready.set_result(None)
        self._unblock()

    def _on_window_update(self, stream_id: int, increment: int) -> None:
        if stream_id == 0:
            self._send_window += increment
        elif (stream := self._streams.get(stream_id)) is not None:
            stream.window += increment
        self._unblock()

    def _unblock(self) -> None:
        for _ in range(len(self._blocked)):
            stream_id = self._blocked.popleft()
            if (stream := self._streams.get(stream_id)) is not None:
                self._send_data(stream_id, stream)


async def open_connection(
    host: str,
    port: int,
    path: str,
    timeout_s: float,
    *,
    ssl_context: ssl.SSLContext | None = None,
    server_name: str | None = None,
    authority: str | None = None,
    metadata: Sequence[tuple[str, str]] = (),
) -> Http2Connection:
    """A connection whose server SETTINGS have arrived (so its limits are known).

    With `ssl_context` (which must offer ALPN "h2") the connection is TLS; `server_name` is the name
    verified against the certificate and sent as SNI (default: `host`). Raises OSError (ssl.SSLError
    included), ConnectionError, TimeoutError.
    """
    loop = asyncio.get_running_loop()
    scheme = "https" if ssl_context is not None else "http"

    def protocol() -> Http2Connection:
        return Http2Connection(authority or f"{host}:{port}", path, timeout_s, scheme=scheme, metadata=metadata)

    async def connect() -> Http2Connection:
        if ssl_context is None:
            _, connection = await loop.create_connection(protocol, host, port)
        else:
            transport, connection = await loop.create_connection(
                protocol, host, port, ssl=ssl_context, server_hostname=server_name or host)
            negotiated = transport.get_extra_info("ssl_object")
            if negotiated is not None and negotiated.selected_alpn_protocol() != "h2":
                transport.close()
                raise ConnectionError(f"{host}:{port} did not agree to HTTP/2 over TLS (ALPN h2)")
        await connection.ready
        return connection

    return await asyncio.wait_for(connect(), timeout_s)
