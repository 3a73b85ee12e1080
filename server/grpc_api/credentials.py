"""gRPC's side of security: the caller's Credentials from a servicer context, and server TLS
credentials that pick up rotated certificate files on new handshakes."""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import grpc

from ..auth import Credentials
from ..tls import TlsFiles

__all__ = ["AUTHORIZATION_METADATA", "credentials_from_context", "server_credentials"]

logger = logging.getLogger(__name__)
AUTHORIZATION_METADATA = "authorization"


class CallContext(Protocol):
    """The three methods extraction uses: grpc.aio's ServicerContext has them, and so must any other
    gRPC server's context."""

    def invocation_metadata(self) -> Iterable[tuple[str, str | bytes]] | None: ...
    def peer(self) -> str: ...
    def auth_context(self) -> Mapping[str, Iterable[bytes]]: ...


def credentials_from_context(context: CallContext) -> Credentials:
    """Bearer token from `authorization` metadata, client-certificate identities (CN, then SANs) from
    the auth context (present only when the TLS layer verified the certificate), and the peer."""
    token = None
    for key, value in context.invocation_metadata() or ():
        if key == AUTHORIZATION_METADATA:
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            scheme, _, rest = text.strip().partition(" ")
            token = rest.strip() if scheme.lower() == "bearer" else ""  # another scheme is a wrong token
            break
    auth = context.auth_context()
    identities: tuple[str, ...] = ()
    if auth:  # empty in plaintext: the usual case builds nothing
        names = [*auth.get("x509_common_name", ()), *auth.get("x509_subject_alternative_name", ())]
        identities = tuple(dict.fromkeys(_text(n) for n in names))
    return Credentials(token=token, cert_identities=identities, peer=context.peer() or "")


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class _Fetcher:
    """The certificate-config fetcher grpc calls on each new handshake: rereads the files at most once
    per `interval_s`, and only when they changed (grpc keeps its current config on None)."""

    def __init__(self, files: TlsFiles, interval_s: float) -> None:
        self._files = files
        self._interval_s = interval_s
        self._stamp = files.stamp()
        self._checked = time.monotonic()
        self._lock = threading.Lock()  # grpc may call from its own threads

    def initial(self) -> Any:
        return _configuration(*self._files.read())

    def __call__(self) -> Any:
        with self._lock:
            now = time.monotonic()
            if now - self._checked < self._interval_s:
                return None
            self._checked = now
            try:
                stamp = self._files.stamp()
                if stamp == self._stamp:
                    return None
                config = _configuration(*self._files.read())
            except (OSError, ssl.SSLError, ValueError) as exc:
                logger.warning("gRPC TLS files not reloaded yet (%s); the current certificate stays in use", exc)
                return None
            self._stamp = stamp
            logger.info("gRPC TLS certificate reloaded from %s", self._files.cert)
            return config


def _configuration(cert: bytes, key: bytes, ca: bytes | None) -> Any:
    return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)


def server_credentials(files: TlsFiles, reload_interval_s: float) -> grpc.ServerCredentials:
    """TLS (mTLS when `files.client_ca` is set: a client certificate is required) whose certificate is
    reread from the files, when they changed, for handshakes after the change."""
    fetcher = _Fetcher(files, reload_interval_s)
    return grpc.dynamic_ssl_server_credentials(fetcher.initial(), fetcher,
                                               require_client_authentication=files.mutual)
