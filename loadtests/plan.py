"""Capacity plans: how many replicas (pods) a target rate needs under an SLO, what bounds one replica,
and the value to give the HorizontalPodAutoscaler for the fleet's signal.

One replica is one pod running Tessera with its workers as swept; the fleet is planned from that
replica's best throughput within the SLO, scaled linearly, with headroom and the loss of one zone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .results import StepResult, client_limited
from .sweep import SweepResult

__all__ = ["HPA_SIGNALS", "CapacityPlan", "FleetOptions", "classify_bound", "hpa_signal_value", "plan_capacity"]

HpaSignal = Literal["pending", "queue-p99"]
HPA_SIGNALS: dict[str, str] = {
    "pending": "tessera_pending_requests (requests waiting or executing, summed over models, per pod)",
    "queue-p99": "p99 of tessera_queue_duration_seconds per pod, ms (histogram_quantile over 1 min)",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetOptions:
    """How the fleet is laid out; the plan's assumptions say how each is used."""

    workers_per_pod: int = 1
    """Tessera --workers in each pod: as in the swept replica (the sweep is of one pod)."""
    zones: int = 3
    """Pods are spread evenly over this many zones, and the fleet must carry the target rate within
    the SLO with one zone lost (1: no zone loss planned)."""
    hpa_signal: HpaSignal = "pending"
    min_pods: int = 2
    """Never fewer pods than this (one pod is one failure away from no service)."""

    def __post_init__(self) -> None:
        if self.workers_per_pod < 1 or self.zones < 1 or self.min_pods < 1:
            raise ValueError("workers per pod, zones and min pods must be >= 1")
        if self.hpa_signal not in HPA_SIGNALS:
            raise ValueError(f"HPA signal is one of {sorted(HPA_SIGNALS)}")

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
    pods: int | None = None
    """Replicas, raised so that the fleet survives one zone's loss, and to at least min_pods."""
    workers_per_pod: int = 1
    zones: int = 1
    hpa_signal: str = "pending"
    hpa_target: float | None = None
    """The signal's per-pod value at the planned per-pod rate (capacity x (1 - headroom)): the HPA's
    target averageValue. None when the sweep has no server metrics for it."""
    hpa_at_best: float | None = None
    """The signal at the best step within the SLO (the knee's edge): a pod reading this is full."""
    assumptions: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.replicas is None or self.capacity_rps is None:
            return f"No step met the SLO; bound: {self.bound} ({self.reason})."
        qualifier = "at least " if self.lower_bound else ""
        lines = [
            f"{self.replicas} replica(s) for {self.target_rps:g} req/s: one replica sustains "
            f"{qualifier}{self.capacity_rps:.0f} req/s within the SLO, planned at "
            f"{1 - self.headroom:.0%} of that ({self.capacity_rps * (1 - self.headroom):.0f} req/s). "
            f"Bound: {self.bound} ({self.reason}).",
        ]
        if self.pods is not None:
            per_zone = math.ceil(self.pods / self.zones)
            lines.append(
                f"Fleet: {self.pods} pod(s) x {self.workers_per_pod} worker(s) per pod"
                + (f", {per_zone} per zone over {self.zones} zones" if self.zones > 1 else "")
                + f" for {self.target_rps:g} req/s (the HPA's maxReplicas must allow at least {self.pods})."
            )
            signal = HPA_SIGNALS.get(self.hpa_signal, self.hpa_signal)
            if self.hpa_target is None:
                lines.append(f"HPA target: unknown: the sweep has no server /metrics for {signal}.")
            else:
                at_best = f"; {self.hpa_at_best:.3g} at the best step within the SLO" if self.hpa_at_best else ""
                lines.append(f"HPA target: {signal}, averageValue {self.hpa_target:.3g}{at_best}.")
        if self.assumptions:
            lines.append("Assumptions:")
            lines += [f"  - {a}" for a in self.assumptions]
        return "\n".join(lines)


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


def plan_capacity(
    sweep: SweepResult, target_rps: float, headroom: float = 0.3, fleet: FleetOptions | None = None
) -> CapacityPlan:
    """Replicas = ceil(target / (capacity * (1 - headroom))), from the sweep's best step; then pods
    for the fleet (zone loss, minimum) and the HPA target at the planned per-pod rate."""
    if target_rps <= 0 or not 0 <= headroom < 1:
        raise ValueError("need target_rps > 0 and 0 <= headroom < 1")
    fleet = fleet or FleetOptions()
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
    capacity = best.throughput_rps
    usable = capacity * (1 - headroom)
    replicas = max(1, math.ceil(target_rps / usable))
    pods = _pods(replicas, math.ceil(target_rps / capacity), fleet)
    passing = [s for s, (met, _) in zip(sweep.steps, sweep.verdicts, strict=True) if met]
    return CapacityPlan(
        target_rps=target_rps,
        headroom=headroom,
        capacity_rps=capacity,
        replicas=replicas,
        bound=bound,
        reason=reason,
        lower_bound=knee is None,
        evidence=evidence,
        pods=pods,
        workers_per_pod=fleet.workers_per_pod,
        zones=fleet.zones,
        hpa_signal=fleet.hpa_signal,
        hpa_target=_interpolate(passing, fleet.hpa_signal, usable),
        hpa_at_best=hpa_signal_value(best, fleet.hpa_signal),
        assumptions=_assumptions(capacity, usable, headroom, fleet, knee is None, sweep.steps),
    )


def _pods(replicas: int, at_full_capacity: int, fleet: FleetOptions) -> int:
    """The fewest pods >= replicas (and min_pods) such that, spread evenly over the zones, those left
    after the largest zone is lost still carry the target at full SLO capacity."""
    pods = max(replicas, fleet.min_pods)
    if fleet.zones > 1:
        while pods - math.ceil(pods / fleet.zones) < at_full_capacity:
            pods += 1
    return pods


def hpa_signal_value(step: StepResult, signal: str) -> float | None:
    """The step's per-pod value of the HPA signal from the server's /metrics (None: not scraped)."""
    server = step.server
    if server is None:
        return None
    if signal == "pending":
        value = server.pending_mean if not math.isnan(server.pending_mean) else server.pending_gauge
    else:
        value = server.queue_p99_ms
    return None if math.isnan(value) else float(value)


def _interpolate(steps: Sequence[StepResult], signal: str, rate_rps: float) -> float | None:
    """The signal at `rate_rps`, linear between the steps within the SLO (clamped at their ends)."""
    points = sorted(
        (s.throughput_rps, v) for s in steps if (v := hpa_signal_value(s, signal)) is not None
    )
    if not points:
        return None
    rates, values = zip(*points, strict=True)
    return float(np.interp(rate_rps, rates, values))


def _assumptions(
    capacity: float, usable: float, headroom: float, fleet: FleetOptions, lower: bool, steps: Sequence[StepResult]
) -> tuple[str, ...]:
    notes = [
        f"one pod = the swept replica with {fleet.workers_per_pod} worker(s); capacity scales linearly "
        f"with pods (no shared bottleneck: load balancer, network, a shared store)",
        f"each pod runs at <= {1 - headroom:.0%} of its SLO capacity ({usable:.0f} of {capacity:.0f} req/s): "
        f"{headroom:.0%} headroom for bursts and uneven balancing",
    ]
    if fleet.zones > 1:
        notes.append(
            f"pods spread evenly over {fleet.zones} zones; with one zone lost the rest carry the target "
            "at up to 100% of SLO capacity until replacements start"
        )
    else:
        notes.append("no zone loss planned (--zones 1)")
    notes.append(
        f"HPA target = {fleet.hpa_signal} interpolated at the planned per-pod rate ({usable:.0f} req/s) "
        "on the sweep's curve, from the server's /metrics scraped at each step's edges"
        + (" (pending: mean in the window by Little's law, req/s x mean time in server)"
           if fleet.hpa_signal == "pending" else "")
    )
    notes.append("traffic shape as in the sweep (models, batch sizes, arrival process); a new mix needs a new sweep")
    if lower:
        notes.append("the sweep never failed the SLO: capacity is a lower bound, and the plan may overprovision")
    if any(s.server is None for s in steps):
        notes.append("some steps have no server metrics; the HPA target uses the rest")
    if fleet.workers_per_pod > 1:
        notes.append(
            "with several workers each keeps its own /metrics and a scrape reaches one of them: the server "
            "view (and HPA target) is one worker's unless the server aggregates its workers' metrics"
        )
    return tuple(notes)
