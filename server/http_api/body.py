"""Reading a request body under the size limit, decompressing gzip/deflate bodies as tritonclient sends them.

The limit applies to the bytes on the wire and again to the decompressed bytes, so a small
compressed body cannot expand past it.
"""

from __future__ import annotations

import zlib

from starlette.requests import Request

from ..errors import InvalidInput, PayloadTooLarge, Unsupported

__all__ = ["read_body"]

# wbits for zlib.decompressobj: gzip framing, and zlib framing (what HTTP calls "deflate").
_DECODERS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS, "identity": 0}


async def read_body(request: Request, limit_bytes: int) -> bytes:
    """The whole body, rejected with PayloadTooLarge as soon as it is known to exceed `limit_bytes`.

    A Content-Length over the limit is refused before any of the body is read.
    Raises Unsupported for a Content-Encoding other than gzip, deflate or identity.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit_bytes:
        raise PayloadTooLarge(f"request body of {declared} bytes is over the limit of {limit_bytes} bytes")
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in _DECODERS:
        raise Unsupported(f"Content-Encoding '{encoding}' is not supported; use gzip or deflate")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit_bytes:
            raise PayloadTooLarge(f"request body is over the limit of {limit_bytes} bytes")
        chunks.append(chunk)
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    return body if encoding == "identity" else _decompress(body, _DECODERS[encoding], limit_bytes)


def _decompress(body: bytes, wbits: int, limit_bytes: int) -> bytes:
    decoder = zlib.decompressobj(wbits)
    try:
        data = decoder.decompress(body, limit_bytes + 1)
    except zlib.error as exc:
        raise InvalidInput(f"request body could not be decompressed: {exc}") from None
    if len(data) > limit_bytes:
        raise PayloadTooLarge(f"decompressed request body is over the limit of {limit_bytes} bytes")
    return data
