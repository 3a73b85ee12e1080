"""Who is calling and what they may do: credentials, scopes, and the one check the DataPlane makes.

Transports only extract a `Credentials` (bearer token, verified client-certificate identities, peer
address); `Authorizer.authorize` turns it into a `Principal` or raises Unauthenticated / PermissionDenied.
Nothing here imports a transport.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import PermissionDenied, Unauthenticated

__all__ = [
    "ANONYMOUS",
    "Authorizer",
    "Credentials",
    "Grant",
    "Principal",
    "Scope",
    "hash_token",
    "parse_identities",
    "parse_scopes",
    "parse_tokens",
]

logger = logging.getLogger(__name__)


class Scope(enum.Enum):
    """What an operation needs. `infer` may be limited to named models."""

    INFER = "infer"
    READ = "read"  # metadata, config, statistics, index, rollout status, drift reports (and /metrics if asked)
    ADMIN = "admin"  # repository load / unload, rollout start / promote / abort


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a transport saw of the caller; built per request, checked once by the DataPlane."""

    token: str | None = None
    """The bearer token (HTTP `Authorization: Bearer`, gRPC metadata `authorization`), if any."""

    cert_identities: tuple[str, ...] = ()
    """A TLS-verified client certificate's subject CN, then its SAN values; empty without mTLS."""

    peer: str = ""
    """The source address as the transport names it (`ipv4:127.0.0.1:5000`, `127.0.0.1:5000`)."""

    def describe(self) -> str:
        """A loggable identity that never contains the token: `cert:CN`, `token:<hash prefix>`, `none`."""
        if self.token is not None:
            return "token:" + hash_token(self.token)[:8]
        if self.cert_identities:
            return "cert:" + self.cert_identities[0]
        return "none"


ANONYMOUS = Credentials()
"""No credential at all (in-process callers, and a transport that extracts nothing)."""


@dataclass(frozen=True, slots=True)
class Grant:
    """A set of scopes; `infer_models` None means inference on every model."""

    infer: bool = False
    infer_models: frozenset[str] | None = None
    read: bool = False
    admin: bool = False

    def allows(self, scope: Scope, model: str | None = None) -> bool:
        if scope is Scope.READ:
            return self.read
        if scope is Scope.ADMIN:
            return self.admin
        return self.infer and (self.infer_models is None or model in self.infer_models)


ALL = Grant(infer=True, read=True, admin=True)


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: the name from the tokens or identities file, and its grant."""

    name: str
    grant: Grant
    expires_s: float | None = None
    """Unix time after which a token is refused as expired; None never expires."""


OPEN = Principal("anonymous", ALL)


def hash_token(token: str) -> str:
    """The hex SHA-256 of a token, as the tokens file stores it."""
    return hashlib.sha256(token.encode()).hexdigest()


def parse_scopes(text: str) -> Grant:
    """`infer`, `infer=a|b`, `read`, `admin`, comma-separated. Raises ValueError naming a bad scope."""
    infer, models, read, admin = False, None, False, False
    for item in (s.strip() for s in text.split(",")):
        name, _, arg = item.partition("=")
        if name == "infer":
            infer = True
            if arg:
                named = frozenset(m for m in arg.split("|") if m)
                models = named if models is None else models | named
        elif item == "read":
            read = True
        elif item == "admin":
            admin = True
        else:
            raise ValueError(f"unknown scope '{item}' (use infer, infer=model|model, read, admin)")
    return Grant(infer=infer, infer_models=models, read=read, admin=admin)


def _lines(text: str) -> Iterable[tuple[int, str]]:
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line and not line.startswith("#"):
            yield number, line


def parse_tokens(text: str) -> list[tuple[bytes, Principal]]:
    """(sha256 digest, principal) for each `name:scopes:sha256hex[:expires=unix_seconds]` line."""
    entries: list[tuple[bytes, Principal]] = []
    for number, line in _lines(text):
        fields = line.split(":")
        try:
            if len(fields) not in (3, 4) or not fields[0]:
                raise ValueError("expected name:scopes:sha256hex[:expires=unix_seconds]")
            digest = bytes.fromhex(fields[2])
            if len(digest) != 32:
                raise ValueError("the hash must be 64 hex digits of SHA-256")
            expires = None
            if len(fields) == 4:
                key, _, value = fields[3].partition("=")
                if key != "expires":
                    raise ValueError("the fourth field must be expires=unix_seconds")
                expires = float(value)
            entries.append((digest, Principal(fields[0], parse_scopes(fields[1]), expires)))
        except ValueError as exc:
            raise ValueError(f"tokens file line {number}: {exc}") from None
    return entries


def parse_identities(text: str) -> dict[str, Principal]:
    """identity -> principal for each `identity:scopes` line (the identity may itself hold colons)."""
    found: dict[str, Principal] = {}
    for number, line in _lines(text):
        identity, sep, scopes = line.rpartition(":")
        if not sep or not identity:
            raise ValueError(f"certificate identities file line {number}: expected identity:scopes")
        try:
            found[identity] = Principal(identity, parse_scopes(scopes))
        except ValueError as exc:
            raise ValueError(f"certificate identities file line {number}: {exc}") from None
    return found


def _stamp(path: Path | None) -> tuple[int, int, int] | None:
    if path is None:
        return None
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size, st.st_ino


class Authorizer:
    """Checks credentials against the tokens and certificate-identities files.

    With neither file configured every caller is allowed everything (loopback default, or mTLS where
    the CA alone decides who connects). `refresh()` reloads changed files; a file that no longer
    parses is logged and the previous contents stay in force. Runs on the event loop; never blocks
    beyond hashing one token.
    """

    def __init__(self, tokens_file: Path | None = None, identities_file: Path | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._tokens_file = tokens_file
        self._identities_file = identities_file
        self._clock = clock
        self._tokens: list[tuple[bytes, Principal]] = []
        self._identities: dict[str, Principal] = {}
        self._stamps: tuple[object, object] = (None, None)
        self.enabled = tokens_file is not None or identities_file is not None
        self._load()  # a broken file at start-up is an error the operator sees at once

    def _load(self) -> None:
        stamps = (_stamp(self._tokens_file), _stamp(self._identities_file))
        if self._tokens_file is not None:
            self._tokens = parse_tokens(self._tokens_file.read_text())
        if self._identities_file is not None:
            self._identities = parse_identities(self._identities_file.read_text())
        self._stamps = stamps

    def refresh(self) -> bool:
        """Reload the files if they changed; True when new contents are in force."""
        try:
            if (_stamp(self._tokens_file), _stamp(self._identities_file)) == self._stamps:
                return False
            self._load()
        except (OSError, ValueError) as exc:
            logger.error("auth files not reloaded, the previous ones stay in force: %s", exc)
            return False
        logger.info("auth files reloaded")
        return True

    def authorize(self, creds: Credentials, scope: Scope, model: str | None = None) -> Principal:
        """The caller's principal if it may do `scope` (on `model` for infer).

        Raises Unauthenticated (no, wrong or expired credential) or PermissionDenied (missing scope).
        """
        if not self.enabled:
            return Principal(creds.describe(), ALL) if creds.cert_identities else OPEN
        principal = self._authenticate(creds)
        if not principal.grant.allows(scope, model):
            if scope is Scope.INFER and principal.grant.infer:
                raise PermissionDenied(f"'{principal.name}' may not run inference on model '{model}'")
            raise PermissionDenied(f"'{principal.name}' lacks the '{scope.value}' scope")
        return principal

    def _authenticate(self, creds: Credentials) -> Principal:
        if creds.token is not None:
            return self._by_token(creds.token)
        for identity in creds.cert_identities:
            found = self._identities.get(identity)
            if found is not None:
                return found
        if creds.cert_identities and self._identities_file is not None:
            raise PermissionDenied(f"client certificate '{creds.cert_identities[0]}' is not granted any scope")
        if self._tokens_file is None:
            raise Unauthenticated("a client certificate whose identity is granted scopes is required")
        raise Unauthenticated("missing bearer token (send 'authorization: Bearer <token>')")

    def _by_token(self, token: str) -> Principal:
        digest = hashlib.sha256(token.encode()).digest()
        match: Principal | None = None
        for stored, principal in self._tokens:  # every entry is compared: the time does not depend on which matched
            if hmac.compare_digest(stored, digest):
                match = principal
        if match is None:
            raise Unauthenticated("invalid bearer token")
        if match.expires_s is not None and self._clock() >= match.expires_s:
            raise Unauthenticated("bearer token expired")
        return match
