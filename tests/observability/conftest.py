"""Redis fixtures for the payload log tests: the drift tests' real redis-server fixtures."""

from __future__ import annotations

from tests.drift.conftest import drift_redis_proc, drift_redisdb, own_redis, redis_url

__all__ = ["drift_redis_proc", "drift_redisdb", "own_redis", "redis_url"]
