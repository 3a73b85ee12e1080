"""gRPC message framing, deadlines, status encoding and decompression limits."""

from __future__ import annotations

import gzip
import zlib

import grpc
import hpack
import pytest

from server.grpc_api.messages import (
    MessageReader,
    MessageTooLarge,
    decompress,
    error_headers,
    parse_timeout,
    percent_encode,
)


@pytest.mark.parametrize(("value", "seconds"), [
    (b"100m", 0.1), (b"5S", 5.0), (b"1H", 3600.0), (b"2M", 120.0), (b"250u", 250e-6), (b"99999999n", 0.099999999),
    (b"", None), (b"m", None), (b"123456789S", None), (b"1x", None), (b"-1S", None),
])
def test_grpc_timeout_values(value: bytes, seconds: float | None) -> None:
    assert parse_timeout(value) == (pytest.approx(seconds) if seconds is not None else None)


def test_grpc_message_is_percent_encoded() -> None:
    assert percent_encode("bad (100%, é)\n") == b"bad (100%25, %C3%A9)%0A"


def test_messages_split_across_reads_and_several_in_one_read() -> None:
    reader = MessageReader(limit=100)
    wire = b"\x00\x00\x00\x00\x03abc" + b"\x00\x00\x00\x00\x00" + b"\x01\x00\x00\x00\x02zz"
    assert reader.feed(wire[:4]) == []
    assert reader.feed(wire[4:7]) == []
    assert reader.feed(wire[7:]) == [(False, b"abc"), (False, b""), (True, b"zz")]
    assert not reader.partial


def test_declared_length_over_the_limit_is_refused_before_it_is_buffered() -> None:
    with pytest.raises(MessageTooLarge):
        MessageReader(limit=100).feed(b"\x00\x10\x00\x00\x00")


def test_gzip_and_deflate_inflate_and_a_zip_bomb_stops_at_the_limit() -> None:
    body = b"tessera" * 1000
    assert decompress(gzip.compress(body), b"gzip", 1 << 20) == body
    assert decompress(zlib.compress(body), b"deflate", 1 << 20) == body
    with pytest.raises(MessageTooLarge):
        decompress(gzip.compress(bytes(100 << 20)), b"gzip", 1 << 20)
    with pytest.raises(ValueError, match="snappy"):
        decompress(body, b"snappy", 1 << 20)


@pytest.mark.parametrize("trailers_only", [True, False])
@pytest.mark.parametrize("message", ["", "bad (100%, é)"])
def test_status_blocks_with_metadata_decode_to_the_fields_in_order(trailers_only: bool, message: str) -> None:
    metadata = [(b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
                (b"x-long", b"v" * 300), (b"x-bin", bytes(range(256)))]  # 300 and 256: multi-byte lengths
    for code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT):
        expected = [(b":status", b"200"), (b"content-type", b"application/grpc")] if trailers_only else []
        expected.append((b"grpc-status", str(code.value[0]).encode()))
        if message:
            expected.append((b"grpc-message", percent_encode(message)))
        block = error_headers(code, message, trailers_only, metadata)
        assert hpack.Decoder().decode(block, raw=True) == expected + metadata
        assert hpack.Decoder().decode(error_headers(code, message, trailers_only), raw=True) == expected
