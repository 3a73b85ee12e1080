"""Writing protobuf's wire format directly: varints and length-delimited fields.

For the messages Tessera writes on hot paths without building protobuf objects: gRPC answers
(grpc_codec.infer_response_bytes, the ModelStreamInfer wrapper) and OTLP spans (otlp_spans).
"""

from __future__ import annotations

__all__ = ["append_varint", "length_field", "varint"]


def append_varint(out: bytearray, value: int) -> None:
    """Appends a non-negative `value` as a varint (an int64 that may be negative: mask it to 64 bits first)."""
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def varint(value: int) -> bytes:
    out = bytearray()
    append_varint(out, value)
    return bytes(out)


def length_field(tag: int, data: bytes) -> bytes:
    """A length-delimited field (`tag` = field number << 3 | 2)."""
    out = bytearray((tag,))
    append_varint(out, len(data))
    out += data
    return bytes(out)
