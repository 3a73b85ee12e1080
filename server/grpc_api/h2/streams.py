"""One HTTP/2 stream's state and its send queue: frames leave in order, DATA as far as windows allow.

Pure: `flush` appends frame bytes to a list and reports what it sent; the connection owns the
connection-level window and what happens when a stream ends.
"""

from __future__ import annotations

from collections import deque

from . import frames as f

__all__ = ["Stream", "header_frames"]


def header_frames(out: list[bytes | memoryview], stream_id: int, block: bytes | memoryview, end_stream: bool,
                  max_frame: int) -> None:
    """A header block as HEADERS (+ CONTINUATION frames when it is longer than `max_frame`)."""
    flags = f.END_STREAM if end_stream else 0
    if len(block) <= max_frame:
        out.append(f.frame_header(len(block), f.HEADERS, flags | f.END_HEADERS, stream_id))
        out.append(block)
        return
    view = memoryview(block)
    kind = f.HEADERS
    while view:
        chunk, view = view[:max_frame], view[max_frame:]
        out.append(f.frame_header(len(chunk), kind, flags | (f.END_HEADERS if not view else 0), stream_id))
        out.append(chunk)
        kind, flags = f.CONTINUATION, 0


class Stream:
    """Windows both ways, which sides have ended, and the frames waiting for the peer's window."""

    __slots__ = ("local_closed", "pending", "pending_bytes", "recv_window", "remote_closed", "send_window",
                 "stream_id", "unacked")

    def __init__(self, stream_id: int, send_window: int, recv_window: int) -> None:
        self.stream_id = stream_id
        self.send_window = send_window
        self.recv_window = recv_window
        self.unacked = 0  # received bytes taken by the receiver and not yet given back in WINDOW_UPDATE
        self.remote_closed = False
        self.local_closed = False
        # Frames waiting for window: (is_headers, payload, end_stream); headers wait behind data.
        self.pending: deque[tuple[bool, memoryview, bool]] = deque()
        self.pending_bytes = 0

    def queue(self, is_headers: bool, payload: bytes | memoryview, end_stream: bool) -> None:
        self.pending.append((is_headers, memoryview(payload), end_stream))
        if not is_headers:
            self.pending_bytes += len(payload)

    def flush(self, out: list[bytes | memoryview], connection_window: int, max_frame: int) -> tuple[int, int, bool]:
        """Frames for what the windows allow: (DATA bytes sent, frames written, whether END_STREAM went)."""
        pending = self.pending
        sent = written = 0
        while pending:
            is_headers, payload, end_stream = pending[0]
            if is_headers:
                pending.popleft()
                header_frames(out, self.stream_id, payload, end_stream, max_frame)
                written += 1
                if end_stream:
                    return sent, written, True
                continue
            size = min(len(payload), connection_window - sent, self.send_window, max_frame)
            if size <= 0 and payload:
                break
            rest = payload[size:]
            self.send_window -= size
            self.pending_bytes -= size
            sent += size
            written += 1
            out.append(f.frame_header(size, f.DATA, f.END_STREAM if end_stream and not rest else 0, self.stream_id))
            out.append(payload[:size])
            if rest:
                pending[0] = (False, rest, end_stream)
                continue
            pending.popleft()
            if end_stream:
                return sent, written, True
        return sent, written, False
