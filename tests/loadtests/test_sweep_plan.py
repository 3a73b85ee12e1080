"""Sweep verdicts and capacity plans, on synthetic steps."""

from __future__ import annotations

import pytest

from loadtests.plan import FleetOptions, classify_bound, plan_capacity
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


# The same replica with the server's autoscaling signals: requests in the server grow with the rate.
FLEET_CURVE = {400: (400, 3.0, 1.2), 800: (800, 4.0, 3.2), 1600: (1590, 9.0, 14.0), 3200: (2100, 180.0, 380.0)}


def _fleet_step(level: float):  # type: ignore[no-untyped-def]
    delivered, p99, pending = FLEET_CURVE[int(level)]
    return step(level, delivered, p99, view=server(queue_p99_ms=p99 * 0.8, compute_p99_ms=1.0, pending=pending))


def test_fleet_plan_adds_pods_for_a_lost_zone_and_sets_the_hpa_target_at_the_planned_rate() -> None:
    sweep = run_sweep([400, 800, 1600, 3200], _fleet_step, Slo(p99_ms=25.0))
    plan = plan_capacity(sweep, 20_000, 0.3, FleetOptions(workers_per_pod=2, zones=3))
    assert plan.replicas == 18  # 20000 / (1590 * 0.7)
    # 13 pods carry 20000 at full capacity (12.6); with 3 zones the pods left after losing one must be >= 13:
    # 18 pods -> 12 left; 20 pods -> 13 left (7 per zone).
    assert plan.pods == 20
    # Planned per-pod rate 1113 req/s: pending interpolated between 800 (3.2) and 1590 (14.0).
    assert plan.hpa_target == pytest.approx(3.2 + (1113 - 800) / (1590 - 800) * (14.0 - 3.2), rel=1e-3)
    assert plan.hpa_at_best == 14.0
    text = plan.describe()
    assert "20 pod(s) x 2 worker(s) per pod, 7 per zone over 3 zones" in text
    assert "HPA target: tessera_pending_requests" in text and "averageValue 7.48" in text
    assert "Assumptions:" in text and "scales linearly" in text and "one zone lost" in text


def test_fleet_plan_with_queue_p99_signal_one_zone_and_a_floor_of_pods() -> None:
    sweep = run_sweep([400, 800, 1600, 3200], _fleet_step, Slo(p99_ms=25.0))
    plan = plan_capacity(sweep, 300, 0.3, FleetOptions(zones=1, hpa_signal="queue-p99", min_pods=2))
    assert plan.replicas == 1 and plan.pods == 2  # the floor
    # The target is per pod, at the planned per-pod rate (1113 req/s), whatever the fleet's total:
    # queue p99 between 800 (3.2 ms) and 1590 req/s (7.2 ms).
    assert plan.hpa_target == pytest.approx(3.2 + (1113 - 800) / (1590 - 800) * (7.2 - 3.2), rel=1e-3)
    assert "queue_duration" in plan.describe() and "no zone loss planned" in plan.describe()


def test_fleet_plan_without_server_metrics_says_the_target_is_unknown() -> None:
    sweep = run_sweep([400, 800, 1600, 3200], _run, Slo(p99_ms=25.0))  # synthetic server view: no pending figure
    plan = plan_capacity(sweep, 2000, 0.3)
    assert plan.hpa_target is None and "HPA target: unknown" in plan.describe()
