"""Header block decoding: the cache never outlives the dynamic table state it was decoded against."""

from __future__ import annotations

import hpack
import pytest

from server.grpc_api.h2.headers import HeaderDecoder, well_formed_request


def test_a_cached_block_follows_the_dynamic_table() -> None:
    decoder = HeaderDecoder(1 << 16, 4096)
    encoder = hpack.Encoder()
    decoder.decode(encoder.encode([("x-a", "1")]))  # inserted at index 62
    newest = bytes([0x80 | 62])
    assert decoder.decode(newest) == ([(b"x-a", b"1")], False)
    assert decoder.decode(newest) == ([(b"x-a", b"1")], False)  # from the cache
    decoder.decode(encoder.encode([("x-b", "2")]))  # index 62 now names the new entry
    assert decoder.decode(newest) == ([(b"x-b", b"2")], False)
    decoder.decode(b"\x20")  # table size update to 0: every entry evicted
    with pytest.raises(hpack.HPACKError):
        decoder.decode(newest)


@pytest.mark.parametrize(("headers", "ok"), [
    ([(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/a/b"), (b"te", b"trailers")], True),
    ([(b":method", b"POST"), (b":path", b"/a/b")], False),
    ([(b":method", b"POST"), (b":scheme", b"http"), (b"x", b"1"), (b":path", b"/a/b")], False),
    ([(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/a/b"), (b"X-Upper", b"1")], False),
    ([(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/a/b"), (b"connection", b"close")], False),
    ([(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/a/b"), (b":status", b"200")], False),
])
def test_request_header_rules(headers: list[tuple[bytes, bytes]], ok: bool) -> None:
    assert well_formed_request(headers) is ok
