"""Synthetic StepResults for the sweep, plan and report tests: no server, no timing."""

from __future__ import annotations

import math

from loadtests.histograms import LatencySummary
from loadtests.results import StepResult
from loadtests.server_metrics import ServerView


def latency(p99_ms: float) -> LatencySummary:
    return LatencySummary(count=1000, mean_ms=p99_ms / 4, p50_ms=p99_ms / 4, p90_ms=p99_ms / 2,
                          p95_ms=p99_ms * 0.7, p99_ms=p99_ms, p999_ms=p99_ms * 1.5, max_ms=p99_ms * 2)


def server(queue_p99_ms: float = 1.0, compute_p99_ms: float = 1.0, pending: float = math.nan) -> ServerView:
    return ServerView(batches=100.0, batch_mean=2.0, batch_p99=8.0, queue_p50_ms=queue_p99_ms / 3,
                      queue_p99_ms=queue_p99_ms, compute_p50_ms=compute_p99_ms / 2,
                      compute_p99_ms=compute_p99_ms, request_p99_ms=queue_p99_ms + compute_p99_ms,
                      pending_mean=pending, pending_gauge=pending)


def step(level: float, throughput: float, p99_ms: float, *, errors: int = 0, cpu: float = 0.3,
         missed: float = 0.0, lag_ms: float = 0.5, view: ServerView | None = None,
         mode: str = "open-poisson") -> StepResult:
    ok = int(throughput * 10)
    return StepResult(protocol="grpc", mode=mode, level=level, duration_s=10.0, processes=1,
                      throughput_rps=throughput, offered_rps=level, ok=ok,
                      errors={"grpc_UNAVAILABLE": errors} if errors else {}, latency=latency(p99_ms),
                      service=latency(p99_ms), send_lag_p99_ms=lag_ms, missed_send_fraction=missed,
                      generator_cpu=cpu, server=view if view is not None else server())


def nan_server() -> ServerView:
    return ServerView(*(math.nan,) * 8)
