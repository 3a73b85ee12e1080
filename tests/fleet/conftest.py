"""Fleet fixtures: the drift tests' redis-server fixtures, and replicas as real `tessera serve` processes."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pytest_redis.executor import RedisExecutor

from tests.drift.conftest import drift_redis_proc, drift_redisdb, own_redis, redis_url

from .replicas import Replica, start_replicas

__all__ = ["drift_redis_proc", "drift_redisdb", "own_redis", "redis_url"]


@pytest.fixture
def fleet(own_redis: RedisExecutor, tmp_path: Path) -> Iterator[Callable[..., list[Replica]]]:
    """`fleet(repository, *flags, count=3)`: replicas sharing this test's own redis-server."""
    started: list[Replica] = []

    def start(repository: Path, *flags: str, count: int = 3) -> list[Replica]:
        replicas = start_replicas(repository, f"redis://127.0.0.1:{own_redis.port}/0", tmp_path, len(started),
                                  count, *flags)
        started.extend(replicas)
        return replicas

    yield start
    for replica in started:  # all drain at once
        replica.terminate()
    for replica in started:
        replica.stop()
    if os.environ.get("TESSERA_TEST_LOGS"):
        for replica in started:
            print(f"---- {replica.name}\n{''.join(replica.log)}")
