"""What the HTTP/2 connection tells its owner, in the order the frames said it."""

from __future__ import annotations

from dataclasses import dataclass

from .headers import Headers

__all__ = [
    "ConnectionTerminated", "DataReceived", "Event", "PeerGoaway", "RequestReceived", "StreamReset", "WindowOpened",
]


# The two events of every request write their own __init__: mypyc compiles it, where the one
# @dataclass generates runs interpreted (server/tensors.py says more).


@dataclass(slots=True)
class RequestReceived:
    stream_id: int
    headers: Headers
    end_stream: bool

    def __init__(self, stream_id: int, headers: Headers, end_stream: bool) -> None:
        self.stream_id = stream_id
        self.headers = headers
        self.end_stream = end_stream


@dataclass(slots=True)
class DataReceived:
    """Request body bytes (padding removed); the receiver calls `acknowledge` when it has taken them."""

    stream_id: int
    data: bytes
    end_stream: bool

    def __init__(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        self.stream_id = stream_id
        self.data = data
        self.end_stream = end_stream


@dataclass(slots=True)
class StreamReset:
    """The stream is gone: the peer reset it, or we did for a stream error (`by_peer` False)."""

    stream_id: int
    code: int
    by_peer: bool


@dataclass(slots=True)
class WindowOpened:
    """The peer opened send windows (WINDOW_UPDATE or SETTINGS): held responses may have moved."""


@dataclass(slots=True)
class PeerGoaway:
    last_stream_id: int
    code: int


@dataclass(slots=True)
class ConnectionTerminated:
    """We sent GOAWAY for a connection error: write what is left, then close."""

    code: int
    reason: str


Event = RequestReceived | DataReceived | StreamReset | WindowOpened | PeerGoaway | ConnectionTerminated
