"""Sweep verdicts and capacity plans, on synthetic steps."""

from __future__ import annotations

import pytest

from loadtests.plan import classify_bound, plan_capacity
from loadtests.sweep import Slo, SweepResult, best_of, geometric_levels, run_sweep

from .synthetic import server, step

# An open-loop sweep of one replica: fine up to 1600 req/s, then the queue builds.
CURVE = {400: (400, 3.0), 800: (800, 4.0), 1600: (1590, 9.0), 3200: (2100, 180.0), 6400: (2150, 900.0)}


def _run(level: float):  # type: ignore[no-untyped-def]
    delivered, p99 = CURVE[int(level)]
    return step(level, delivered, p99, view=server(queue_p99_ms=p99 * 0.8, compute_p99_ms=1.0))


def test_sweep_finds_the_best_throughput_within_the_slo_and_stops_after_failures() -> None:
    seen: list[float] = []
    sweep = run_sweep([400, 800, 1600, 3200, 6400, 12800], _run, Slo(p99_ms=25.0), stop_after_failures=2,
                      on_step=lambda s, met, reason: seen.append(s.level))
    assert seen == [400, 800, 1600, 3200, 6400]  # 12800 never runs: two failures in a row
    assert sweep.best is not None and sweep.best.level == 1600
    assert sweep.knee is not None and sweep.knee.level == 3200
    assert sweep.verdicts[3] == (False, "p99 180.0 ms > 25 ms")


def test_slo_checks_errors_p95_and_delivered_rate() -> None:
    slo = Slo(p99_ms=50.0, p95_ms=5.0, max_error_rate=0.01)
    assert slo.check(step(100, 100, 4.0)) == (True, "ok")
    assert not slo.check(step(100, 100, 4.0, errors=50))[0]
    assert slo.check(step(100, 100, 10.0))[1].startswith("p95")
    assert slo.check(step(1000, 800, 4.0))[1] == "delivered 800 of 1000 req/s"
    assert slo.check(step(1000, 800, 4.0, mode="closed"))[0]  # closed loops have no offered rate


def test_plan_rounds_replicas_up_with_headroom_and_names_queueing() -> None:
    sweep = run_sweep([400, 800, 1600, 3200, 6400], _run, Slo(p99_ms=25.0))
    plan = plan_capacity(sweep, target_rps=20_000, headroom=0.3)
    assert plan.capacity_rps == 1590
    assert plan.replicas == 18  # 20000 / (1590 * 0.7) = 17.97
    assert plan.bound == "queueing"
    assert not plan.lower_bound
    assert "18 replica(s)" in plan.describe()


@pytest.mark.parametrize(("kwargs", "bound"), [
    ({"cpu": 0.95}, "client"),
    ({"missed": 0.05, "lag_ms": 20.0}, "client"),
    ({"missed": 0.05, "lag_ms": 3.0, "view": server(queue_p99_ms=30.0)}, "queueing"),  # lag explains little
    ({"view": server(queue_p99_ms=30.0, compute_p99_ms=2.0)}, "queueing"),
    ({"view": server(queue_p99_ms=2.0, compute_p99_ms=30.0)}, "compute"),
    ({"view": server(queue_p99_ms=2.0, compute_p99_ms=2.0)}, "transport"),
])
def test_bound_is_classified_from_the_knee(kwargs: dict[str, object], bound: str) -> None:
    assert classify_bound(step(1000, 900, 40.0, **kwargs))[0] == bound  # type: ignore[arg-type]


def test_plan_without_a_passing_step_has_no_replica_count() -> None:
    steps = (step(100, 100, 90.0),)
    verdicts = (Slo(p99_ms=25.0).check(steps[0]),)
    plan = plan_capacity(SweepResult(steps, verdicts, best_of(steps, verdicts)), target_rps=1000)
    assert plan.replicas is None and plan.capacity_rps is None
    assert "No step met the SLO" in plan.describe()


def test_a_sweep_that_never_fails_gives_a_lower_bound() -> None:
    sweep = run_sweep([400, 800], _run, Slo(p99_ms=25.0))
    plan = plan_capacity(sweep, target_rps=1000, headroom=0.0)
    assert plan.lower_bound and plan.replicas == 2 and "at least 800" in plan.describe()


def test_geometric_levels() -> None:
    assert geometric_levels(1, 2, 6, integer=True) == [1, 2, 4, 8, 16, 32]
    assert geometric_levels(1, 1.3, 4, integer=True) == [1, 2, 3, 4]  # distinct integers
    assert geometric_levels(100, 1.5, 3, integer=False) == [100, 150, 225]
    with pytest.raises(ValueError):
        geometric_levels(0, 2, 3, integer=True)
