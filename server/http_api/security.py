"""HTTP's side of security: the caller's Credentials from a request, the TLS peer certificate in the
ASGI scope, the JSON-only rule for admin POSTs, and CORS when origins are configured."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence

from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..auth import Credentials
from ..tls import peer_identities

__all__ = ["TlsPeerProtocol", "cors_middleware", "credentials_from_request", "require_json"]

TLS_EXTENSION = "tls"
IDENTITIES_KEY = "tessera_client_identities"


def credentials_from_request(request: Request) -> Credentials:
    """Bearer token from `Authorization`, client-certificate identities from the scope's `tls`
    extension (set by TlsPeerProtocol after the TLS layer verified the certificate), and the peer."""
    header = request.headers.get("authorization")
    token = None
    if header is not None:
        scheme, _, rest = header.strip().partition(" ")
        token = rest.strip() if scheme.lower() == "bearer" else ""  # another scheme is a wrong token
    tls = request.scope.get("extensions", {}).get(TLS_EXTENSION) or {}
    client = request.scope.get("client")
    peer = f"{client[0]}:{client[1]}" if client else ""
    return Credentials(token=token, cert_identities=tuple(tls.get(IDENTITIES_KEY, ())), peer=peer)


def require_json(request: Request) -> None:
    """Refuse (415) a POST that a browser could send cross-site without asking first (a "simple"
    request: text/plain, form encodings, or no Content-Type). Admin routes call this first.

    A request with an `Authorization` header is never a simple request (a browser asks the server
    first, and CORS is off unless configured), so it passes whatever its Content-Type: that keeps
    clients that send none, like tritonclient's load_model, working once tokens are in use."""
    if "authorization" in request.headers:
        return
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise HTTPException(415, "admin requests need 'Content-Type: application/json'")


def cors_middleware(origins: Sequence[str]) -> list[Middleware]:
    """Starlette's CORS middleware for `origins`; no middleware (CORS off) when there are none."""
    if not origins:
        return []
    return [Middleware(CORSMiddleware, allow_origins=list(origins), allow_methods=["GET", "POST"],
                       allow_headers=["authorization", "content-type", "inference-header-content-length",
                                      "tessera-routing-key"])]


class TlsPeerProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, plus the ASGI `tls` extension in each request's scope: the
    verified client certificate (PEM) and its identities (CN, then SANs). uvicorn leaves it out."""

    _tls: dict[object, object] = {}

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        self._tls = {  # per connection: every request on it shares the one handshake
            "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
            "client_cert_error": None,
            IDENTITIES_KEY: peer_identities(transport.get_extra_info("peercert")),
        }

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = {TLS_EXTENSION: self._tls}
