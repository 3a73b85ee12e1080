from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from server.drift.codec import write_profile_file
from server.drift.metrics import TapMetrics
from server.drift.profiles import profile_path
from server.drift.sidepath import DriftSidePath
from server.drift.stats import WindowSummary
from server.drift.tap import DriftTap, TapConfig

from ..polling import async_wait_until
from .data import StepClock, assert_summary_matches, requests, stacked


class Collected:
    """A Publisher that keeps what it is given."""

    def __init__(self) -> None:
        self.windows: list[WindowSummary] = []

    def publish(self, window: WindowSummary) -> None:
        self.windows.append(window)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_a_full_queue_drops_and_counts_instead_of_blocking(registry: CollectorRegistry) -> None:
    tap = DriftTap(Collected(), TapMetrics(registry), TapConfig(queue_size=3))
    x = {"x": np.zeros((2, 4), dtype=np.float32)}
    for _ in range(10):
        tap.observe("m", "1", x, {})
    assert _value(registry, "tessera_drift_dropped_total", model="m") == 7
    tap.flush(close_all=True)


async def test_models_not_watched_are_ignored(registry: CollectorRegistry) -> None:
    sink = Collected()
    tap = DriftTap(sink, TapMetrics(registry), TapConfig(models=frozenset({"a"})))
    tap.observe("b", "1", {"x": np.zeros((2, 4), dtype=np.float32)}, {})
    tap.flush(close_all=True)
    assert sink.windows == []


async def test_an_input_wider_than_the_feature_limit_is_counted_not_summarised(registry: CollectorRegistry) -> None:
    # A free feature dimension lets a client pick the width: one summary per column must stay bounded.
    sink = Collected()
    tap = DriftTap(sink, TapMetrics(registry), TapConfig(max_features=8))
    tap.observe("m", "1", {"wide": np.full((2, 9), "ab"), "x": np.zeros((2, 8), dtype=np.float32)}, {})
    tap.flush(close_all=True)
    [window] = sink.windows
    assert window.rows == 2 and {name for name, _ in window.features} == {"x"}
    assert _value(registry, "tessera_drift_skipped_inputs_total", model="m") == 1


async def test_windows_close_by_rows_and_by_time_aligned_to_the_clock(registry: CollectorRegistry) -> None:
    sink, clock = Collected(), StepClock(1_000_000.0 + 5)
    tap = DriftTap(sink, TapMetrics(registry), TapConfig(window_s=60, window_rows=1000), clock=clock,
                   producer="p")
    reqs = requests(seed=1, count=6, rows=400)
    for r in reqs[:3]:
        tap.observe("m", "1", r, {})
        tap.flush()
    assert [w.rows for w in sink.windows] == [1200]  # closed by the request that passed 1000 rows
    tap.observe("m", "1", reqs[3], {})
    tap.flush()
    clock.now += 60
    tap.flush()
    assert [w.rows for w in sink.windows] == [1200, 400]
    assert sink.windows[1].start_ms == 999_960_000 and sink.windows[1].end_ms == 1_000_020_000
    assert [w.window_id for w in sink.windows] == ["p:1", "p:2"]
    tap.observe("m", "1", reqs[4], {})
    await tap.stop()
    assert [w.rows for w in sink.windows] == [1200, 400, 400]
    assert sink.windows[2].start_ms == 1_000_020_000


async def test_the_background_task_folds_requests_of_varying_sizes(registry: CollectorRegistry) -> None:
    sink = Collected()
    tap = DriftTap(sink, TapMetrics(registry), TapConfig(window_s=3600))
    await tap.start()
    reqs = [r for n in (1, 7, 64, 3) for r in requests(seed=n, count=5, rows=n, nan_fraction=0.1)]
    for r in reqs:
        tap.observe("m", "1", r, {})
    await asyncio.sleep(0.05)
    await tap.stop()
    merged = sink.windows[0]
    for w in sink.windows[1:]:
        merged.merge(w)
    assert merged.rows == sum(r["x"].shape[0] for r in reqs)
    for j in range(4):
        assert_summary_matches(merged.features[("x", j)], stacked(reqs, "x")[:, j])


async def test_embedded_monitor_shows_drift_without_redis(tmp_path: Path, registry: CollectorRegistry) -> None:
    reference = WindowSummary(model="m", window_id="ref", producer="t", start_ms=0, end_ms=0,
                              names={("x", 1): "income"})
    for r in requests(seed=20, count=10, rows=1000):
        reference.fold_inputs(r, rows=1000)
    profile_path(tmp_path, "m").parent.mkdir()
    write_profile_file(reference, profile_path(tmp_path, "m"))
    side = DriftSidePath.create(registry=registry, repository=tmp_path, redis_url=None,
                                tap_config=TapConfig(window_s=0, window_rows=2000))
    await side.start()
    for r in requests(seed=21, count=4, rows=500) + requests(seed=22, count=8, rows=500, shift={1: 1.5}):
        side.tap.observe("m", "1", r, {})
        await asyncio.sleep(0)
    await side.stop()
    assert side.monitor is not None
    report = side.monitor.latest_reports()["m"]
    assert [n for n, f in report["features"].items() if f["state"] == "alert"] == ["income"]
    assert _value(registry, "tessera_drift_feature_state", model="m", feature="income") == 2
    assert _value(registry, "tessera_drift_feature_state", model="m", feature="x[0]") == 0
    assert _value(registry, "tessera_drift_windows_published_total", model="m") == 3


async def test_a_wide_input_is_folded_a_block_of_columns_at_a_time(registry: CollectorRegistry) -> None:
    """Other tasks on the loop run between blocks, and the blocks add up to the whole input."""
    sink = Collected()
    tap = DriftTap(sink, TapMetrics(registry), TapConfig(window_s=3600, block_values=64 * 16))
    wide = np.random.default_rng(3).standard_normal((64, 512)).astype(np.float32)
    seen: set[int] = set()  # how many features the open window held, at each turn of another task

    async def ticker() -> None:
        while True:
            if "m" in tap._open:
                seen.add(len(tap._open["m"].summary.features))
            await asyncio.sleep(0)

    other = asyncio.create_task(ticker())
    await tap.start()
    tap.observe("m", "1", {"x": wide}, {})
    # The turn has ended once its CPU is on the books (a fixed sleep raced a slow machine).
    await async_wait_until(lambda: _value(registry, "tessera_drift_loop_cpu_seconds_total") > 0, timeout_s=10)
    other.cancel()
    await tap.stop()
    assert set(range(16, 512, 16)) <= seen  # the ticker ran between every two blocks of 16 columns
    assert _value(registry, "tessera_drift_loop_cpu_seconds_total") > 0  # the fold's CPU is on the books
    (window,) = sink.windows
    assert window.rows == 64 and len(window.features) == 512
    for j in (0, 15, 16, 511):
        assert_summary_matches(window.features[("x", j)], wide[:, j])


async def test_stopping_between_blocks_finishes_the_turn(registry: CollectorRegistry) -> None:
    sink = Collected()
    tap = DriftTap(sink, TapMetrics(registry), TapConfig(window_s=3600, block_values=1))
    reqs = requests(seed=5, count=3, rows=2)
    await tap.start()
    for r in reqs:
        tap.observe("m", "1", r, {})
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # the task is now inside its turn, between two single-column blocks
    await tap.stop()
    (window,) = sink.windows
    assert window.rows == 6
    for j in range(4):
        assert_summary_matches(window.features[("x", j)], stacked(reqs, "x")[:, j])
    assert_summary_matches(window.features[("c", 0)], stacked(reqs, "c")[:, 0])


async def test_the_cpu_budget_stretches_the_pause_and_excess_traffic_is_dropped_and_counted(
        registry: CollectorRegistry) -> None:
    """With a tiny budget the first turn is followed by a long pause: later requests wait or drop."""
    sink = Collected()
    tap = DriftTap(sink, TapMetrics(registry), TapConfig(window_s=3600, queue_size=4, cpu_budget=1e-6))
    wide = {"x": np.random.default_rng(4).standard_normal((32, 256)).astype(np.float32)}
    await tap.start()
    tap.observe("m", "1", wide, {})
    await asyncio.sleep(0.2)  # folded, and the pause is now far longer than the test
    for _ in range(10):
        tap.observe("m", "1", wide, {})
    await asyncio.sleep(0.3)
    assert len(tap._queue) == 4  # nothing folded during the pause
    assert _value(registry, "tessera_drift_dropped_total", model="m") == 6
    await tap.stop()
    assert sum(w.rows for w in sink.windows) == 5 * 32


async def test_the_embedded_monitor_evaluates_off_the_event_loop_thread(tmp_path: Path,
                                                                        registry: CollectorRegistry) -> None:
    import threading

    side = DriftSidePath.create(registry=registry, repository=tmp_path, redis_url=None,
                                tap_config=TapConfig(window_s=0, window_rows=100))
    assert side.monitor is not None
    threads: list[str] = []
    submit = side.monitor.submit

    def recording(window: WindowSummary) -> object:
        threads.append(threading.current_thread().name)
        return submit(window)

    side.monitor.submit = recording  # type: ignore[method-assign]
    await side.start()
    for r in requests(seed=23, count=3, rows=100):
        side.tap.observe("m", "1", r, {})
    await side.stop()
    assert len(threads) == 3 and all(name.startswith("drift-monitor") for name in threads)
    assert _value(registry, "tessera_drift_windows_published_total", model="m") == 3


def test_a_queue_of_no_places_is_refused() -> None:
    with pytest.raises(ValueError, match="queue_size must be at least 1"):
        TapConfig(queue_size=0)
