"""Drift fixtures: a real redis-server from pytest-redis, async clients, and a restartable Redis."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import port_for
import pytest
from prometheus_client import CollectorRegistry
from pytest_redis import factories
from pytest_redis.executor import RedisExecutor
from redis import Redis as SyncRedis
from redis.asyncio import Redis

REDIS_SERVER = "/usr/bin/redis-server"

drift_redis_proc = factories.redis_proc(executable=REDIS_SERVER)  # any free port
drift_redisdb = factories.redisdb("drift_redis_proc")


@pytest.fixture
def redis_url(drift_redisdb: SyncRedis, drift_redis_proc: RedisExecutor) -> str:
    """URL of the session's redis-server; the database is flushed after each test."""
    return f"redis://{drift_redis_proc.host}:{drift_redis_proc.port}/0"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def own_redis() -> Iterator[RedisExecutor]:
    """A redis-server of this test alone, so the test may stop and restart it."""
    with tempfile.TemporaryDirectory(prefix="rd") as datadir:
        executor = RedisExecutor(REDIS_SERVER, databases=1, redis_timeout=30, loglevel="warning",
                                 host="127.0.0.1", port=port_for.select_random(), datadir=Path(datadir))
        executor.start()
        yield executor
        if executor.running():
            executor.stop()
