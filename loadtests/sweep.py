"""Sweeps: raise the rate or concurrency step by step and find the highest throughput within an SLO."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .results import StepResult

__all__ = ["Slo", "SweepResult", "geometric_levels", "run_sweep"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Slo:
    """What a step must meet to count: latency percentiles in ms, an error rate, and (open loop)
    a delivered rate close to the offered one."""

    p99_ms: float | None = None
    p95_ms: float | None = None
    max_error_rate: float = 0.001
    min_delivered: float = 0.95
    """Open loop: throughput / target rate below this means the server fell behind."""

    def check(self, step: StepResult) -> tuple[bool, str]:
        """(met, reason); the reason names the first limit broken, or 'ok'."""
        if step.ok == 0:
            return False, "no successful request"
        if step.error_rate > self.max_error_rate:
            return False, f"errors {step.error_rate:.2%} > {self.max_error_rate:.2%}"
        if self.p99_ms is not None and step.latency.p99_ms > self.p99_ms:
            return False, f"p99 {step.latency.p99_ms:.1f} ms > {self.p99_ms:g} ms"
        if self.p95_ms is not None and step.latency.p95_ms > self.p95_ms:
            return False, f"p95 {step.latency.p95_ms:.1f} ms > {self.p95_ms:g} ms"
        if step.mode.startswith("open") and step.throughput_rps < self.min_delivered * step.level:
            return False, f"delivered {step.throughput_rps:.0f} of {step.level:.0f} req/s"
        return True, "ok"


@dataclass(frozen=True, slots=True)
class SweepResult:
    steps: tuple[StepResult, ...]
    verdicts: tuple[tuple[bool, str], ...]
    best_index: int | None
    """The passing step with the highest throughput; None when no step passed."""

    @property
    def best(self) -> StepResult | None:
        return None if self.best_index is None else self.steps[self.best_index]

    @property
    def knee(self) -> StepResult | None:
        """The first failing step above the best one (or the first step when none passed)."""
        start = 0 if self.best_index is None else self.best_index + 1
        for step, (met, _) in zip(self.steps[start:], self.verdicts[start:], strict=True):
            if not met:
                return step
        return None


def geometric_levels(start: float, factor: float, count: int, integer: bool) -> list[float]:
    """`count` levels from `start`, each `factor` times the last (distinct integers when asked)."""
    if start <= 0 or factor <= 1 or count < 1:
        raise ValueError("need start > 0, factor > 1, count >= 1")
    levels: list[float] = []
    level = start
    while len(levels) < count:
        value = float(max(1, math.ceil(level))) if integer else level
        if not levels or value > levels[-1]:
            levels.append(value)
        level *= factor
    return levels


def run_sweep(
    levels: Sequence[float],
    run_level: Callable[[float], StepResult],
    slo: Slo,
    *,
    stop_after_failures: int = 2,
    on_step: Callable[[StepResult, bool, str], None] | None = None,
) -> SweepResult:
    """Run the levels in order; stop after `stop_after_failures` failing steps in a row.

    Bounded by len(levels) steps; each step bounds itself in time and count.
    """
    steps: list[StepResult] = []
    verdicts: list[tuple[bool, str]] = []
    failures = 0
    for level in levels:
        step = run_level(level)
        met, reason = slo.check(step)
        steps.append(step)
        verdicts.append((met, reason))
        if on_step is not None:
            on_step(step, met, reason)
        failures = 0 if met else failures + 1
        if failures >= stop_after_failures:
            break
    return SweepResult(tuple(steps), tuple(verdicts), best_of(steps, verdicts))


def best_of(steps: Sequence[StepResult], verdicts: Sequence[tuple[bool, str]]) -> int | None:
    passing = [i for i, (met, _) in enumerate(verdicts) if met]
    return max(passing, key=lambda i: steps[i].throughput_rps) if passing else None
