"""The drift service is killed (SIGKILL) and restarted mid-stream: no window is lost or counted twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from server.drift.monitor import MonitorConfig
from server.drift.state import RedisDriftState, StateKeys
from server.drift.tap import TapConfig

from ..polling import async_wait_until
from .data import StepClock, requests
from .pipeline import Producer

ROOT = Path(__file__).resolve().parents[2]
STREAM = "tessera:drift:m"


def _start_service(redis_url: str, consumer: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "server.drift", "drift", "--redis-url", redis_url, "--http-host", "127.0.0.1",
         "--http-port", "0", "--consumer", consumer, "--bucket-s", "60", "--sliding-buckets", "1",
         "--claim-idle-ms", "300", "--log-level", "WARNING"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE)


async def _seen(redis: Redis) -> int:
    return int(await redis.zcard(StateKeys("m").seen))


def _kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert proc.stderr is not None
    proc.stderr.close()


async def _redeliver_some(redis: Redis, count: int) -> None:
    """What a publisher retry after a lost reply does: the same windows again, under new message ids."""
    entries: list[tuple[bytes, dict[Any, Any]]] = await redis.xrange(STREAM, count=count)  # type: ignore[assignment]
    for _, fields in entries:
        await redis.xadd(STREAM, fields)


async def test_killed_and_restarted_service_loses_and_duplicates_no_window(redis: Redis, redis_url: str) -> None:
    clock = StepClock()
    batches = [requests(seed=80 + i, count=20, rows=100) for i in range(4)]
    services: list[subprocess.Popen[bytes]] = []
    try:
        async with Producer(redis_url, "replica", clock, TapConfig(window_s=60, window_rows=100),
                            buffer_windows=1000) as producer:
            await producer.send("m", batches[0])
            services.append(_start_service(redis_url, "svc-a"))
            await producer.send("m", batches[1])
            await async_wait_until(lambda: _gt(redis, 5), timeout_s=20)
            _kill(services[-1])  # mid-stream: some windows folded, others pending or unread

            await producer.send("m", batches[2])
            await _redeliver_some(redis, 10)
            services.append(_start_service(redis_url, "svc-a"))  # same name: takes back its own pending
            await async_wait_until(lambda: _gt(redis, 45), timeout_s=20)
            _kill(services[-1])

            await producer.send("m", batches[3])
            services.append(_start_service(redis_url, "svc-c"))  # new name: claims what others left
        await async_wait_until(lambda: _done(redis), timeout_s=20)
    finally:
        for proc in services:
            if proc.poll() is None:
                _kill(proc)
    current = await RedisDriftState(redis, MonitorConfig(bucket_s=60, sliding_buckets=1), "tessera-drift").current("m")
    assert current is not None
    assert await _seen(redis) == 80
    assert (current.rows, current.windows) == (8000, 80)
    assert current.features[("x", 0)].count == 8000


async def _gt(redis: Redis, windows: int) -> bool:
    return await _seen(redis) > windows


async def _done(redis: Redis) -> bool:
    groups = await redis.xinfo_groups(STREAM)
    return bool(groups) and groups[0]["pending"] == 0 and groups[0]["lag"] == 0 and await _seen(redis) == 80
