"""A load step's outcome, as one flat record that round-trips through JSON."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from .histograms import LatencySummary
from .server_metrics import ServerView

__all__ = [
    "CLIENT_CPU_BUSY",
    "CLIENT_LAG_SHARE",
    "CLIENT_MISSED_SENDS",
    "ModelResult",
    "StepResult",
    "client_limited",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelResult:
    """One model's part of a mixed step: its share of the requests sent, its outcome and latency."""

    model: str
    sent: int
    """Requests sent to this model within the measured window."""
    share: float
    """sent / all requests sent in the window."""
    ok: int
    errors: dict[str, int]
    latency: LatencySummary
    latency_hdr: str = ""

    @property
    def error_rate(self) -> float:
        total = self.ok + sum(self.errors.values())
        return sum(self.errors.values()) / total if total else 1.0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelResult:
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**fields | {"latency": LatencySummary(**data["latency"])})


@dataclass(frozen=True, slots=True, kw_only=True)
class StepResult:
    """Client and server view of one step. Latency is from the intended send time in an open loop."""

    protocol: str
    mode: str
    """closed, open-poisson or open-constant."""
    level: float
    """Target rate (open loop, req/s) or concurrency (closed loop)."""
    duration_s: float
    processes: int
    throughput_rps: float
    """Successful responses per second within the measured window."""
    offered_rps: float
    ok: int
    errors: dict[str, int]
    latency: LatencySummary
    service: LatencySummary
    """From the actual send: what a closed-loop tool such as perf_analyzer reports."""
    send_lag_p99_ms: float
    missed_send_fraction: float
    generator_cpu: float
    """Busiest generator process's CPU time over its wall time (1.0 = one core)."""
    server: ServerView | None = None
    warnings: tuple[str, ...] = ()
    latency_hdr: str = ""
    """The merged latency histogram, HdrHistogram base64 encoding, for exact re-merging."""
    first_error: str = ""
    model: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    per_model: tuple[ModelResult, ...] = ()
    """Mixed steps (scenario, replay): each model's part; empty for a one-model step."""

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def error_rate(self) -> float:
        total = self.ok + self.error_count
        return self.error_count / total if total else 1.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["error_rate"] = self.error_rate
        data["server"] = (
            None if self.server is None else {k: (None if math.isnan(v) else v) for k, v in asdict(self.server).items()}
        )
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepResult:
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        fields["latency"] = LatencySummary(**data["latency"])
        fields["service"] = LatencySummary(**data["service"])
        fields["warnings"] = tuple(data.get("warnings", ()))
        fields["per_model"] = tuple(ModelResult.from_dict(m) for m in data.get("per_model", ()))
        server = data.get("server")
        fields["server"] = (
            None if server is None else ServerView(**{k: (math.nan if v is None else v) for k, v in server.items()})
        )
        return cls(**fields)


CLIENT_CPU_BUSY = 0.85
CLIENT_MISSED_SENDS = 0.01
CLIENT_LAG_SHARE = 0.25


def client_limited(step: StepResult) -> bool:
    """True when the generator, not the server, set this step's numbers: it ran out of CPU, or it
    missed send times by enough to explain a good part of the p99 (a few ms of lag do not explain
    a p99 of 60 ms)."""
    lagging = (
        step.missed_send_fraction > CLIENT_MISSED_SENDS
        and step.send_lag_p99_ms >= CLIENT_LAG_SHARE * step.latency.p99_ms
    )
    return step.generator_cpu >= CLIENT_CPU_BUSY or lagging
