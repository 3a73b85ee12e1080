"""The server side of one HTTP/2 connection as a state machine: bytes in -> events, calls -> bytes out.

No I/O: `receive()` takes what the socket read and returns events (requests, data, resets); the send
methods queue frames; `data_to_send()` hands over the bytes to write. Limits come from H2Limits,
and each crossing is counted. Protocol violations become the RFC 9113 connection error (GOAWAY, then
`closed`) or stream error (RST_STREAM, reported as StreamReset).
"""

from __future__ import annotations

import time

import hpack

from . import frames as f
from .events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    PeerGoaway,
    RequestReceived,
    StreamReset,
    WindowOpened,
)
from .headers import HeaderDecoder
from .limits import H2Limits, LimitCounters, TokenBucket
from .streams import Stream

__all__ = ["H2Connection"]



class _ConnectionError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class _StreamError(Exception):
    def __init__(self, stream_id: int, code: int) -> None:
        super().__init__(code)
        self.stream_id = stream_id
        self.code = code


class H2Connection:
    """One server connection. Runs on the event loop; every method returns without blocking."""

    def __init__(self, limits: H2Limits, counters: LimitCounters | None = None) -> None:
        self.limits = limits
        self.counters = counters if counters is not None else LimitCounters()
        self._buffer = bytearray()
        self._out: list[bytes | memoryview] = []
        self._streams: dict[int, Stream] = {}
        self._blocked: dict[int, None] = {}  # streams with frames waiting for window, in order
        self._decoder = HeaderDecoder(limits.max_header_list_bytes, limits.header_table_bytes)
        self._preface_seen = False
        self._settings_seen = False
        self._highest_stream = 0
        self._continuing: tuple[int, int, bytearray] | None = None  # stream, HEADERS flags, block so far
        self._send_window = f.DEFAULT_WINDOW
        self._peer_initial_window = f.DEFAULT_WINDOW
        self._peer_max_frame = f.DEFAULT_MAX_FRAME
        self._recv_window = limits.connection_window_bytes
        self._conn_unacked = 0
        self._control = TokenBucket(limits.control_frames_burst, limits.control_frames_per_s)
        self._resets = TokenBucket(limits.resets_burst, limits.resets_per_s)
        self._last_ping = -1e9
        self._ping_strikes = 0
        self.goaway_sent = False
        self.closed = False
        self.peer_goaway = False
        self.last_frame_at = time.monotonic()
        self.buffered_send_bytes = 0
        self._out.append(f.settings_frame([
            (f.SETTINGS_HEADER_TABLE_SIZE, limits.header_table_bytes),
            (f.SETTINGS_MAX_CONCURRENT_STREAMS, limits.max_concurrent_streams),
            (f.SETTINGS_INITIAL_WINDOW_SIZE, limits.stream_window_bytes),
            (f.SETTINGS_MAX_FRAME_SIZE, limits.max_frame_bytes),
            (f.SETTINGS_MAX_HEADER_LIST_SIZE, limits.max_header_list_bytes),
        ]))
        if limits.connection_window_bytes > f.DEFAULT_WINDOW:
            self._out.append(f.window_update_frame(0, limits.connection_window_bytes - f.DEFAULT_WINDOW))

    # -- state --------------------------------------------------------------------------------------
    @property
    def open_streams(self) -> int:
        return len(self._streams)

    @property
    def handshake_done(self) -> bool:
        return self._settings_seen

    def data_to_send(self) -> list[bytes | memoryview]:
        out, self._out = self._out, []
        return out

    def pending_send_bytes(self, stream_id: int) -> int:
        stream = self._streams.get(stream_id)
        return stream.pending_bytes if stream is not None else 0

    # -- receiving ----------------------------------------------------------------------------------
    def receive(self, data: bytes) -> list[Event]:
        """Feed bytes read from the socket; returns what they mean, in order."""
        events: list[Event] = []
        if self.closed:
            return events
        self.last_frame_at = time.monotonic()
        buffer = self._buffer
        buffer += data
        try:
            if not self._preface_seen:
                if len(buffer) < len(f.PREFACE):
                    if not f.PREFACE.startswith(bytes(buffer)):
                        raise _ConnectionError(f.PROTOCOL_ERROR, "invalid connection preface")
                    return events
                if buffer[:len(f.PREFACE)] != f.PREFACE:
                    raise _ConnectionError(f.PROTOCOL_ERROR, "invalid connection preface")
                del buffer[:len(f.PREFACE)]
                self._preface_seen = True
            frames, used, oversized = f.split_frames(buffer, self.limits.max_frame_bytes)
            del buffer[:used]
            for kind, flags, stream_id, payload in frames:
                try:
                    self._on_frame(kind, flags, stream_id, payload, events)
                except _StreamError as reset:  # RST_STREAM even for a stream we do not hold
                    self._drop(reset.stream_id)
                    self._out.append(f.rst_stream_frame(reset.stream_id, reset.code))
                    events.append(StreamReset(reset.stream_id, reset.code, False))
            if oversized:
                self.counters["max_frame_bytes"] += 1
                raise _ConnectionError(f.FRAME_SIZE_ERROR, "frame larger than SETTINGS_MAX_FRAME_SIZE")
        except _ConnectionError as exc:
            self.close(exc.code, str(exc))
            events.append(ConnectionTerminated(exc.code, str(exc)))
        return events

    def _on_frame(self, kind: int, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if self._continuing is not None and kind != f.CONTINUATION:
            raise _ConnectionError(f.PROTOCOL_ERROR, "header block interrupted")
        if not self._settings_seen and (kind != f.SETTINGS or flags & f.ACK):
            raise _ConnectionError(f.PROTOCOL_ERROR, "the first frame must be SETTINGS")
        if kind == f.DATA:
            self._on_data(flags, stream_id, payload, events)
        elif kind == f.HEADERS:
            self._on_headers(flags, stream_id, payload, events)
        elif kind == f.CONTINUATION:
            self._on_continuation(flags, stream_id, payload, events)
        elif kind == f.RST_STREAM:
            self._on_rst_stream(stream_id, payload, events)
        elif kind == f.WINDOW_UPDATE:
            self._on_window_update(stream_id, payload, events)
        elif kind == f.SETTINGS:
            self._on_settings(flags, stream_id, payload, events)
        elif kind == f.PING:
            self._on_ping(flags, stream_id, payload)
        elif kind == f.GOAWAY:
            if stream_id != 0 or len(payload) < 8:
                raise _ConnectionError(f.PROTOCOL_ERROR, "malformed GOAWAY")
            self.peer_goaway = True
            events.append(PeerGoaway(f.UINT32.unpack_from(payload)[0] & f.MAX_WINDOW,
                                     f.UINT32.unpack_from(payload, 4)[0]))
        elif kind == f.PRIORITY:  # ignored, as RFC 9113 allows; only checked
            self._spend_control()
            if stream_id == 0:
                raise _ConnectionError(f.PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5:
                raise _StreamError(stream_id, f.FRAME_SIZE_ERROR)
        elif kind == f.PUSH_PROMISE:
            raise _ConnectionError(f.PROTOCOL_ERROR, "clients must not push")
        else:  # unknown frame types are ignored (RFC 9113 5.5), but count as control frames
            self._spend_control()

    def _spend_control(self) -> None:
        if not self._control.take():
            self.counters["control_frames_burst"] += 1
            raise _ConnectionError(f.ENHANCE_YOUR_CALM, "too many control frames")

    @staticmethod
    def _unpad(flags: int, payload: bytes) -> bytes:
        if not flags & f.PADDED:
            return payload
        if not payload or payload[0] >= len(payload):
            raise _ConnectionError(f.PROTOCOL_ERROR, "padding longer than the frame")
        return payload[1:len(payload) - payload[0]]

    def _on_data(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if stream_id == 0:
            raise _ConnectionError(f.PROTOCOL_ERROR, "DATA on stream 0")
        flow = len(payload)
        if flow > self._recv_window:
            raise _ConnectionError(f.FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        self._recv_window -= flow
        data = self._unpad(flags, payload)
        stream = self._streams.get(stream_id)
        if stream is None or stream.remote_closed:
            self._ack_connection(flow)
            if stream_id > self._highest_stream:
                raise _ConnectionError(f.PROTOCOL_ERROR, "DATA on an idle stream")
            if stream is not None:
                raise _StreamError(stream_id, f.STREAM_CLOSED)
            return  # a stream we already closed or reset: its frames may still be in flight
        if flow > stream.recv_window:
            self._ack_connection(flow)
            raise _StreamError(stream_id, f.FLOW_CONTROL_ERROR)
        stream.recv_window -= flow
        end = bool(flags & f.END_STREAM)
        if end:
            stream.remote_closed = True
        if data:
            self._control.credit(1)  # a message's bytes are work, not a flood
        elif not end:
            self._spend_control()
        if flow > len(data):
            self.acknowledge(stream_id, flow - len(data))
        events.append(DataReceived(stream_id, data, end))
        if end and stream.local_closed:
            self._drop(stream_id)

    def _on_headers(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if stream_id == 0:
            raise _ConnectionError(f.PROTOCOL_ERROR, "HEADERS on stream 0")
        block = self._unpad(flags, payload)
        if flags & f.PRIORITY_FLAG:
            if len(block) < 5:
                raise _ConnectionError(f.FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            block = block[5:]
        if flags & f.END_HEADERS:
            self._on_header_block(flags, stream_id, block, events)
        else:
            self._continuing = (stream_id, flags, bytearray(block))
            self._check_block_size(len(block))

    def _on_continuation(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if self._continuing is None or self._continuing[0] != stream_id:
            raise _ConnectionError(f.PROTOCOL_ERROR, "CONTINUATION without its HEADERS")
        self._spend_control()
        _, header_flags, block = self._continuing
        block += payload
        self._check_block_size(len(block))
        if flags & f.END_HEADERS:
            self._continuing = None
            self._on_header_block(header_flags, stream_id, bytes(block), events)

    def _check_block_size(self, size: int) -> None:
        if size > self.limits.max_header_block_bytes:
            self.counters["max_header_block_bytes"] += 1
            raise _ConnectionError(f.ENHANCE_YOUR_CALM, "header block too large")

    def _on_header_block(self, flags: int, stream_id: int, block: bytes, events: list[Event]) -> None:
        # Every block is decoded, even for a stream we refuse, to keep the HPACK table in step.
        try:
            headers, well_formed = self._decoder.decode(block)
        except hpack.OversizedHeaderListError:
            self.counters["max_header_list_bytes"] += 1
            raise _ConnectionError(f.ENHANCE_YOUR_CALM, "header list too large") from None
        except hpack.HPACKError as exc:
            raise _ConnectionError(f.COMPRESSION_ERROR, f"header block: {exc}") from None
        end = bool(flags & f.END_STREAM)
        stream = self._streams.get(stream_id)
        if stream is not None:  # trailers from the client
            if stream.remote_closed:
                raise _StreamError(stream_id, f.STREAM_CLOSED)
            if not end:
                raise _StreamError(stream_id, f.PROTOCOL_ERROR)
            stream.remote_closed = True
            events.append(DataReceived(stream_id, b"", True))
            if stream.local_closed:
                self._drop(stream_id)
            return
        if stream_id % 2 == 0:
            raise _ConnectionError(f.PROTOCOL_ERROR, "client stream ids are odd")
        if stream_id <= self._highest_stream:
            # A stream we already closed or reset: its frames may still be in flight (RFC 9113 5.1).
            self._spend_control()
            return
        self._highest_stream = stream_id
        if self.goaway_sent:
            self._out.append(f.rst_stream_frame(stream_id, f.REFUSED_STREAM))
            return
        if len(self._streams) >= self.limits.max_concurrent_streams:
            self.counters["max_concurrent_streams"] += 1
            self._out.append(f.rst_stream_frame(stream_id, f.REFUSED_STREAM))
            return
        if not well_formed:
            self._out.append(f.rst_stream_frame(stream_id, f.PROTOCOL_ERROR))
            return
        # Each call earns its peer a few control frames (window updates, pings, settings): a busy,
        # well-behaved client never runs out, an idle flood does.
        self._control.credit(self.limits.control_frames_per_stream)
        stream = Stream(stream_id, self._peer_initial_window, self.limits.stream_window_bytes)
        stream.remote_closed = end
        self._streams[stream_id] = stream
        events.append(RequestReceived(stream_id, headers, end))

    def _on_rst_stream(self, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if len(payload) != 4:
            raise _ConnectionError(f.FRAME_SIZE_ERROR, "RST_STREAM must be 4 bytes")
        if stream_id == 0 or stream_id > self._highest_stream:
            raise _ConnectionError(f.PROTOCOL_ERROR, "RST_STREAM on an idle stream")
        if not self._resets.take():
            self.counters["resets_burst"] += 1
            raise _ConnectionError(f.ENHANCE_YOUR_CALM, "too many stream resets")
        if self._drop(stream_id):
            events.append(StreamReset(stream_id, f.UINT32.unpack(payload)[0], True))

    def _on_window_update(self, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if len(payload) != 4:
            raise _ConnectionError(f.FRAME_SIZE_ERROR, "WINDOW_UPDATE must be 4 bytes")
        self._spend_control()
        increment = f.UINT32.unpack(payload)[0] & f.MAX_WINDOW
        if stream_id == 0:
            if increment == 0:
                raise _ConnectionError(f.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self._send_window += increment
            if self._send_window > f.MAX_WINDOW:
                raise _ConnectionError(f.FLOW_CONTROL_ERROR, "connection window above 2^31-1")
            self._flush_blocked()
            events.append(WindowOpened())
            return
        if stream_id > self._highest_stream:
            raise _ConnectionError(f.PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        if increment == 0:
            raise _StreamError(stream_id, f.PROTOCOL_ERROR)
        stream.send_window += increment
        if stream.send_window > f.MAX_WINDOW:
            raise _StreamError(stream_id, f.FLOW_CONTROL_ERROR)
        if stream.pending:
            self._flush_stream(stream)
            events.append(WindowOpened())

    def _on_settings(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if stream_id != 0:
            raise _ConnectionError(f.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & f.ACK:
            if payload:
                raise _ConnectionError(f.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise _ConnectionError(f.FRAME_SIZE_ERROR, "SETTINGS length not a multiple of 6")
        if self._settings_seen:
            self._spend_control()
        self._settings_seen = True
        opened = False
        for offset in range(0, len(payload), 6):
            key, value = f.SETTING.unpack_from(payload, offset)
            if key == f.SETTINGS_INITIAL_WINDOW_SIZE:
                if value > f.MAX_WINDOW:
                    raise _ConnectionError(f.FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE above 2^31-1")
                delta = value - self._peer_initial_window
                self._peer_initial_window = value
                for stream in self._streams.values():
                    stream.send_window += delta
                    if stream.send_window > f.MAX_WINDOW:
                        raise _ConnectionError(f.FLOW_CONTROL_ERROR, "stream window above 2^31-1")
                opened = opened or delta > 0
            elif key == f.SETTINGS_MAX_FRAME_SIZE:
                if not f.DEFAULT_MAX_FRAME <= value <= f.MAX_FRAME_LIMIT:
                    raise _ConnectionError(f.PROTOCOL_ERROR, "MAX_FRAME_SIZE out of range")
                self._peer_max_frame = value
            elif key == f.SETTINGS_ENABLE_PUSH and value > 1:
                raise _ConnectionError(f.PROTOCOL_ERROR, "ENABLE_PUSH must be 0 or 1")
        self._out.append(f.settings_frame(ack=True))
        if opened:
            self._flush_blocked()
            events.append(WindowOpened())

    def _on_ping(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise _ConnectionError(f.PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise _ConnectionError(f.FRAME_SIZE_ERROR, "PING must be 8 bytes")
        if flags & f.ACK:
            self._spend_control()
            return
        now = time.monotonic()
        if now - self._last_ping < self.limits.min_ping_interval_s:
            self._ping_strikes += 1
            if self._ping_strikes > self.limits.max_ping_strikes:
                self.counters["max_ping_strikes"] += 1
                raise _ConnectionError(f.ENHANCE_YOUR_CALM, "too_many_pings")
        self._last_ping = now
        self._out.append(f.ping_frame(payload, ack=True))

    # -- flow control of what we receive ---------------------------------------------------------
    def acknowledge(self, stream_id: int, size: int) -> None:
        """The receiver has taken `size` bytes of the stream's DATA: let the peer send more."""
        self._ack_connection(size)
        stream = self._streams.get(stream_id)
        if stream is None or stream.remote_closed:
            return
        stream.unacked += size
        if stream.unacked >= self.limits.stream_window_bytes // 4:
            self._out.append(f.window_update_frame(stream_id, stream.unacked))
            stream.recv_window += stream.unacked
            stream.unacked = 0

    def _ack_connection(self, size: int) -> None:
        self._conn_unacked += size
        if self._conn_unacked >= self.limits.connection_window_bytes // 4:
            self._out.append(f.window_update_frame(0, self._conn_unacked))
            self._recv_window += self._conn_unacked
            self._conn_unacked = 0

    # -- sending ------------------------------------------------------------------------------------
    def send_headers(self, stream_id: int, block: bytes, end_stream: bool = False) -> None:
        """A header block (response headers, or trailers with `end_stream`), after any DATA held."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_closed:
            return
        stream.queue(True, block, end_stream)
        self._flush_stream(stream)

    def send_data(self, stream_id: int, data: bytes | memoryview, end_stream: bool = False) -> None:
        """DATA frames for `data`, as far as the windows allow; the rest is held until they open."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_closed:
            return
        stream.queue(False, data, end_stream)
        self.buffered_send_bytes += len(data)
        self._flush_stream(stream)

    def send_response(self, stream_id: int, headers: bytes, data: bytes, trailers: bytes) -> None:
        """A whole answer: headers, one DATA frame's worth of body, trailers. When nothing is held and
        the windows allow, the six pieces go straight out (the common small unary answer)."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_closed:
            return
        size, max_frame = len(data), self._peer_max_frame
        if (stream.pending or size > self._send_window or size > stream.send_window or size > max_frame
                or len(headers) > max_frame or len(trailers) > max_frame):
            self.send_headers(stream_id, headers)
            self.send_data(stream_id, data)
            self.send_headers(stream_id, trailers, end_stream=True)
            return
        self._send_window -= size
        stream.send_window -= size
        self._out += (f.frame_header(len(headers), f.HEADERS, f.END_HEADERS, stream_id), headers,
                      f.frame_header(size, f.DATA, 0, stream_id), data,
                      f.frame_header(len(trailers), f.HEADERS, f.END_HEADERS | f.END_STREAM, stream_id), trailers)
        self._ping_strikes = 0
        self._control.credit(6)
        self._close_local(stream)

    def _flush_stream(self, stream: Stream) -> None:
        sent, written, ended = stream.flush(self._out, max(0, self._send_window), self._peer_max_frame)
        self._send_window -= sent
        self.buffered_send_bytes -= sent
        if written:
            self._ping_strikes = 0
            # The peer may answer each frame we send with two WINDOW_UPDATEs (stream and connection).
            self._control.credit(2 * written)
        if ended:
            self._close_local(stream)
        elif stream.pending:
            self._blocked[stream.stream_id] = None
        else:
            self._blocked.pop(stream.stream_id, None)

    def _flush_blocked(self) -> None:
        for stream_id in list(self._blocked):
            if self._send_window <= 0:
                return
            stream = self._streams.get(stream_id)
            if stream is None:
                self._blocked.pop(stream_id, None)
            else:
                self._flush_stream(stream)

    def _close_local(self, stream: Stream) -> None:
        stream.local_closed = True
        if not stream.remote_closed:
            # The call is over while the client still sends: tell it to stop (gRPC over HTTP/2).
            self._out.append(f.rst_stream_frame(stream.stream_id, f.NO_ERROR))
        self._drop(stream.stream_id)

    def reset_stream(self, stream_id: int, code: int) -> None:
        """RST_STREAM: the stream ends now, and what it still had to send is dropped."""
        if self._drop(stream_id):
            self._out.append(f.rst_stream_frame(stream_id, code))

    def _drop(self, stream_id: int) -> bool:
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return False
        self.buffered_send_bytes -= stream.pending_bytes
        self._blocked.pop(stream_id, None)
        return True

    def start_drain(self) -> None:
        """GOAWAY NO_ERROR naming the last stream we take; streams above it are refused."""
        if not self.goaway_sent and not self.closed:
            self.goaway_sent = True
            self._out.append(f.goaway_frame(self._highest_stream, f.NO_ERROR))

    def close(self, code: int, reason: str = "") -> None:
        """A connection error (or a deliberate close): GOAWAY, and nothing more is read."""
        if self.closed:
            return
        self.closed = True
        self.goaway_sent = True
        self._out.append(f.goaway_frame(self._highest_stream, code, reason.encode()[:256]))
