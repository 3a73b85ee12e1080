"""Admission limits both transports apply before a request costs much: the process-wide budget of
bytes held in request bodies, and per-identity rate limits (token buckets).

Both refuse with Overloaded (RESOURCE_EXHAUSTED / 429). Everything here runs on the event loop.
The identity is a string: the peer address today; a token or certificate name once requests carry one.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote

from .auth import OPEN, Credentials, Principal
from .errors import Overloaded

__all__ = ["Admission", "BodyBudget", "BodyHold", "RateLimiter", "peer_host"]


class BodyHold:
    """Bytes one request holds against a BodyBudget; grows as its body arrives, released once."""

    __slots__ = ("_budget", "held")

    def __init__(self, budget: BodyBudget) -> None:
        self._budget = budget
        self.held = 0

    def grow(self, nbytes: int) -> None:
        """Hold `nbytes` more; raises Overloaded when the process-wide budget cannot give them."""
        self._budget.take(nbytes)
        self.held += nbytes

    def release(self) -> None:
        self._budget.give(self.held)
        self.held = 0

    def __enter__(self) -> BodyHold:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class BodyBudget:
    """Bytes held in request bodies, all connections and streams together; 0 means unlimited."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.held_bytes = 0

    def hold(self) -> BodyHold:
        return BodyHold(self)

    def take(self, nbytes: int) -> None:
        if self.limit_bytes and self.held_bytes + nbytes > self.limit_bytes:
            raise Overloaded(f"the server holds {self.held_bytes} bytes of request bodies; "
                             f"{nbytes} more would pass its budget of {self.limit_bytes}; retry later")
        self.held_bytes += nbytes

    def give(self, nbytes: int) -> None:
        self.held_bytes -= nbytes


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """A token bucket per identity: `rate_per_s` requests a second on average, bursts of `burst`.

    At most `max_identities` buckets are kept; the least recently seen are forgotten first (a
    forgotten identity starts again with a full bucket).
    """

    def __init__(self, rate_per_s: float, burst: int, max_identities: int = 65536,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate_per_s = rate_per_s
        self.burst = max(1, burst)
        self._max = max_identities
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def admit(self, identity: str) -> None:
        """Take one token for `identity`; raises Overloaded when its bucket is empty."""
        now = self._clock()
        bucket = self._buckets.get(identity)
        if bucket is None:
            bucket = self._buckets[identity] = _Bucket(float(self.burst), now)
            if len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(identity)
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.stamp) * self.rate_per_s)
            bucket.stamp = now
        if bucket.tokens < 1.0:
            raise Overloaded(f"rate limit of {self.rate_per_s:g} requests/s (burst {self.burst}) "
                             f"exceeded; retry later")
        bucket.tokens -= 1.0


class Admission:
    """What both transports ask before decoding a request: a rate-limit token and a body hold."""

    def __init__(self, body_budget_bytes: int = 0, rate_limit_rps: float = 0.0, rate_limit_burst: int = 0
                 ) -> None:
        self.bodies = BodyBudget(body_budget_bytes)
        self._limiter = (RateLimiter(rate_limit_rps, rate_limit_burst or max(1, round(rate_limit_rps)))
                         if rate_limit_rps > 0 else None)

    def admit(self, identity: str) -> None:
        """Raises Overloaded when `identity` is over its rate limit (a no-op when limits are off)."""
        if self._limiter is not None:
            self._limiter.admit(identity)

    def admit_caller(self, principal: Principal, creds: Credentials) -> None:
        """Rate-limit by who the caller is: its authenticated name, else (no auth) its address."""
        if self._limiter is not None:
            self._limiter.admit(principal.name if principal is not OPEN else peer_host(creds.peer))


def peer_host(peer: str) -> str:
    """The host part of a transport's peer: 'ipv4:1.2.3.4:5' (grpc), '[::1]:5', '1.2.3.4' -> the address."""
    peer = unquote(peer)
    for prefix in ("ipv4:", "ipv6:", "unix:"):
        if peer.startswith(prefix):
            peer = peer[len(prefix):]
            break
    if peer.startswith("["):
        return peer[1:].split("]", 1)[0]
    host, sep, port = peer.rpartition(":")
    if sep and port.isdigit() and host.count(":") == 0:
        return host
    return peer
