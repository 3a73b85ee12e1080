"""HTTP/2 frame layout (RFC 9113 section 4-6): constants, frame builders and a pure frame splitter.

No I/O here; the server's connection state machine and the load harness's client both use it.
"""

from __future__ import annotations

import struct

__all__ = [
    "ACK", "CANCEL", "COMPRESSION_ERROR", "CONTINUATION", "DATA", "DEFAULT_MAX_FRAME", "DEFAULT_WINDOW",
    "END_HEADERS", "END_STREAM", "ENHANCE_YOUR_CALM", "FLOW_CONTROL_ERROR", "FRAME_SIZE_ERROR", "GOAWAY",
    "HEADERS", "INTERNAL_ERROR", "MAX_FRAME_LIMIT", "MAX_WINDOW", "NO_ERROR", "PADDED", "PING", "PREFACE",
    "PRIORITY", "PRIORITY_FLAG", "PROTOCOL_ERROR", "PUSH_PROMISE", "REFUSED_STREAM", "RST_STREAM", "SETTING",
    "SETTINGS", "SETTINGS_ENABLE_PUSH", "SETTINGS_HEADER_TABLE_SIZE", "SETTINGS_INITIAL_WINDOW_SIZE",
    "SETTINGS_MAX_CONCURRENT_STREAMS", "SETTINGS_MAX_FRAME_SIZE", "SETTINGS_MAX_HEADER_LIST_SIZE",
    "STREAM_CLOSED", "UINT32", "WINDOW_UPDATE", "Frame", "frame_header", "goaway_frame",
    "ping_frame", "rst_stream_frame", "settings_frame", "split_frames", "window_update_frame",
]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types.
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
# Flags.
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
# Settings identifiers.
SETTINGS_HEADER_TABLE_SIZE = 0x1
SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6
# Error codes.
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB

MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65_535
DEFAULT_MAX_FRAME = 16_384
MAX_FRAME_LIMIT = 2**24 - 1

SETTING = struct.Struct(">HI")
UINT32 = struct.Struct(">I")
_HEADER = struct.Struct(">BBBBBI")  # 24-bit length as three bytes, type, flags, stream id

Frame = tuple[int, int, int, bytes]
"""(type, flags, stream id, payload)."""


def frame_header(length: int, kind: int, flags: int, stream_id: int) -> bytes:
    return _HEADER.pack(length >> 16, (length >> 8) & 0xFF, length & 0xFF, kind, flags, stream_id)


def settings_frame(pairs: list[tuple[int, int]] | None = None, ack: bool = False) -> bytes:
    payload = b"".join(SETTING.pack(key, value) for key, value in pairs or ())
    return frame_header(len(payload), SETTINGS, ACK if ack else 0, 0) + payload


def window_update_frame(stream_id: int, increment: int) -> bytes:
    return frame_header(4, WINDOW_UPDATE, 0, stream_id) + UINT32.pack(increment)


def rst_stream_frame(stream_id: int, code: int) -> bytes:
    return frame_header(4, RST_STREAM, 0, stream_id) + UINT32.pack(code)


def ping_frame(payload: bytes, ack: bool = False) -> bytes:
    return frame_header(8, PING, ACK if ack else 0, 0) + payload


def goaway_frame(last_stream_id: int, code: int, debug: bytes = b"") -> bytes:
    return frame_header(8 + len(debug), GOAWAY, 0, 0) + UINT32.pack(last_stream_id) + UINT32.pack(code) + debug


def split_frames(buffer: bytes | bytearray, max_length: int) -> tuple[list[Frame], int, bool]:
    """The complete frames at the start of `buffer`, how many bytes they take, and whether the next
    frame header declares more than `max_length` payload bytes (a FRAME_SIZE_ERROR, seen before that
    payload is buffered).
    """
    frames: list[Frame] = []
    position, size = 0, len(buffer)
    unpack = _HEADER.unpack_from
    while size - position >= 9:
        l0, l1, l2, kind, flags, stream_id = unpack(buffer, position)
        length = (l0 << 16) | (l1 << 8) | l2
        if length > max_length:
            return frames, position, True
        end = position + 9 + length
        if end > size:
            break
        frames.append((kind, flags, stream_id & MAX_WINDOW, bytes(buffer[position + 9:end])))
        position = end
    return frames, position, False
