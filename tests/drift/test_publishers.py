from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import redis as sync_redis
from pytest_redis.executor import RedisExecutor
from redis.asyncio import Redis

from server.drift.monitor import MonitorConfig
from server.drift.state import RedisDriftState
from server.drift.stats import WindowSummary
from server.drift.tap import TapConfig

from ..polling import async_wait_until
from .data import StepClock, assert_summary_matches, requests, stacked
from .pipeline import Producer, drain, service

WINDOWS = TapConfig(window_s=60, window_rows=2000)


async def _through_redis(redis: Redis, redis_url: str, model: str,
                         parts: list[list[dict[str, Any]]]) -> WindowSummary | None:
    clock = StepClock()
    producers = [Producer(redis_url, f"replica-{i}", clock, WINDOWS) for i in range(len(parts))]
    for p in producers:
        await p.__aenter__()
    await asyncio.gather(*(p.send(model, part) for p, part in zip(producers, parts, strict=True)))
    for p in producers:
        await p.__aexit__()
    svc, _ = service(redis)
    await drain(svc)
    return await RedisDriftState(redis, MonitorConfig(bucket_s=60, sliding_buckets=1), "tessera-drift").current(model)


async def test_statistics_through_the_stream_equal_direct_statistics(redis: Redis, redis_url: str) -> None:
    reqs = requests(seed=30, count=40, rows=250, nan_fraction=0.02)
    current = await _through_redis(redis, redis_url, "m", [reqs])
    assert current is not None
    assert current.rows == 10_000 and current.windows == 5
    x = stacked(reqs, "x")
    for j in range(4):
        assert_summary_matches(current.features[("x", j)], x[:, j])
    assert_summary_matches(current.features[("c", 0)], stacked(reqs, "c")[:, 0])


async def test_windows_of_two_replicas_merge_to_what_one_replica_sees(redis: Redis, redis_url: str) -> None:
    reqs = requests(seed=31, count=40, rows=250)
    one = await _through_redis(redis, redis_url, "single", [reqs])
    two = await _through_redis(redis, redis_url, "pair", [reqs[0::2], reqs[1::2]])
    assert one is not None and two is not None
    assert one.rows == two.rows == 10_000
    assert two.windows == 6  # 2 full + 1 partial window per replica
    for key, mine in one.features.items():
        theirs = two.features[key]
        assert (mine.count, mine.missing, mine.min, mine.max, mine.frequencies) == (
            theirs.count, theirs.missing, theirs.min, theirs.max, theirs.frequencies)
        assert abs(mine.mean - theirs.mean) <= 1e-9 * max(1.0, abs(mine.mean))
        assert abs(mine.variance - theirs.variance) <= 1e-9 * mine.variance
        values = stacked(reqs, key[0])[:, key[1]]
        assert_summary_matches(theirs, values)


async def test_redis_down_never_fails_inference_drops_are_counted_and_publishing_resumes(
        own_redis: RedisExecutor) -> None:
    url = f"redis://127.0.0.1:{own_redis.port}/0"
    check = sync_redis.Redis(host="127.0.0.1", port=own_redis.port)
    producer = Producer(url, "replica", StepClock(), TapConfig(window_s=60, window_rows=100), buffer_windows=5,
                        backoff_initial_s=0.02, backoff_max_s=0.2, timeout_s=0.5)
    value = producer.value
    async with producer:
        await producer.send("m", requests(seed=40, count=4, rows=100))  # 4 windows: within the buffer
        await async_wait_until(lambda: value("tessera_drift_windows_published_total", model="m") == 4,
                               timeout_s=10, interval_s=0.02)
        assert check.xlen("tessera:drift:m") == 4

        own_redis.stop()
        for r in requests(seed=41, count=30, rows=100):  # observe() is synchronous: it cannot block
            producer.tap.observe("m", "1", r, {})
            await asyncio.sleep(0.005)
        await async_wait_until(lambda: value("tessera_drift_windows_dropped_total", model="m") == 25,
                               timeout_s=10, interval_s=0.02)
        assert value("tessera_drift_publisher_connected") == 0
        assert value("tessera_drift_publish_errors_total") >= 1
        assert value("tessera_drift_publisher_buffered_windows") == 5
        assert value("tessera_drift_dropped_total", model="m") == 0  # the tap itself kept up

        own_redis.start()  # the 5 buffered windows (the newest) must arrive by themselves
        await async_wait_until(lambda: value("tessera_drift_windows_published_total", model="m") == 9,
                               timeout_s=10, interval_s=0.02)
        assert _window_ids(check)[-5:] == [f"replica:{i}" for i in range(30, 35)]
        assert value("tessera_drift_publisher_connected") == 1
        assert value("tessera_drift_publisher_reconnects_total") == 1

        await producer.send("m", requests(seed=42, count=3, rows=100))
        await async_wait_until(lambda: value("tessera_drift_windows_published_total", model="m") == 12,
                               timeout_s=10, interval_s=0.02)
    assert _window_ids(check)[-8:] == [f"replica:{i}" for i in range(30, 38)]
    check.close()


def _window_ids(client: sync_redis.Redis) -> list[str]:
    entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange("tessera:drift:m")  # type: ignore[assignment]
    return [fields[b"window"].decode() for _, fields in entries]


async def test_windows_are_encoded_in_steps_that_let_requests_through(redis: Redis, redis_url: str,
                                                                      monkeypatch) -> None:
    """A wide window is encoded a few features at a time on the publisher's task, yielding between steps."""
    import server.drift.publishers as publishers
    from server.drift.codec import decode_window, encode_window, encode_window_steps

    window = WindowSummary(model="m", window_id="w", producer="p", start_ms=0, end_ms=1)
    window.fold_inputs({"x": np.random.default_rng(9).standard_normal((50, 300)).astype(np.float32)}, rows=50)
    steps = encode_window_steps(window, features_per_step=64)
    yields = 0
    while True:
        try:
            next(steps)
            yields += 1
        except StopIteration as done:
            payload = done.value
            break
    assert yields == 6  # 300 features, 64 a step, then joining the batches
    assert payload == encode_window(window) and decode_window(payload).rows == 50

    encoded: list[str] = []
    real = publishers.encode_window_steps

    def recording(w: WindowSummary) -> Any:
        encoded.append(w.window_id)
        return real(w)

    monkeypatch.setattr(publishers, "encode_window_steps", recording)
    await _through_redis(redis, redis_url, "m", [requests(seed=32, count=4, rows=500)])
    assert len(encoded) == 1  # 2,000 rows: one window, encoded by the stepwise encoder
