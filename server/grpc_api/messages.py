"""gRPC over HTTP/2, above the frames: length-prefixed messages, compression, deadlines, status trailers.

Pure functions and one small reader; see grpc's doc/PROTOCOL-HTTP2.md for the wire rules.
"""

from __future__ import annotations

import base64
import functools
import zlib
from typing import NamedTuple

import grpc
import hpack

__all__ = [
    "ACCEPT_ENCODING", "OK_TRAILERS", "RESPONSE_HEADERS", "MessageReader", "MessageTooLarge", "RequestHead",
    "decompress", "encode_headers", "encode_metadata", "error_headers", "parse_timeout", "percent_encode",
    "prefixed", "request_head",
]

ACCEPT_ENCODING = b"identity,deflate,gzip"
SUPPORTED_ENCODINGS = frozenset((b"identity", b"gzip", b"deflate"))

# Literals never indexed leave both HPACK tables alone, so one encoder makes blocks that are valid
# on every connection at any time: the usual answer is prebuilt once.
_encoder = hpack.Encoder()


def encode_headers(headers: list[tuple[bytes, bytes]]) -> bytes:
    return bytes(_encoder.encode([hpack.NeverIndexedHeaderTuple(k, v) for k, v in headers], huffman=False))


def encode_metadata(metadata: list[tuple[bytes, bytes]]) -> bytes:
    """Metadata as never-indexed literals with their names spelled out (RFC 7541 6.2.3), the form
    `encode_headers` gives a name outside the static table, without the encoder's per-field work (~6 us
    a block): a traced call's trailers carry a fresh `traceparent` every time."""
    return b"".join(b"\x10%b%b%b%b" % (_length(len(name)), name, _length(len(value)), value)
                    for name, value in metadata)


def _length(n: int) -> bytes:
    return bytes((n,)) if n < 127 else bytes(hpack.hpack.encode_integer(n, 7))


RESPONSE_HEADERS = encode_headers([(b":status", b"200"), (b"content-type", b"application/grpc"),
                                   (b"grpc-accept-encoding", ACCEPT_ENCODING)])
OK_TRAILERS = encode_headers([(b"grpc-status", b"0")])
_TIMEOUT_UNITS = {ord("H"): 3600.0, ord("M"): 60.0, ord("S"): 1.0, ord("m"): 1e-3, ord("u"): 1e-6, ord("n"): 1e-9}


# Headers that are the transport's, not the application's metadata.
_RESERVED = frozenset((b"content-type", b"te", b"grpc-timeout", b"grpc-encoding", b"grpc-accept-encoding"))


class RequestHead(NamedTuple):
    """What a request's headers say to gRPC; `metadata` as grpc gives it (str values, bytes for -bin)."""

    method: bytes
    path: bytes
    content_type: bytes
    timeout_s: float | None
    encoding: bytes
    metadata: tuple[tuple[str, str | bytes], ...]


def request_head(headers: list[tuple[bytes, bytes]]) -> RequestHead:
    path = method = content_type = b""
    encoding = b"identity"
    timeout: float | None = None
    metadata: list[tuple[str, str | bytes]] = []
    for name, value in headers:
        if name[:1] == b":":
            if name == b":path":
                path = value
            elif name == b":method":
                method = value
        elif name == b"content-type":
            content_type = value
        elif name == b"grpc-timeout":
            timeout = parse_timeout(value)
        elif name == b"grpc-encoding":
            encoding = value
        elif name not in _RESERVED:
            key = name.decode("latin-1")
            if key.endswith("-bin"):
                metadata.append((key, base64.b64decode(value + b"=" * (-len(value) % 4))))
            else:
                metadata.append((key, value.decode("latin-1")))
    return RequestHead(method, path, content_type, timeout, encoding, tuple(metadata))


class MessageTooLarge(Exception):
    """A message (declared or decompressed) is over the size limit: RESOURCE_EXHAUSTED."""


def prefixed(body: bytes) -> bytes:
    """`body` as one uncompressed gRPC message: flag byte, 4-byte big-endian length, bytes."""
    return b"\x00" + len(body).to_bytes(4, "big") + body


def parse_timeout(value: bytes) -> float | None:
    """grpc-timeout ('100m', '5S', at most 8 digits and a unit) in seconds; None when malformed."""
    if not 2 <= len(value) <= 9 or not value[:-1].isdigit():
        return None
    unit = _TIMEOUT_UNITS.get(value[-1])
    return None if unit is None else int(value[:-1]) * unit


def percent_encode(message: str) -> bytes:
    """grpc-message: UTF-8, with '%' and bytes outside printable ASCII percent-encoded."""
    return b"".join(bytes((b,)) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b
                    for b in message.encode("utf-8"))


def error_headers(code: grpc.StatusCode, message: str, trailers_only: bool,
                  metadata: list[tuple[bytes, bytes]] | None = None) -> bytes:
    """Trailers for a status (with the response headers when nothing was sent: trailers-only)."""
    if message:
        fields = [(b":status", b"200"), (b"content-type", b"application/grpc")] if trailers_only else []
        fields += [(b"grpc-status", str(code.value[0]).encode()), (b"grpc-message", percent_encode(message))]
        block = encode_headers(fields)
    else:
        block = _status_block(code, trailers_only)
    return block + encode_metadata(metadata) if metadata else block


@functools.cache
def _status_block(code: grpc.StatusCode, trailers_only: bool) -> bytes:
    fields = [(b":status", b"200"), (b"content-type", b"application/grpc")] if trailers_only else []
    return encode_headers([*fields, (b"grpc-status", str(code.value[0]).encode())])


def decompress(data: bytes, encoding: bytes, limit: int) -> bytes:
    """A compressed message inflated, at most `limit` bytes (MessageTooLarge beyond: no zip bombs).

    Raises ValueError for an encoding we do not know or data that does not inflate.
    """
    if encoding == b"gzip":
        inflater = zlib.decompressobj(wbits=31)
    elif encoding == b"deflate":
        inflater = zlib.decompressobj(wbits=15)
    else:
        raise ValueError(f"compressed message with grpc-encoding {encoding.decode('latin-1')!r}")
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise ValueError(f"message does not inflate: {exc}") from None
    if len(out) > limit:
        raise MessageTooLarge(f"decompressed message larger than {limit} bytes")
    return out


class MessageReader:
    """Splits a stream's DATA into gRPC messages: (compressed, body) pairs. Runs on the event loop."""

    __slots__ = ("_buffer", "_limit")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._buffer = bytearray()

    @property
    def partial(self) -> bool:
        return bool(self._buffer)

    def feed(self, data: bytes) -> list[tuple[bool, bytes]]:
        """Raises MessageTooLarge as soon as a prefix declares more than the limit (before buffering it),
        ValueError for a flag byte other than 0 or 1."""
        if not self._buffer and len(data) >= 5 and data[0] == 0 and int.from_bytes(data[1:5], "big") == len(data) - 5:
            if len(data) - 5 > self._limit:
                raise MessageTooLarge(f"message of {len(data) - 5} bytes exceeds the limit of {self._limit}")
            return [(False, data[5:])]  # the usual case: one whole message in one DATA frame
        buffer = self._buffer
        buffer += data
        out: list[tuple[bool, bytes]] = []
        position = 0
        while len(buffer) - position >= 5:
            length = int.from_bytes(buffer[position + 1:position + 5], "big")
            if length > self._limit:
                raise MessageTooLarge(f"message of {length} bytes exceeds the limit of {self._limit}")
            if buffer[position] > 1:
                raise ValueError(f"invalid compressed flag {buffer[position]}")
            if len(buffer) - position - 5 < length:
                break
            out.append((buffer[position] == 1, bytes(buffer[position + 5:position + 5 + length])))
            position += 5 + length
        del buffer[:position]
        return out
