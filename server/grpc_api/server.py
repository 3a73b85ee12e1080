"""Tessera's own gRPC server: HTTP/2 (h2/connection.py) on an asyncio protocol, on the serving loop.

The protocol only feeds bytes to the connection state machine, turns its events into calls, and
writes what it returns: once at the end of each read, and once per loop turn for answers, so the
answers of a batch leave in one write. Every call read in one turn starts in that turn.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any, cast

import grpc

from ..batching.load import running_loop_load
from ..tls import auth_context_from_peercert
from .calls import Call
from .context import CallContext
from .h2 import frames as f
from .h2.connection import H2Connection
from .h2.events import (
    ConnectionTerminated,
    DataReceived,
    PeerGoaway,
    RequestReceived,
    StreamReset,
    WindowOpened,
)
from .h2.limits import H2Limits, LimitCounters
from .messages import (
    OK_TRAILERS,
    RESPONSE_HEADERS,
    SUPPORTED_ENCODINGS,
    RequestHead,
    encode_headers,
    error_headers,
    request_head,
)
from .rpc import Rpc

__all__ = ["GrpcServer"]

logger = logging.getLogger(__name__)

def _peer_name(transport: asyncio.BaseTransport) -> str:
    address = transport.get_extra_info("peername")
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"ipv6:[{host}]:{port}" if ":" in str(host) else f"ipv4:{host}:{port}"
    return f"unix:{address}" if address else "unknown"


def _auth_context(transport: asyncio.BaseTransport) -> dict[str, list[bytes]]:
    """What grpc's ServicerContext.auth_context() gives: empty in plaintext, the verified peer
    certificate's names under TLS (the same identities the grpcio server reports)."""
    if transport.get_extra_info("ssl_object") is None:
        return {}
    return auth_context_from_peercert(transport.get_extra_info("peercert"))


class GrpcProtocol(asyncio.Protocol):
    """One client connection. Runs on the event loop."""

    def __init__(self, server: GrpcServer) -> None:
        self._server = server
        self._conn = H2Connection(server.limits, server.counters)
        self._calls: dict[int, Call] = {}
        self._transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()  # calls start their tasks on it (CallSink.loop)
        self._flush_pending = False
        self._writing_paused = False
        self._reading_paused = False
        self._writable: asyncio.Future[None] | None = None
        self._peer = "unknown"
        self._auth: dict[str, list[bytes]] = {}
        self._heads: dict[int, tuple[list[tuple[bytes, bytes]], RequestHead]] = {}
        self.opened_at = time.monotonic()

    # -- asyncio.Protocol ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports don't subclass it
        self._peer = _peer_name(transport)
        self._auth = _auth_context(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._server.connections.add(self)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        for call in list(self._calls.values()):
            call.finished = True
            call.cancel()
        self._calls.clear()
        self._wake_writers()

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._apply_backpressure()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._apply_backpressure()
        self._wake_writers()

    def data_received(self, data: bytes) -> None:
        for event in self._conn.receive(data):
            if type(event) is DataReceived:
                call = self._calls.get(event.stream_id)
                if call is None:
                    self._conn.acknowledge(event.stream_id, len(event.data))
                else:
                    call.on_data(event.data, event.end_stream)
            elif type(event) is RequestReceived:
                self._start_call(event)
            elif type(event) is StreamReset:
                call = self._calls.pop(event.stream_id, None)
                if call is not None:
                    call.finished = True
                    call.cancel()
            elif type(event) is WindowOpened:
                self._wake_writers()
            elif type(event) is PeerGoaway:
                pass  # no new streams will come; the ones open finish, then the connection closes
            elif type(event) is ConnectionTerminated:
                logger.info("gRPC connection from %s closed: %s", self._peer, event.reason)
        self._flush()

    # -- calls --------------------------------------------------------------------------------------
    def _head(self, headers: list[tuple[bytes, bytes]]) -> RequestHead:
        # The HPACK cache hands back the same list for the same block: parse each such list once.
        cached = self._heads.get(id(headers))
        if cached is not None and cached[0] is headers:
            return cached[1]
        head = request_head(headers)
        if len(self._heads) >= 64:
            self._heads.clear()
        self._heads[id(headers)] = (headers, head)  # holding the list keeps its id from being reused
        return head

    def _start_call(self, event: RequestReceived) -> None:
        method, path, content_type, timeout, encoding, metadata = self._head(event.headers)
        stream_id = event.stream_id
        if method != b"POST":
            self._reject(stream_id, b"405", grpc.StatusCode.UNIMPLEMENTED, "gRPC calls use POST")
            return
        if not content_type.startswith(b"application/grpc"):
            self._reject(stream_id, b"415", grpc.StatusCode.UNKNOWN, "content-type must be application/grpc")
            return
        rpc: Rpc | None = self._server.routes.get(path)
        if rpc is None:
            self._answer(stream_id, grpc.StatusCode.UNIMPLEMENTED, f"unknown method {path.decode('latin-1')}")
            return
        if encoding not in SUPPORTED_ENCODINGS:
            self._answer(stream_id, grpc.StatusCode.UNIMPLEMENTED,
                         f"grpc-encoding {encoding.decode('latin-1')} is not supported")
            return
        deadline = None if timeout is None else self.loop.time() + timeout
        call = Call(self, stream_id, rpc, CallContext(metadata, self._peer, self._auth, deadline),
                    encoding, self._server.max_message_bytes, self._server.limits.stream_recv_buffer_bytes)
        if rpc.kind != "unary_unary":
            call.context.attach_writer(call.write)  # streaming handlers that call context.write()
        self._calls[stream_id] = call
        if deadline is not None:
            call.timer = self.loop.call_at(deadline, self._expire, call)
        if rpc.kind == "stream_stream":
            call.start_streaming()
        if event.end_stream:
            call.on_data(b"", True)

    def _expire(self, call: Call) -> None:
        if not call.finished:
            call.expire()
            self._schedule_flush()

    def _answer(self, stream_id: int, code: grpc.StatusCode, message: str) -> None:
        self._conn.send_headers(stream_id, error_headers(code, message, trailers_only=True), end_stream=True)

    def _reject(self, stream_id: int, status: bytes, code: grpc.StatusCode, message: str) -> None:
        block = encode_headers([(b":status", status), (b"content-type", b"application/grpc"),
                                (b"grpc-status", str(code.value[0]).encode()), (b"grpc-message", message.encode())])
        self._conn.send_headers(stream_id, block, end_stream=True)

    # -- CallSink -----------------------------------------------------------------------------------
    def send_headers(self, stream_id: int, block: bytes, end_stream: bool = False) -> None:
        self._conn.send_headers(stream_id, block, end_stream)
        self._schedule_flush()

    def send_data(self, stream_id: int, data: bytes) -> None:
        self._conn.send_data(stream_id, data)
        self._answer_made()

    def send_response(self, stream_id: int, message: bytes, trailers: bytes = OK_TRAILERS) -> None:
        self._conn.send_response(stream_id, RESPONSE_HEADERS, message, trailers)
        self._answer_made()

    def _answer_made(self) -> None:
        """Write the answer now while the loop has time to spare, else with the turn's others at its end.

        Written now, the answer leaves in this turn rather than the next, and a waiting client starts
        its next request while the loop makes the other answers: +5-10% at one client, and with the
        heavy model's batches of 32 (the loop a third busy, its runs in the pool) up to +6%. On a
        saturated loop every write saved is throughput: writing each answer at once cost 2-12% at
        32 clients of the small model (BENCHMARKS.md, fourteenth session).
        """
        if self._server.loop_load.update():
            self._schedule_flush()
        else:
            self._flush()

    def acknowledge(self, stream_id: int, size: int) -> None:
        self._conn.acknowledge(stream_id, size)

    def call_finished(self, call: Call) -> None:
        if self._calls.get(call.stream_id) is call:
            del self._calls[call.stream_id]
        self._schedule_flush()

    async def wait_writable(self, call: Call) -> None:
        limit = self._server.limits.stream_send_buffer_bytes
        while (not call.finished and self._transport is not None and not self._transport.is_closing()
               and (self._writing_paused or self._conn.pending_send_bytes(call.stream_id) > limit)):
            if self._writable is None or self._writable.done():
                self._writable = self.loop.create_future()
            await self._writable

    def _wake_writers(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    # -- writing ------------------------------------------------------------------------------------
    def _schedule_flush(self) -> None:
        if not self._flush_pending:
            self._flush_pending = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        chunks = self._conn.data_to_send()
        if len(chunks) == 1:
            transport.write(chunks[0])
        elif chunks:
            transport.writelines(chunks)
        if self._conn.closed or ((self._conn.goaway_sent or self._conn.peer_goaway) and not self._calls \
                and not self._conn.buffered_send_bytes):
            transport.close()
            return
        self._apply_backpressure()

    def _apply_backpressure(self) -> None:
        """Stop reading requests while answers pile up for a peer that does not take them."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        full = self._writing_paused or self._conn.buffered_send_bytes > self._server.limits.max_send_buffer_bytes
        if full and not self._reading_paused:
            self._reading_paused = True
            self._server.counters["max_send_buffer_bytes"] += 1
            transport.pause_reading()
        elif not full and self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()

    # -- server-driven ------------------------------------------------------------------------------
    @property
    def active_calls(self) -> int:
        return len(self._calls)

    @property
    def buffered_send_bytes(self) -> int:
        """Response bytes held for the peer's flow-control windows."""
        return self._conn.buffered_send_bytes

    def drain(self) -> None:
        """GOAWAY with the last stream taken; calls in flight finish, then the connection closes."""
        self._conn.start_drain()
        self._flush()

    def check_timeouts(self, now: float) -> None:
        """Close a connection that never finished its handshake, or that is idle (no frames, no work)."""
        limits = self._server.limits
        if not self._conn.handshake_done:
            if now - self.opened_at > limits.handshake_timeout_s:
                self._server.counters["handshake_timeout_s"] += 1
                self.close(f.NO_ERROR, "no HTTP/2 preface in time")
            return
        busy = any(call.busy for call in self._calls.values())
        if not busy and now - self._conn.last_frame_at > limits.idle_timeout_s:
            self._server.counters["idle_timeout_s"] += 1
            self.close(f.NO_ERROR, "idle")

    def close(self, code: int, reason: str) -> None:
        self._conn.close(code, reason)
        self._flush()
        if self._transport is not None:
            self._transport.close()


class GrpcServer:
    """Listens on one socket; every connection is a GrpcProtocol on the running loop."""

    def __init__(self, routes: Mapping[bytes, Rpc], *, max_message_bytes: int, limits: H2Limits | None = None,
                 ssl_context: ssl.SSLContext | None = None,
                 report: Callable[[Mapping[str, int], int], None] | None = None) -> None:
        """`report(limits crossed, open connections)` is called from the sweeper (at most a second
        apart) and once at stop: how the tallies reach /metrics without touching the hot paths."""
        self.routes = dict(routes)
        self._report = report
        self.max_message_bytes = max_message_bytes
        self.limits = limits or H2Limits()
        self.counters = LimitCounters()
        # Whether answers are written at once (GrpcProtocol._answer_made): the loop's one measure, which
        # its batchers share. The server is made on its loop, in the coroutine that starts it.
        self.loop_load = running_loop_load()
        self.connections: set[GrpcProtocol] = set()
        self._ssl = ssl_context
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, sock: socket.socket) -> int:
        """Serve on a bound, listening socket; returns its port."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: GrpcProtocol(self), sock=sock, ssl=self._ssl,
                                                backlog=2048)
        self._sweeper = loop.create_task(self._sweep())
        return int(sock.getsockname()[1])

    async def _sweep(self) -> None:
        interval = max(0.05, min(1.0, self.limits.idle_timeout_s / 4, self.limits.handshake_timeout_s / 4))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for protocol in list(self.connections):
                protocol.check_timeouts(now)
            self._report_tallies()

    def _report_tallies(self) -> None:
        if self._report is not None:
            self._report(self.counters, len(self.connections))

    async def stop(self, grace_s: float) -> None:
        """Drain: stop accepting, GOAWAY every connection, let calls in flight finish (up to
        `grace_s`), then close what is left."""
        if self._server is not None:
            self._server.close()
        for protocol in list(self.connections):
            protocol.drain()
        deadline = time.monotonic() + grace_s
        while any(p.active_calls for p in self.connections) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for protocol in list(self.connections):
            protocol.close(f.NO_ERROR, "server stopping")
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            await self._server.wait_closed()
        self._report_tallies()

    def stats(self) -> dict[str, Any]:
        return {"connections": len(self.connections), "limits_crossed": dict(self.counters)}
