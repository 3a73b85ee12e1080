"""Every resource an HTTP/2 peer can make the server hold, as a named limit with a default.

Each limit crossed is counted in `LimitCounters` under its field name, so tests and /metrics see it.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

__all__ = ["H2Limits", "LimitCounters", "TokenBucket"]

LimitCounters = Counter[str]
"""Times each limit was crossed, by H2Limits field name (shared by a server's connections)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class H2Limits:
    max_concurrent_streams: int = 1024
    """Streams a peer may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS); more get REFUSED_STREAM."""

    stream_window_bytes: int = 16 << 20
    """Receive window of each stream (SETTINGS_INITIAL_WINDOW_SIZE)."""

    connection_window_bytes: int = 64 << 20
    """Receive window of the connection: the most request bytes a peer can have unacknowledged."""

    max_frame_bytes: int = 1 << 20
    """Largest frame payload accepted (SETTINGS_MAX_FRAME_SIZE); larger ones are FRAME_SIZE_ERROR."""

    max_header_list_bytes: int = 64 << 10
    """Largest decoded header list (SETTINGS_MAX_HEADER_LIST_SIZE); larger ones end the connection."""

    max_header_block_bytes: int = 128 << 10
    """Largest encoded header block across HEADERS + CONTINUATION frames (CONTINUATION flood)."""

    header_table_bytes: int = 4096
    """HPACK dynamic table size the peer's encoder may use (SETTINGS_HEADER_TABLE_SIZE)."""

    control_frames_burst: int = 10_000
    """Frames that carry no request (SETTINGS, PING, WINDOW_UPDATE, PRIORITY, CONTINUATION, empty
    DATA, unknown) a peer may send in a burst; beyond it and `control_frames_per_s`: ENHANCE_YOUR_CALM."""

    control_frames_per_s: float = 1_000.0
    """Rate at which that allowance refills by itself."""

    control_frames_per_stream: int = 16
    """What each new call (and each DATA frame we send) adds back to that allowance."""

    resets_burst: int = 1_000
    """Streams a peer may reset in a burst (rapid reset); beyond it and `resets_per_s`: ENHANCE_YOUR_CALM."""

    resets_per_s: float = 200.0
    """Rate at which that allowance refills."""

    min_ping_interval_s: float = 0.5
    """Pings closer together than this, with no data sent between them, are strikes."""

    max_ping_strikes: int = 2
    """Strikes allowed; one more ends the connection with GOAWAY ENHANCE_YOUR_CALM (grpc's policy)."""

    max_send_buffer_bytes: int = 128 << 20
    """Response bytes held for a connection whose peer's window is closed (or whose socket is full);
    above it the connection stops reading requests until the peer takes some."""

    stream_send_buffer_bytes: int = 4 << 20
    """Response bytes a streaming call may queue before its handler waits for the peer."""

    stream_recv_buffer_bytes: int = 16 << 20
    """Request bytes a streaming call may hold unread before its window stops opening."""

    idle_timeout_s: float = 300.0
    """A connection that sends no frame for this long, while no call is being computed, is closed."""

    handshake_timeout_s: float = 10.0
    """Seconds a new connection has to send the preface and SETTINGS."""


class TokenBucket:
    """A token bucket: `take()` is False once the burst and its refill (by time, and by `credit` for
    useful work) are spent."""

    __slots__ = ("_capacity", "_rate", "_stamp", "_tokens")

    def __init__(self, capacity: int, rate: float) -> None:
        self._capacity = float(capacity)
        self._rate = rate
        self._tokens = float(capacity)
        self._stamp = time.monotonic()

    def credit(self, tokens: float) -> None:
        self._tokens = min(self._capacity, self._tokens + tokens)

    def take(self) -> bool:
        self._tokens -= 1.0
        if self._tokens >= 0:
            return True
        now = time.monotonic()
        self._tokens = min(self._capacity, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        return self._tokens >= 0
