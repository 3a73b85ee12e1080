"""The HTTP/2 connection state machine, driven with bytes and no socket."""

from __future__ import annotations

import hpack

from server.grpc_api.h2 import H2Connection, H2Limits
from server.grpc_api.h2 import frames as f
from server.grpc_api.h2.events import DataReceived, RequestReceived, StreamReset, WindowOpened


def _frames(conn: H2Connection) -> list[f.Frame]:
    frames, _, _ = f.split_frames(b"".join(bytes(c) for c in conn.data_to_send()), f.MAX_FRAME_LIMIT)
    return frames


def _request(stream_id: int, body: bytes = b"", encoder: hpack.Encoder | None = None) -> bytes:
    block = (encoder or hpack.Encoder()).encode([(":method", "POST"), (":scheme", "http"), (":path", "/s/M"),
                                                 ("content-type", "application/grpc")])
    out = f.frame_header(len(block), f.HEADERS, f.END_HEADERS, stream_id) + block
    return out + f.frame_header(len(body), f.DATA, f.END_STREAM, stream_id) + body


def _open(limits: H2Limits | None = None, settings: list[tuple[int, int]] | None = None) -> H2Connection:
    conn = H2Connection(limits or H2Limits())
    conn.receive(f.PREFACE + f.settings_frame(settings or []))
    return conn


def test_our_settings_and_window_go_first_and_peer_settings_are_acknowledged() -> None:
    limits = H2Limits(max_concurrent_streams=7, stream_window_bytes=1 << 20, connection_window_bytes=8 << 20)
    conn = H2Connection(limits)
    first = _frames(conn)
    assert first[0][0] == f.SETTINGS
    settings = dict(f.SETTING.unpack_from(first[0][3], i) for i in range(0, len(first[0][3]), 6))
    assert settings[f.SETTINGS_MAX_CONCURRENT_STREAMS] == 7
    assert settings[f.SETTINGS_INITIAL_WINDOW_SIZE] == 1 << 20
    assert first[1][0] == f.WINDOW_UPDATE and f.UINT32.unpack(first[1][3])[0] == (8 << 20) - f.DEFAULT_WINDOW
    conn.receive(f.PREFACE + f.settings_frame([]))
    assert [(k, fl) for k, fl, _, _ in _frames(conn)] == [(f.SETTINGS, f.ACK)]


def test_a_request_arrives_as_headers_then_data() -> None:
    conn = _open()
    events = conn.receive(_request(1, b"abc"))
    assert isinstance(events[0], RequestReceived) and (b":path", b"/s/M") in events[0].headers
    assert events[1] == DataReceived(1, b"abc", True)


def test_data_waits_for_the_peers_window_and_trailers_wait_behind_it() -> None:
    conn = _open(settings=[(f.SETTINGS_INITIAL_WINDOW_SIZE, 10)])
    conn.receive(_request(1, b"x"))
    conn.data_to_send()
    conn.send_data(1, b"a" * 25)
    conn.send_headers(1, b"\x88", end_stream=True)
    sent = _frames(conn)
    assert [(k, len(p)) for k, _, _, p in sent] == [(f.DATA, 10)]
    assert conn.buffered_send_bytes == 15
    events = conn.receive(f.window_update_frame(1, 100))
    assert events == [WindowOpened()]
    sent = _frames(conn)
    assert [(k, len(p)) for k, _, _, p in sent] == [(f.DATA, 15), (f.HEADERS, 1)]
    assert sent[-1][1] & f.END_STREAM and conn.buffered_send_bytes == 0 and conn.open_streams == 0


def test_large_header_blocks_continue_in_continuation_frames() -> None:
    conn = _open()
    conn.receive(_request(1))
    conn.data_to_send()
    conn.send_headers(1, b"\x00" * 40_000, end_stream=True)
    kinds = [(k, fl & f.END_HEADERS) for k, fl, _, _ in _frames(conn)]
    assert kinds == [(f.HEADERS, 0), (f.CONTINUATION, 0), (f.CONTINUATION, f.END_HEADERS)]


def test_acknowledged_data_reopens_both_windows() -> None:
    limits = H2Limits(stream_window_bytes=1000, connection_window_bytes=4000)
    conn = _open(limits)
    encoder = hpack.Encoder()
    block = encoder.encode([(":method", "POST"), (":scheme", "http"), (":path", "/s/M")])
    conn.receive(f.frame_header(len(block), f.HEADERS, f.END_HEADERS, 1) + block
                 + f.frame_header(600, f.DATA, 0, 1) + bytes(600))
    conn.data_to_send()
    conn.acknowledge(1, 600)
    updates = {sid: f.UINT32.unpack(p)[0] for k, _, sid, p in _frames(conn) if k == f.WINDOW_UPDATE}
    assert updates == {1: 600}  # the connection's quarter (1000) is not reached yet
    conn.receive(f.frame_header(1000, f.DATA, 0, 1) + bytes(1000))  # the reopened window, all of it
    events = conn.receive(f.frame_header(1, f.DATA, 0, 1) + b"x")  # 1 byte beyond it
    assert events == [StreamReset(1, f.FLOW_CONTROL_ERROR, False)]


def test_a_stream_error_leaves_the_connection_usable() -> None:
    conn = _open()
    conn.receive(_request(1))
    events = conn.receive(f.frame_header(4, f.PRIORITY, 0, 3) + bytes(4))  # PRIORITY must be 5 bytes
    assert events == [StreamReset(3, f.FRAME_SIZE_ERROR, False)]
    assert not conn.closed
    assert isinstance(conn.receive(_request(5))[0], RequestReceived)


def test_control_frames_are_earned_by_calls_and_spent_by_floods() -> None:
    conn = _open(H2Limits(control_frames_burst=100, control_frames_per_s=0.001, control_frames_per_stream=4))
    encoder = hpack.Encoder()
    for stream_id in range(1, 2001, 2):  # a busy client: two window updates per call, 2,000 in all
        conn.receive(_request(stream_id, b"x", encoder) + f.window_update_frame(0, 10) * 2)
        conn.send_headers(stream_id, b"\x88", end_stream=True)
    assert not conn.closed
    conn.receive(f.window_update_frame(0, 1) * 500)  # the same frames with no calls: a flood
    assert conn.closed


def test_a_whole_answer_goes_out_at_once_or_waits_like_any_other() -> None:
    conn = _open(settings=[(f.SETTINGS_INITIAL_WINDOW_SIZE, 10)])
    conn.receive(_request(1, b"x") + _request(3, b"y"))
    conn.data_to_send()
    conn.send_response(1, b"\x88", b"a" * 10, b"\x89")
    assert [(k, fl, len(p)) for k, fl, _, p in _frames(conn)] == [
        (f.HEADERS, f.END_HEADERS, 1), (f.DATA, 0, 10), (f.HEADERS, f.END_HEADERS | f.END_STREAM, 1)]
    conn.send_response(3, b"\x88", b"b" * 25, b"\x89")  # beyond the stream's window: held, trailers behind it
    assert [(k, len(p)) for k, _, _, p in _frames(conn)] == [(f.HEADERS, 1), (f.DATA, 10)]
    conn.receive(f.window_update_frame(3, 15))
    assert [(k, len(p)) for k, _, _, p in _frames(conn)] == [(f.DATA, 15), (f.HEADERS, 1)]
    assert conn.open_streams == 0


def test_a_long_stream_earns_its_window_updates() -> None:
    """perf_analyzer --streaming: one stream, each message answered, each answer acknowledged by two
    WINDOW_UPDATEs (stream and connection); far more control frames than the burst, never a flood."""
    conn = _open(H2Limits(control_frames_burst=50, control_frames_per_s=0.001, control_frames_per_stream=1))
    block = hpack.Encoder().encode([(":method", "POST"), (":scheme", "http"), (":path", "/s/M")])
    conn.receive(f.frame_header(len(block), f.HEADERS, f.END_HEADERS, 1) + block)
    conn.send_headers(1, b"\x88")
    for _ in range(2000):
        conn.receive(f.frame_header(10, f.DATA, 0, 1) + bytes(10))
        conn.send_data(1, bytes(20))
        conn.receive(f.window_update_frame(1, 20) + f.window_update_frame(0, 20))
    assert not conn.closed


def test_data_beyond_the_connection_window_is_a_flow_control_error() -> None:
    conn = _open(H2Limits(stream_window_bytes=1 << 20, connection_window_bytes=1 << 20))
    block = hpack.Encoder().encode([(":method", "POST"), (":scheme", "http"), (":path", "/s/M")])
    quarter = f.frame_header(1 << 18, f.DATA, 0, 1) + bytes(1 << 18)
    events = conn.receive(f.frame_header(len(block), f.HEADERS, f.END_HEADERS, 1) + block
                          + quarter * 4  # the whole window, none of it acknowledged by the receiver
                          + f.frame_header(1, f.DATA, 0, 1) + b"x")
    assert conn.closed and events[-1].code == f.FLOW_CONTROL_ERROR  # type: ignore[union-attr]
