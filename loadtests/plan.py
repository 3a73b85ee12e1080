"""Capacity plans: how many replicas a target rate needs under an SLO, and what bounds one replica."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .results import StepResult, client_limited
from .sweep import SweepResult

__all__ = ["CapacityPlan", "classify_bound", "plan_capacity"]

DOMINANT = 0.5
"""A server stage owning at least this share of the client's p99 is called the bound."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CapacityPlan:
    target_rps: float
    headroom: float
    """Fraction of each replica's measured capacity kept free (0.3: run replicas at 70%)."""
    capacity_rps: float | None
    """Highest throughput one replica delivered within the SLO; None when no step met it."""
    replicas: int | None
    bound: str
    """What limits one replica: client, queueing, compute, transport or unknown."""
    reason: str
    lower_bound: bool = False
    """True when the sweep never failed the SLO, so the capacity is at least the figure given."""
    evidence: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        if self.replicas is None or self.capacity_rps is None:
            return f"No step met the SLO; bound: {self.bound} ({self.reason})."
        qualifier = "at least " if self.lower_bound else ""
        return (
            f"{self.replicas} replica(s) for {self.target_rps:g} req/s: one replica sustains "
            f"{qualifier}{self.capacity_rps:.0f} req/s within the SLO, planned at "
            f"{1 - self.headroom:.0%} of that ({self.capacity_rps * (1 - self.headroom):.0f} req/s). "
            f"Bound: {self.bound} ({self.reason})."
        )


def classify_bound(step: StepResult) -> tuple[str, str, dict[str, float]]:
    """(bound, reason, evidence) from one step near saturation."""
    p99 = step.latency.p99_ms
    evidence = {
        "client_p99_ms": p99,
        "generator_cpu": step.generator_cpu,
        "missed_send_fraction": step.missed_send_fraction,
    }
    if client_limited(step):
        return (
            "client",
            f"the generator used {step.generator_cpu:.0%} of a core and missed "
            f"{step.missed_send_fraction:.1%} of send times (p99 lag {step.send_lag_p99_ms:.1f} ms); "
            "add --processes or cores",
            evidence,
        )
    server = step.server
    if server is None or math.isnan(server.queue_p99_ms) or math.isnan(server.compute_p99_ms):
        return "unknown", "the server's /metrics were not available", evidence
    evidence |= {
        "server_queue_p99_ms": server.queue_p99_ms,
        "server_compute_p99_ms": server.compute_p99_ms,
        "server_batch_mean": server.batch_mean,
    }
    if server.queue_p99_ms >= DOMINANT * p99:
        return (
            "queueing",
            f"requests wait {server.queue_p99_ms:.1f} ms (p99) in the batcher's queue of "
            f"a {p99:.1f} ms p99: the executor cannot drain it; more replicas or instances",
            evidence,
        )
    if server.compute_p99_ms >= DOMINANT * p99:
        return (
            "compute",
            f"model execution takes {server.compute_p99_ms:.1f} ms (p99) of a {p99:.1f} ms "
            "p99: a faster model, more cores or another accelerator",
            evidence,
        )
    return (
        "transport",
        f"of a {p99:.1f} ms p99 only {server.queue_p99_ms:.1f} ms is queueing and "
        f"{server.compute_p99_ms:.1f} ms compute: the rest is protocol handling and the event loop",
        evidence,
    )


def plan_capacity(sweep: SweepResult, target_rps: float, headroom: float = 0.3) -> CapacityPlan:
    """Replicas = ceil(target / (capacity * (1 - headroom))), from the sweep's best step."""
    if target_rps <= 0 or not 0 <= headroom < 1:
        raise ValueError("need target_rps > 0 and 0 <= headroom < 1")
    best, knee = sweep.best, sweep.knee
    witness = knee or best or (sweep.steps[-1] if sweep.steps else None)
    if witness is None:
        raise ValueError("the sweep has no steps")
    bound, reason, evidence = classify_bound(witness)
    if best is None:
        return CapacityPlan(
            target_rps=target_rps,
            headroom=headroom,
            capacity_rps=None,
            replicas=None,
            bound=bound,
            reason=reason,
            evidence=evidence,
        )
    usable = best.throughput_rps * (1 - headroom)
    return CapacityPlan(
        target_rps=target_rps,
        headroom=headroom,
        capacity_rps=best.throughput_rps,
        replicas=max(1, math.ceil(target_rps / usable)),
        bound=bound,
        reason=reason,
        lower_bound=knee is None,
        evidence=evidence,
    )
