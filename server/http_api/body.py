"""Reading a request body under the size limit, decompressing gzip/deflate bodies as tritonclient sends them.

The limit applies to the bytes on the wire and again to the decompressed bytes, so a small
compressed body cannot expand past it.
"""

from __future__ import annotations

import logging
import zlib

from starlette.requests import ClientDisconnect, Request

from ..admission import BodyHold
from ..errors import InvalidInput, PayloadTooLarge, Unsupported

__all__ = ["read_body", "read_body_buffer"]

logger = logging.getLogger(__name__)

# wbits for zlib.decompressobj: gzip framing, and zlib framing (what HTTP calls "deflate").
_DECODERS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS, "identity": 0}


async def read_body(request: Request, limit_bytes: int) -> bytes:
    """`read_body_buffer` as bytes, for the small documents of the other routes."""
    return bytes(await read_body_buffer(request, limit_bytes))


async def read_body_buffer(request: Request, limit_bytes: int, hold: BodyHold | None = None
                           ) -> bytes | bytearray:
    """The whole body in one buffer (grown in place, never joined), rejected with PayloadTooLarge as
    soon as it is known to exceed `limit_bytes`.

    A Content-Length over the limit is refused before any of the body is read. With a `hold`, the
    body's bytes (the declared length up front, else each chunk as it arrives, and the decompressed
    bytes) are held against the process-wide budget, which raises Overloaded when it is spent.
    Raises Unsupported for a Content-Encoding other than gzip, deflate or identity, and InvalidInput
    when the client disconnects first (nobody reads that answer; one debug line is logged).
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit_bytes:
        raise PayloadTooLarge(f"request body of {declared} bytes is over the limit of {limit_bytes} bytes")
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in _DECODERS:
        raise Unsupported(f"Content-Encoding '{encoding}' is not supported; use gzip or deflate")
    if hold is not None and declared.isdigit():
        hold.grow(int(declared))
    body = bytearray()  # grown in place (not pre-zeroed: touching 60 MB of pages stalls the loop)
    try:
        async for chunk in request.stream():
            if len(body) + len(chunk) > limit_bytes:
                raise PayloadTooLarge(f"request body is over the limit of {limit_bytes} bytes")
            if hold is not None and len(body) + len(chunk) > hold.held:
                hold.grow(len(body) + len(chunk) - hold.held)
            body += chunk
    except ClientDisconnect:
        client = request.client
        logger.debug("client %s disconnected after %d bytes of its request body",
                     f"{client.host}:{client.port}" if client else "?", len(body))
        raise InvalidInput("client disconnected before its request body arrived") from None
    if encoding == "identity":
        return body
    data = _decompress(body, _DECODERS[encoding], limit_bytes)
    if hold is not None:
        hold.grow(len(data))
    return data


def _decompress(body: bytearray, wbits: int, limit_bytes: int) -> bytes:
    decoder = zlib.decompressobj(wbits)
    try:
        data = decoder.decompress(body, limit_bytes + 1)
    except zlib.error as exc:
        raise InvalidInput(f"request body could not be decompressed: {exc}") from None
    if len(data) > limit_bytes:
        raise PayloadTooLarge(f"decompressed request body is over the limit of {limit_bytes} bytes")
    return data
