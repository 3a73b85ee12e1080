"""The drift service's state in Redis: merged buckets, processed window ids, the latest report.

Folding a window and acknowledging its stream message happen in one MULTI/EXEC under WATCH, and
a window id already in the `seen` set is only acknowledged: a restart or a redelivery never
loses a window whose message was acknowledged, and never counts one twice. Several services
can fold into the same state concurrently (optimistic locking retries on conflict).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from redis.asyncio import Redis
from redis.exceptions import WatchError

from .codec import decode_window, encode_window
from .monitor import MonitorConfig
from .stats import WindowSummary, merge_windows

__all__ = ["FoldOutcome", "RedisDriftState", "StateKeys"]

STATE_PREFIX = "tessera:drift-state:"


class FoldOutcome(Enum):
    FOLDED = "folded"
    DUPLICATE = "duplicate"
    STALE = "stale"


@dataclass(frozen=True, slots=True)
class StateKeys:
    model: str

    @property
    def base(self) -> str:
        return f"{STATE_PREFIX}{self.model}"

    def bucket(self, bucket_ms: int) -> str:
        return f"{self.base}:bucket:{bucket_ms}"

    @property
    def seen(self) -> str:
        return f"{self.base}:seen"

    @property
    def latest(self) -> str:
        return f"{self.base}:latest"

    @property
    def report(self) -> str:
        return f"{self.base}:report"


class RedisDriftState:
    """Folds windows into buckets in Redis and reads sliding windows back. Runs on the event loop."""

    def __init__(self, redis: Redis, config: MonitorConfig, group: str) -> None:
        self._redis = redis
        self._config = config
        self._group = group
        keep = config.retention_buckets or config.sliding_buckets + 2
        # Keys outlive the retained buckets; the TTL only collects models that stopped sending.
        self._ttl_ms = max(3_600_000, 2 * keep * config.bucket_ms)

    async def fold(self, stream: str, message_id: bytes | str, window: WindowSummary) -> FoldOutcome:
        """Merge a window into its bucket and XACK its message, atomically; idempotent per window id."""
        keys = StateKeys(window.model)
        bucket = self._config.bucket_of(window)
        bucket_key = keys.bucket(bucket)
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(bucket_key, keys.seen, keys.latest)
                    stored_latest = await pipe.get(keys.latest)
                    latest = max(int(stored_latest), bucket) if stored_latest is not None else bucket
                    if await pipe.zscore(keys.seen, window.window_id) is not None:
                        outcome = FoldOutcome.DUPLICATE
                    elif bucket < self._config.oldest_kept(latest):
                        outcome = FoldOutcome.STALE
                    else:
                        outcome = FoldOutcome.FOLDED
                        stored = await pipe.get(bucket_key)
                        parts = [decode_window(stored)] if stored is not None else []
                        merged = merge_windows(window.model, [*parts, window], f"bucket:{bucket}")
                        assert merged is not None
                        payload = encode_window(merged)
                    pipe.multi()  # type: ignore[no-untyped-call]
                    if outcome is FoldOutcome.FOLDED:
                        pipe.set(bucket_key, payload, px=self._ttl_ms)
                        pipe.zadd(keys.seen, {window.window_id: bucket})
                        pipe.zremrangebyscore(keys.seen, "-inf", f"({self._config.oldest_kept(latest)}")
                        pipe.pexpire(keys.seen, self._ttl_ms)
                        pipe.set(keys.latest, latest, px=self._ttl_ms)
                    pipe.xack(stream, self._group, message_id)
                    await pipe.execute()
                    return outcome
                except WatchError:
                    continue

    async def current(self, model: str) -> WindowSummary | None:
        """The merged sliding window ending at the model's newest bucket; None before any window."""
        keys = StateKeys(model)
        latest = await self._redis.get(keys.latest)
        if latest is None:
            return None
        names = [keys.bucket(b) for b in self._config.sliding(int(latest))]
        payloads = await self._redis.mget(names)
        return merge_windows(model, [decode_window(p) for p in payloads if p is not None])

    async def save_report(self, model: str, body: bytes) -> None:
        await self._redis.set(StateKeys(model).report, body, px=self._ttl_ms)
