"""What to load and how hard: frozen settings built once from the command line.

Every load loop is bounded twice, by time (`warmup_s + duration_s`, then `request_timeout_s` to
drain) and by count (`max_requests`). A target is any host name, address or URL (loopback is only
the default), reached in clear text or over TLS, with any headers (gRPC metadata) on every call.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

__all__ = ["LoadSpec", "Target", "TlsOptions", "is_loopback", "parse_url", "split_spec"]

Protocol = Literal["grpc", "http"]
Mode = Literal["open", "closed"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsOptions:
    """How the harness speaks TLS to the target (files are read when a connection is set up)."""

    ca_file: Path | None = None
    """PEM CA bundle the server's certificate must chain to (None: the system's trust store)."""
    cert_file: Path | None = None
    """PEM client certificate chain, for mTLS."""
    key_file: Path | None = None
    """PEM private key of cert_file."""
    server_name: str | None = None
    """Name checked against the server's certificate and sent as SNI (and as the gRPC :authority / HTTP
    Host), instead of the host connected to: grpcio's `grpc.ssl_target_name_override`."""

    def context(self, alpn: tuple[str, ...] = ()) -> ssl.SSLContext:
        """A client context: certificate and host name verified, TLS 1.2 or newer. Raises OSError or
        ssl.SSLError when a file cannot be read."""
        context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert_file is not None:
            context.load_cert_chain(str(self.cert_file), str(self.key_file) if self.key_file else None)
        if alpn:
            context.set_alpn_protocols(list(alpn))
        return context


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """The server under test and how requests are encoded for it."""

    host: str = "127.0.0.1"
    """Host name or address (any; loopback is the default)."""
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
    tls: TlsOptions | None = None
    """None: clear text (h2c for gRPC)."""
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    """Sent on every call: HTTP headers, or gRPC metadata (names lower-cased); bearer tokens ride here.
    Not in repr, so a token is never printed."""

    @property
    def authority(self) -> str:
        """`host:port` as the server is told it (HTTP Host, gRPC :authority): the TLS server name if set."""
        name = self.tls.server_name if self.tls is not None and self.tls.server_name else self.host
        return f"[{name}]:{self.port}" if ":" in name else f"{name}:{self.port}"

    @property
    def base_url(self) -> str:
        """`http(s)://host:port` of this target (for HTTP metadata and /metrics on the same port)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls is not None else 'http'}://{host}:{self.port}"


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
    send_spin_ms: float = 0.0
    """Scheduled sends (scenario, replay): the last this-many ms before a send time are polled rather
    than slept (0: sleep only). Polling costs generator CPU and pays only on a dedicated core: on a
    shared machine it measured worse than sleeping (BENCHMARKS.md, "Replay timing")."""
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


_DEFAULT_PORTS = {"grpc": 8001, "grpcs": 8001, "http": 8000, "https": 443}


@dataclass(frozen=True, slots=True)
class ParsedUrl:
    """What a target URL names: protocol, TLS or not, host and port."""

    protocol: Protocol
    tls: bool
    host: str
    port: int


def parse_url(url: str) -> ParsedUrl:
    """`grpc://h:8001`, `grpcs://h` (gRPC over TLS), `http://h:8000`, `https://h`; a bare `h:port`
    is gRPC. IPv6 literals in brackets. Raises ValueError for another scheme, a path, or no host."""
    parts = urlsplit(url if "://" in url else f"grpc://{url}")
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"target URL {url!r}: scheme must be grpc, grpcs, http or https")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"target URL {url!r}: give the server's address only (no path or query)")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"target URL {url!r}: {exc}") from None
    if not parts.hostname:
        raise ValueError(f"target URL {url!r} names no host")
    protocol: Protocol = "grpc" if scheme.startswith("grpc") else "http"
    return ParsedUrl(protocol, scheme in ("grpcs", "https"), parts.hostname, port or _DEFAULT_PORTS[scheme])


def is_loopback(host: str) -> bool:
    """True when every address `host` resolves to is a loopback address (False when it does not resolve)."""
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    addresses = {str(info[4][0]).split("%")[0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)
