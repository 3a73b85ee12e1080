"""What to load and how hard: frozen settings built once from the command line.

Every load loop is bounded twice, by time (`warmup_s + duration_s`, then `request_timeout_s` to
drain) and by count (`max_requests`); targets must resolve to loopback addresses only.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, replace
from typing import Literal

__all__ = ["LoadSpec", "Target", "ensure_loopback", "split_spec"]

Protocol = Literal["grpc", "http"]
Mode = Literal["open", "closed"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """The server under test and how requests are encoded for it."""

    host: str = "127.0.0.1"
    """Host name or address; must resolve to loopback only."""
    port: int
    """Port of the chosen protocol (gRPC or HTTP)."""
    protocol: Protocol = "grpc"
    model: str
    model_version: str = ""
    """Empty: the server's choice (latest / stable)."""
    http_encoding: Literal["binary", "json"] = "binary"
    """HTTP only: V2 JSON tensors or the binary tensor extension (inputs and outputs)."""
    http_split_writes: bool = False
    """HTTP only: send each request's headers and body in two writes (two TCP segments), as libcurl
    and so perf_analyzer do; the server then wakes and parses twice per request. Default: one write."""
    request_timeout_s: float = 10.0
    """Per-request deadline; a request past it counts as a `timeout` error."""
    metrics_url: str | None = None
    """Prometheus endpoint scraped at the start and end of each measured window (None: don't)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadSpec:
    """One load step: an open loop at `rate_rps` or a closed loop at `concurrency`."""

    mode: Mode = "closed"
    rate_rps: float = 0.0
    """Open loop: target arrivals per second, summed over all generator processes."""
    arrival: Literal["constant", "poisson"] = "poisson"
    concurrency: int = 0
    """Closed loop: requests kept in flight, summed over all generator processes."""
    duration_s: float = 10.0
    """Length of the measured window, after warmup."""
    warmup_s: float = 1.0
    """Requests intended (open) or completed (closed) before this are sent but not recorded."""
    processes: int = 1
    """Generator processes; histograms are merged exactly."""
    max_requests: int = 5_000_000
    """Hard cap on requests sent in this step, over all processes."""
    max_in_flight: int = 2048
    """Open loop, per process: beyond this, sends wait (and their wait counts in latency)."""
    grpc_channels: int = 1
    """gRPC channels per process, used round-robin."""
    late_send_ms: float = 2.0
    """Open loop: a send this far behind its intended time counts as missed."""
    cpus: tuple[int, ...] = ()
    """CPU affinity of the generator processes (empty: inherit)."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode == "open" and self.rate_rps <= 0:
            raise ValueError("open loop needs rate_rps > 0")
        if self.mode == "closed" and self.concurrency < 1:
            raise ValueError("closed loop needs concurrency >= 1")
        if self.duration_s <= 0 or self.warmup_s < 0 or self.processes < 1 or self.max_requests < 1:
            raise ValueError("duration_s > 0, warmup_s >= 0, processes >= 1, max_requests >= 1")

    @property
    def level(self) -> float:
        """The knob of this step: rate (open) or concurrency (closed)."""
        return self.rate_rps if self.mode == "open" else float(self.concurrency)

    def at_level(self, level: float) -> LoadSpec:
        """The same step at another rate or concurrency."""
        if self.mode == "open":
            return replace(self, rate_rps=level)
        return replace(self, concurrency=max(1, round(level)))


def split_spec(spec: LoadSpec) -> list[LoadSpec]:
    """One spec per generator process; their rates, concurrencies and caps add up to `spec`'s.

    A Poisson stream split into independent Poisson streams of rate/P is again Poisson at rate.
    """
    n = spec.processes if spec.mode == "open" else min(spec.processes, spec.concurrency)
    caps = [spec.max_requests // n + (1 if i < spec.max_requests % n else 0) for i in range(n)]
    if spec.mode == "open":
        return [
            replace(
                spec,
                processes=1,
                rate_rps=spec.rate_rps / n,
                max_requests=max(1, c),
                seed=spec.seed * 1000 + i,
            )
            for i, c in enumerate(caps)
        ]
    users = [spec.concurrency // n + (1 if i < spec.concurrency % n else 0) for i in range(n)]
    return [
        replace(spec, processes=1, concurrency=u, max_requests=max(1, c), seed=spec.seed * 1000 + i)
        for i, (u, c) in enumerate(zip(users, caps, strict=True))
    ]


def ensure_loopback(host: str) -> None:
    """Raise ValueError unless every address `host` resolves to is a loopback address."""
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve {host!r}: {exc}") from exc
    addresses = {str(info[4][0]).split("%")[0] for info in infos}
    outside = sorted(a for a in addresses if not ipaddress.ip_address(a).is_loopback)
    if not addresses or outside:
        raise ValueError(f"load tests target loopback addresses only; {host!r} resolves to {outside}")
