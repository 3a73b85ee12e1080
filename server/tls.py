"""TLS from three PEM files (certificate chain, key, optional client CA), reloaded when they change.

`TlsFiles` names the files and reads them; `ServerTlsContext` holds one `ssl.SSLContext` (HTTP,
the drift service, any asyncio transport: pass `alpn=("h2",)` for HTTP/2) and loads changed
files into that same context, so new handshakes use the new certificate while open connections
keep theirs. `FileWatcher` calls each registered `refresh()` every few seconds on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .background import spawn

__all__ = [
    "FileWatcher",
    "ServerTlsContext",
    "TlsFiles",
    "auth_context_from_peercert",
    "peer_identities",
    "server_ssl_context",
]

logger = logging.getLogger(__name__)

Stamp = tuple[tuple[int, int, int] | None, ...]


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where the server's certificate chain, its key and (for mTLS) the client CA bundle live."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    @classmethod
    def from_settings(cls, settings: Any) -> TlsFiles | None:
        """From any settings object with tls_cert / tls_key / tls_client_ca; None when TLS is off.

        Raises ValueError when only one of cert and key is given, or a client CA without them.
        """
        cert, key, ca = settings.tls_cert, settings.tls_key, settings.tls_client_ca
        if cert is None and key is None:
            if ca is not None:
                raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
            return None
        if cert is None or key is None:
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        return cls(Path(cert), Path(key), Path(ca) if ca is not None else None)

    @property
    def mutual(self) -> bool:
        """Whether clients must present a certificate signed by `client_ca`."""
        return self.client_ca is not None

    def stamp(self) -> Stamp:
        """(mtime_ns, size, inode) of each file; a changed stamp means a changed (or replaced) file."""
        def one(path: Path | None) -> tuple[int, int, int] | None:
            if path is None:
                return None
            st = os.stat(path)
            return st.st_mtime_ns, st.st_size, st.st_ino

        return one(self.cert), one(self.key), one(self.client_ca)

    def read(self) -> tuple[bytes, bytes, bytes | None]:
        """(certificate chain, key, client CA) as PEM bytes, checked to belong together.

        Raises ssl.SSLError or OSError while the files are half replaced (a key that does not match
        its certificate); callers keep what they have and try again later.
        """
        cert, key = self.cert.read_bytes(), self.key.read_bytes()
        ca = self.client_ca.read_bytes() if self.client_ca is not None else None
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        probe.load_cert_chain(self.cert, self.key)
        if ca is not None:
            probe.load_verify_locations(cadata=ca.decode())
        return cert, key, ca


def server_ssl_context(files: TlsFiles, alpn: Sequence[str] = ()) -> ssl.SSLContext:
    """A server-side SSLContext from `files` (TLS 1.2+, client certificates required under mTLS)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if alpn:
        context.set_alpn_protocols(list(alpn))
    context.load_cert_chain(files.cert, files.key)
    if files.client_ca is not None:
        context.load_verify_locations(cafile=files.client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class ServerTlsContext:
    """One SSLContext kept up to date with its files: `context` never changes identity.

    A new client CA bundle is added to the trusted ones (OpenSSL cannot forget a CA in a live
    context): removing a CA takes a restart.
    """

    def __init__(self, files: TlsFiles, alpn: Sequence[str] = ()) -> None:
        self.files = files
        self._stamp = files.stamp()
        self.context = server_ssl_context(files, alpn)
        self._checked = time.monotonic()

    def refresh(self) -> bool:
        """Load changed files into `context`; True when it changed. Never raises: a bad pair is logged."""
        try:
            stamp = self.files.stamp()
            if stamp == self._stamp:
                return False
            _, _, ca = self.files.read()
            self.context.load_cert_chain(self.files.cert, self.files.key)
            if ca is not None:
                self.context.load_verify_locations(cadata=ca.decode())
        except (OSError, ssl.SSLError, ValueError) as exc:
            logger.warning("TLS files not reloaded yet (%s); the current certificate stays in use", exc)
            return False
        self._stamp = stamp
        logger.info("TLS certificate reloaded from %s", self.files.cert)
        return True

    def refresh_every(self, interval_s: float) -> None:
        """`refresh()` at most once per `interval_s` (for servers that call it on each accept)."""
        now = time.monotonic()
        if now - self._checked >= interval_s:
            self._checked = now
            self.refresh()


def peer_identities(peercert: dict[str, Any] | None) -> tuple[str, ...]:
    """Subject CN, then every SAN value, of a verified peer certificate as `SSLSocket.getpeercert()` gives it."""
    if not peercert:
        return ()
    names = [value for rdn in peercert.get("subject", ()) for key, value in rdn if key == "commonName"]
    names += [value for _, value in peercert.get("subjectAltName", ())]
    return tuple(dict.fromkeys(str(n) for n in names))


def auth_context_from_peercert(peercert: dict[str, Any] | None) -> dict[str, list[bytes]]:
    """The dict grpc's `ServicerContext.auth_context()` returns, from `getpeercert()` (for a gRPC server
    on an asyncio TLS transport: `transport.get_extra_info("peercert")`)."""
    if peercert is None:
        return {"transport_security_type": [b"ssl"]}
    names = [value for rdn in peercert.get("subject", ()) for key, value in rdn if key == "commonName"]
    return {"transport_security_type": [b"ssl"], "x509_common_name": [str(n).encode() for n in names[:1]],
            "x509_subject_alternative_name": [str(v).encode() for _, v in peercert.get("subjectAltName", ())]}


class FileWatcher:
    """Calls each `refresh()` every `interval_s` seconds on the event loop (stat calls only, then a
    reload of what changed); `start()` on the loop, `stop()` on shutdown."""

    def __init__(self, interval_s: float) -> None:
        self._interval_s = interval_s
        self._refreshers: list[Callable[[], object]] = []
        self._task: asyncio.Task[None] | None = None

    def add(self, refresh: Callable[[], object]) -> None:
        self._refreshers.append(refresh)

    def start(self) -> None:
        if self._refreshers and self._task is None:
            self._task = spawn(self._run(), "tls-auth-file-watcher")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            for refresh in self._refreshers:
                try:
                    refresh()
                except Exception:
                    logger.exception("reloading credential files failed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
