"""Header blocks in: HPACK decoding through the `hpack` library, with a cache, and request checks.

A client sends the same few blocks again and again (gRPC clients index every field, so a repeated
request's block is a handful of index bytes). Decoding one in pure Python cost ~40 us per request
(measured under load, the largest single cost of a small call). A block that leaves the dynamic table
unchanged decodes to the same list as long as the table stays as it is, so such blocks are cached by
their bytes until the next insertion or size change.
"""

from __future__ import annotations

from typing import cast

import hpack
from hpack.table import HeaderTable
from mypy_extensions import mypyc_attr

__all__ = ["HeaderDecoder", "Headers", "well_formed_request"]

Headers = list[tuple[bytes, bytes]]
_CONNECTION_HEADERS = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"))
_REQUEST_PSEUDO = frozenset((b":method", b":scheme", b":path", b":authority"))
_CACHE_ENTRIES = 64


@mypyc_attr(native_class=False)  # a subclass of a library's class: compiled as a native class, it read garbage
class _CountedTable(HeaderTable):
    """hpack's dynamic table, counting insertions (each one moves the indices of the entries)."""

    def __init__(self) -> None:
        super().__init__()
        self.insertions = 0

    def add(self, name: bytes, value: bytes) -> None:
        self.insertions += 1
        super().add(name, value)


class HeaderDecoder:
    """One connection's HPACK decoder. Raises hpack's errors (OversizedHeaderListError, HPACKError)."""

    __slots__ = ("_cache", "_decoder", "_state", "_table")

    def __init__(self, max_header_list_bytes: int, max_table_bytes: int) -> None:
        self._decoder = hpack.Decoder(max_header_list_size=max_header_list_bytes)
        self._decoder.max_allowed_table_size = max_table_bytes
        self._table = _CountedTable()
        self._decoder.header_table = self._table
        self._cache: dict[bytes, tuple[Headers, bool]] = {}
        self._state = self._table_state()

    def _table_state(self) -> tuple[int, int, int]:
        table = self._table
        return table.insertions, len(table.dynamic_entries), table.maxsize

    def decode(self, block: bytes) -> tuple[Headers, bool]:
        """The block's fields, and whether they make a well-formed request (`well_formed_request`)."""
        state = self._table_state()
        if state != self._state:
            self._cache.clear()
            self._state = state
        cached = self._cache.get(block)
        if cached is not None:
            return cached
        headers = cast(Headers, self._decoder.decode(block, raw=True))
        decoded = headers, well_formed_request(headers)
        if self._table_state() == state and len(self._cache) < _CACHE_ENTRIES:
            self._cache[block] = decoded
        return decoded


def well_formed_request(headers: Headers) -> bool:
    """RFC 9113 8.2-8.3 for a request: known pseudo-headers first, lowercase names, no connection headers."""
    regular = False
    seen: set[bytes] = set()
    for name, value in headers:
        if name[:1] == b":":
            if regular or name not in _REQUEST_PSEUDO or name in seen:
                return False
            seen.add(name)
        else:
            regular = True
            if name.lower() != name or name in _CONNECTION_HEADERS or (name == b"te" and value != b"trailers"):
                return False
    return b":method" in seen and b":path" in seen and b":scheme" in seen
