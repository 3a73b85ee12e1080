"""The known HTTP/2 attacks and protocol violations, from a raw socket: each ends in the right
connection or stream error, the server stays up, holds bounded memory, and serves other clients."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import hpack
import pytest

from server.grpc_api.h2 import frames as f

from .conftest import EchoServer

Frame = tuple[int, int, int, bytes]


class RawPeer:
    """A hand-driven HTTP/2 client: sends the frames a test lays out, reads what comes back."""

    def __init__(self, port: int, settings: list[tuple[int, int]] | None = None, preface: bool = True) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.settimeout(10)
        self.encoder = hpack.Encoder()
        self.buffer = bytearray()
        self.closed = False
        if preface:
            self.send(f.PREFACE + f.settings_frame(settings or []))

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:  # the server may close while we are still sending the attack
            self.closed = True

    def headers(self, stream_id: int, path: str = "/test.Echo/Echo", end_stream: bool = False,
                content_type: str = "application/grpc", extra: tuple[tuple[str, str], ...] = ()) -> bytes:
        block = self.encoder.encode([(":method", "POST"), (":scheme", "http"), (":path", path),
                                     (":authority", "x"), ("content-type", content_type), ("te", "trailers"),
                                     *extra])
        flags = f.END_HEADERS | (f.END_STREAM if end_stream else 0)
        return f.frame_header(len(block), f.HEADERS, flags, stream_id) + block

    @staticmethod
    def message(stream_id: int, body: bytes, end_stream: bool = True) -> bytes:
        payload = b"\x00" + len(body).to_bytes(4, "big") + body
        return f.frame_header(len(payload), f.DATA, f.END_STREAM if end_stream else 0, stream_id) + payload

    def frames(self, until: type | None = None, timeout: float = 10) -> Iterator[Frame]:
        """Frames as they arrive, until the connection closes or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            parsed, used, _ = f.split_frames(self.buffer, f.MAX_FRAME_LIMIT)
            del self.buffer[:used]
            yield from parsed
            try:
                chunk = self.sock.recv(1 << 20)
            except (TimeoutError, OSError):
                return
            if not chunk:
                self.closed = True
                return
            self.buffer += chunk

    def goaway(self, timeout: float = 10) -> int | None:
        """The error code of the GOAWAY the server sends, None if none came."""
        for kind, _, _, payload in self.frames(timeout=timeout):
            if kind == f.GOAWAY:
                return f.UINT32.unpack_from(payload, 4)[0]
        return None

    def reset_code(self, stream_id: int, timeout: float = 10) -> int | None:
        for kind, _, sid, payload in self.frames(timeout=timeout):
            if kind == f.RST_STREAM and sid == stream_id:
                return f.UINT32.unpack(payload)[0]
        return None

    def answer(self, stream_id: int, timeout: float = 10) -> dict[bytes, bytes]:
        """Header fields of the stream's final header block (trailers or trailers-only), decoded."""
        decoder = hpack.Decoder()
        fields: dict[bytes, bytes] = {}
        for kind, flags, sid, payload in self.frames(timeout=timeout):
            if kind == f.HEADERS:
                decoded = dict(decoder.decode(payload, raw=True))
                if sid == stream_id:
                    fields.update(decoded)
                    if flags & f.END_STREAM:
                        return fields
        return fields

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def connect() -> Iterator[Callable[..., RawPeer]]:
    """`connect(port, **RawPeer options)`; every peer is closed after the test."""
    peers: list[RawPeer] = []

    def open_peer(port: int, **options: Any) -> RawPeer:
        peers.append(RawPeer(port, **options))
        return peers[-1]

    yield open_peer
    for peer in peers:
        peer.close()


def served(echo: EchoServer) -> bool:
    """Another client, on its own connection, still gets answers."""
    with grpc.insecure_channel(echo.url) as channel:
        return bool(channel.unary_unary("/test.Echo/Echo")(b"ok", timeout=10) == b"ok")


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def test_rapid_reset_ends_the_connection_and_every_handler(connect, echo_factory) -> None:
    echo = echo_factory(resets_burst=200, resets_per_s=10)
    peer = connect(echo.port)
    attack = b"".join(peer.headers(sid, "/test.Echo/Slow") + peer.message(sid, b"x") + f.rst_stream_frame(sid, f.CANCEL)
                      for sid in range(1, 20_000, 2))
    peer.send(attack)
    assert peer.goaway() == f.ENHANCE_YOUR_CALM
    deadline = time.monotonic() + 5
    while echo.state.started != echo.state.cancelled and time.monotonic() < deadline:
        time.sleep(0.01)
    assert echo.state.started == echo.state.cancelled  # nothing keeps computing for a reset stream
    assert echo.server.counters["resets_burst"] == 1
    assert served(echo)


def test_continuation_flood_is_cut_at_the_header_block_limit(connect, echo_factory) -> None:
    echo = echo_factory()
    peer = connect(echo.port)
    block = peer.encoder.encode([(":method", "POST"), (":path", "/test.Echo/Echo")])
    peer.send(f.frame_header(len(block), f.HEADERS, 0, 1) + block)
    junk = b"\x00" * 16_384
    before = rss_bytes()
    for _ in range(200):  # 3 MiB of a header block that never ends
        peer.send(f.frame_header(len(junk), f.CONTINUATION, 0, 1) + junk)
        if peer.closed:
            break
    assert peer.goaway() == f.ENHANCE_YOUR_CALM
    assert echo.server.counters["max_header_block_bytes"] == 1
    assert rss_bytes() - before < 64 << 20
    assert served(echo)


def test_empty_continuation_frames_spend_the_control_budget(connect, echo_factory) -> None:
    echo = echo_factory(control_frames_burst=1000, control_frames_per_s=10)
    peer = connect(echo.port)
    block = peer.encoder.encode([(":method", "POST")])
    peer.send(f.frame_header(len(block), f.HEADERS, 0, 1) + block
              + f.frame_header(0, f.CONTINUATION, 0, 1) * 5000)
    assert peer.goaway() == f.ENHANCE_YOUR_CALM
    assert served(echo)


def test_hpack_bomb_is_cut_at_the_header_list_limit(connect, echo_factory) -> None:
    echo = echo_factory(max_header_list_bytes=16 << 10)
    peer = connect(echo.port)
    # One 4 KB header in the dynamic table, then a block referencing it hundreds of times (1 byte each).
    first = peer.headers(1, extra=(("x-bomb", "b" * 4000),))
    index = 62  # the newest dynamic entry
    bomb = peer.encoder.encode([(":method", "POST"), (":scheme", "http"), (":path", "/test.Echo/Echo")])
    bomb += bytes([0x80 | index]) * 500  # 500 x 4 KB = 2 MB decoded from 500 bytes
    peer.send(first + peer.message(1, b"x") + f.frame_header(len(bomb), f.HEADERS, f.END_HEADERS, 3) + bomb)
    assert peer.goaway() == f.ENHANCE_YOUR_CALM
    assert echo.server.counters["max_header_list_bytes"] == 1
    assert served(echo)


def test_hpack_table_larger_than_allowed_is_a_compression_error(connect, echo_factory) -> None:
    echo = echo_factory()
    peer = connect(echo.port)
    block = b"\x3f\xe1\xff\x03"  # dynamic table size update to 65,536, above our 4,096
    peer.send(f.frame_header(len(block), f.HEADERS, f.END_HEADERS, 1) + block)
    assert peer.goaway() == f.COMPRESSION_ERROR
    assert served(echo)


@pytest.mark.parametrize("frame", [
    pytest.param(f.settings_frame([]), id="settings"),
    pytest.param(f.window_update_frame(0, 1), id="window-update"),
    pytest.param(f.frame_header(5, f.PRIORITY, 0, 1) + b"\x00\x00\x00\x00\x10", id="priority"),
    pytest.param(f.ping_frame(b"12345678", ack=True), id="ping-ack"),
])
def test_control_frame_floods_end_the_connection(connect, echo_factory, frame: bytes) -> None:
    echo = echo_factory(control_frames_burst=2000, control_frames_per_s=100)
    peer = connect(echo.port)
    before = rss_bytes()
    peer.send(frame * 20_000)
    assert peer.goaway() == f.ENHANCE_YOUR_CALM
    assert echo.server.counters["control_frames_burst"] == 1
    assert rss_bytes() - before < 64 << 20
    assert served(echo)


def test_ping_flood_without_data_is_enhance_your_calm(connect, echo_factory) -> None:
    echo = echo_factory()
    peer = connect(echo.port)
    peer.send(f.ping_frame(b"abcdefgh") * 10)
    assert peer.goaway() == f.ENHANCE_YOUR_CALM
    assert echo.server.counters["max_ping_strikes"] == 1
    assert served(echo)


def test_pings_are_acknowledged(connect, echo: EchoServer) -> None:
    peer = connect(echo.port)
    peer.send(f.ping_frame(b"abcdefgh"))
    acks = [p for kind, flags, _, p in peer.frames(timeout=2) if kind == f.PING and flags & f.ACK]
    assert acks == [b"abcdefgh"]


def test_a_peer_that_never_opens_its_window_is_paused_then_dropped(connect, echo_factory) -> None:
    echo = echo_factory(max_send_buffer_bytes=4 << 20, idle_timeout_s=1.0)
    peer = connect(echo.port, settings=[(f.SETTINGS_INITIAL_WINDOW_SIZE, 0)])

    def asks(first: int, count: int) -> bytes:  # answers of 1 MiB each, none of which may move
        return b"".join(peer.headers(sid, "/test.Echo/Big") + peer.message(sid, str(1 << 20).encode())
                        for sid in range(first, first + 2 * count, 2))

    peer.send(asks(1, 8))
    deadline = time.monotonic() + 10
    while not echo.server.counters["max_send_buffer_bytes"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert echo.server.counters["max_send_buffer_bytes"] >= 1  # 8 MiB held: reading paused
    threading.Thread(target=peer.send, args=(asks(17, 1000),), daemon=True).start()
    time.sleep(0.5)
    assert echo.state.big == 8  # nothing more is read, so nothing more is computed or held
    held = echo.call(lambda: max((p.buffered_send_bytes for p in echo.server.connections), default=0))
    assert held <= (8 << 20) + 8 * 5  # eight answers and their message prefixes
    assert served(echo)
    deadline = time.monotonic() + 10
    while echo.server.counters["idle_timeout_s"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert echo.server.counters["idle_timeout_s"] >= 1  # and the stalled connection is closed


def test_a_streaming_call_that_is_not_read_stops_opening_its_window(connect, echo_factory) -> None:
    echo = echo_factory(stream_window_bytes=1 << 20, stream_recv_buffer_bytes=1 << 20)
    peer = connect(echo.port)
    half = b"\x00" + (512 << 10).to_bytes(4, "big") + bytes(512 << 10)
    frames = b"".join(f.frame_header(len(half), f.DATA, 0, 1) + half for _ in range(6))
    peer.send(peer.headers(1, "/test.Echo/Stall") + frames)  # 3 MiB, ignoring our window
    assert peer.reset_code(1) == f.FLOW_CONTROL_ERROR  # held: the limit plus one window, no more
    assert served(echo)


def test_a_streaming_answer_to_a_peer_that_does_not_read_waits(connect, echo_factory) -> None:
    echo = echo_factory(stream_send_buffer_bytes=64 << 10)
    peer = connect(echo.port, settings=[(f.SETTINGS_INITIAL_WINDOW_SIZE, 0)])
    peer.send(peer.headers(1, "/test.Echo/Count") + peer.message(1, b"100000000"))  # 10^8 answers, none may move
    time.sleep(1.0)
    held = echo.call(lambda: max((p.buffered_send_bytes for p in echo.server.connections), default=0))
    assert 0 < held <= (64 << 10) + 64  # the handler waits at the stream's send buffer limit
    assert served(echo)


def test_streams_beyond_the_limit_are_refused(connect, echo_factory) -> None:
    echo = echo_factory(max_concurrent_streams=10)
    peer = connect(echo.port)
    peer.send(b"".join(peer.headers(sid, "/test.Echo/Slow") + peer.message(sid, b"x") for sid in range(1, 23, 2)))
    assert peer.reset_code(21) == f.REFUSED_STREAM
    assert echo.server.counters["max_concurrent_streams"] == 1
    assert served(echo)


def test_data_beyond_the_declared_message_is_an_error_on_that_stream_only(connect, echo: EchoServer) -> None:
    peer = connect(echo.port)
    internal = str(grpc.StatusCode.INTERNAL.value[0]).encode()
    second_message = b"\x00" + (3).to_bytes(4, "big") + b"abc" + b"\x00\x00\x00\x00\x01z"
    peer.send(peer.headers(1) + f.frame_header(len(second_message), f.DATA, f.END_STREAM, 1) + second_message)
    assert peer.answer(1)[b"grpc-status"] == internal
    short = b"\x00" + (10).to_bytes(4, "big") + b"abc"  # declares 10 bytes, the stream ends after 3
    peer.send(peer.headers(3) + f.frame_header(len(short), f.DATA, f.END_STREAM, 3) + short)
    assert peer.answer(3)[b"grpc-status"] == internal
    peer.send(peer.headers(5) + peer.message(5, b"fine"))
    assert peer.answer(5)[b"grpc-status"] == b"0"


def test_declared_message_over_the_limit_is_resource_exhausted(connect, echo_factory) -> None:
    echo = echo_factory(max_message_bytes=1000)
    peer = connect(echo.port)
    header = b"\x00" + (1 << 30).to_bytes(4, "big")  # declares 1 GiB; nothing of it is buffered
    peer.send(peer.headers(1) + f.frame_header(len(header), f.DATA, 0, 1) + header)
    assert peer.answer(1)[b"grpc-status"] == str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]).encode()


def test_idle_connection_is_closed(connect, echo_factory) -> None:
    echo = echo_factory(idle_timeout_s=0.3)
    peer = connect(echo.port)
    assert peer.goaway(timeout=5) == f.NO_ERROR
    assert echo.server.counters["idle_timeout_s"] == 1


def test_half_open_connection_without_a_preface_is_closed(connect, echo_factory) -> None:
    echo = echo_factory(handshake_timeout_s=0.3)
    peer = connect(echo.port, preface=False)
    list(peer.frames(timeout=5))
    assert peer.closed
    assert echo.server.counters["handshake_timeout_s"] == 1


@pytest.mark.parametrize(("data", "code"), [
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", f.PROTOCOL_ERROR, id="not-http2"),
    pytest.param(f.PREFACE + f.ping_frame(b"12345678"), f.PROTOCOL_ERROR, id="settings-not-first"),
    pytest.param(f.PREFACE + f.settings_frame([]) + f.frame_header(1, f.DATA, 0, 0) + b"x", f.PROTOCOL_ERROR,
                 id="data-on-stream-0"),
    pytest.param(f.PREFACE + f.settings_frame([]) + f.frame_header(2 << 20, f.DATA, 0, 1), f.FRAME_SIZE_ERROR,
                 id="frame-too-large"),
    pytest.param(f.PREFACE + f.settings_frame([]) + f.frame_header(0, f.HEADERS, f.END_HEADERS, 2),
                 f.PROTOCOL_ERROR, id="even-stream-id"),
    pytest.param(f.PREFACE + f.frame_header(5, f.SETTINGS, 0, 0) + b"12345", f.FRAME_SIZE_ERROR,
                 id="settings-length"),
    pytest.param(f.PREFACE + f.settings_frame([(f.SETTINGS_INITIAL_WINDOW_SIZE, 2**31)]), f.FLOW_CONTROL_ERROR,
                 id="window-too-large"),
    pytest.param(f.PREFACE + f.settings_frame([]) + f.window_update_frame(0, 0), f.PROTOCOL_ERROR,
                 id="window-update-zero"),
    pytest.param(f.PREFACE + f.settings_frame([]) + f.rst_stream_frame(7, f.CANCEL), f.PROTOCOL_ERROR,
                 id="reset-idle-stream"),
    pytest.param(f.PREFACE + f.settings_frame([]) + f.frame_header(8, f.PUSH_PROMISE, 0, 1) + bytes(8),
                 f.PROTOCOL_ERROR, id="push-promise"),
])
def test_protocol_violations_are_connection_errors(connect, echo: EchoServer, data: bytes, code: int) -> None:
    peer = connect(echo.port, preface=False)
    peer.send(data)
    assert peer.goaway() == code
    assert served(echo)


def test_padding_and_priority_are_understood(connect, echo: EchoServer) -> None:
    peer = connect(echo.port)
    block = peer.encoder.encode([(":method", "POST"), (":scheme", "http"), (":path", "/test.Echo/Echo"),
                                 ("content-type", "application/grpc")])
    headers = b"\x04" + b"\x00\x00\x00\x00\x10" + block + b"\x00" * 4  # pad length, priority, block, padding
    body = b"\x00\x00\x00\x00\x02hi"
    data = b"\x03" + body + b"\x00" * 3
    peer.send(f.frame_header(len(headers), f.HEADERS, f.END_HEADERS | f.PADDED | f.PRIORITY_FLAG, 1) + headers
              + f.frame_header(5, f.PRIORITY, 0, 1) + b"\x00\x00\x00\x00\x10"
              + f.frame_header(len(data), f.DATA, f.END_STREAM | f.PADDED, 1) + data)
    assert peer.answer(1)[b"grpc-status"] == b"0"


def test_wrong_content_type_is_415(connect, echo: EchoServer) -> None:
    peer = connect(echo.port)
    peer.send(peer.headers(1, content_type="text/plain") + peer.message(1, b"x"))
    assert peer.answer(1)[b":status"] == b"415"


def test_drain_finishes_calls_in_flight_and_refuses_new_ones(echo_factory) -> None:
    import asyncio

    echo = echo_factory()
    with grpc.insecure_channel(echo.url) as channel:
        call = channel.unary_unary("/test.Echo/Sleep").future(b"0.5", timeout=10)
        while echo.state.started == 0 and not echo.call(lambda: any(p.active_calls for p in echo.server.connections)):
            time.sleep(0.01)
        stopping = asyncio.run_coroutine_threadsafe(echo.server.stop(5.0), echo.loop)
        assert call.result() == b"0.5"
        stopping.result(10)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", echo.port), timeout=2).close()
