"""The drift service (`tessera drift`): reads every model's stream with a consumer group, folds the
windows into shared state in Redis, evaluates the sliding window against the reference profile,
exports scores and alert states, keeps reports, and POSTs alert changes to a webhook.

Several services can share the group: each message goes to one of them, the state they fold into
is shared, and a message is acknowledged only in the transaction that folds it in.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from .codec import decode_window
from .evaluate import evaluate
from .metrics import MonitorMetrics
from .monitor import MonitorConfig, log_transitions
from .outputs import is_output_key, sibling_reference
from .profiles import ProfileStore
from .publishers import STREAM_PREFIX
from .reports import ReportBook
from .state import FoldOutcome, RedisDriftState
from .webhook import WebhookNotifier

__all__ = ["DriftService", "ServiceConfig"]

logger = logging.getLogger(__name__)

Entry = tuple[bytes, dict[bytes, bytes] | None]


def _default_consumer() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceConfig:
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    """Buckets, sliding window and thresholds."""

    group: str = "tessera-drift"
    """Consumer group shared by every drift service."""

    consumer: str = field(default_factory=_default_consumer)
    """This service's name in the group; a stable name lets a restart take back its own pending messages."""

    block_ms: int = 1000
    """Longest wait of one XREADGROUP."""

    batch_messages: int = 64
    """Messages read per stream per XREADGROUP."""

    discover_every_s: float = 5.0
    """Seconds between scans for new model streams."""

    claim_idle_ms: int = 60_000
    """Pending messages idle this long (their consumer died) are claimed by this service."""

    reevaluate_every_s: float = 30.0
    """Seconds between evaluations of every model without new windows (others' folds, profile changes)."""


class DriftService:
    """The consumer loop. `run` until cancelled; `step` does one round (tests drive it directly)."""

    def __init__(self, redis: Redis, config: ServiceConfig, profiles: ProfileStore, reports: ReportBook,
                 metrics: MonitorMetrics, notifier: WebhookNotifier | None = None) -> None:
        self._redis = redis
        self._config = config
        self._profiles = profiles
        self._reports = reports
        self._metrics = metrics
        self._notifier = notifier
        self._state = RedisDriftState(redis, config.monitor, config.group)
        self._streams: list[bytes] = []
        self._own_pending_done: set[bytes] = set()
        self._discovered_at = -1e18
        self._claimed_at = -1e18
        self._evaluated_at = time.monotonic()

    async def run(self) -> None:
        logger.info("drift service %s in group %s", self._config.consumer, self._config.group)
        delay = 0.1
        while True:
            try:
                await self.step()
                delay = 0.1
            except (RedisError, OSError) as exc:
                logger.warning("drift service: Redis error (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def step(self) -> int:
        """One round: discover streams, claim abandoned messages, fold new ones, evaluate.

        Returns how many messages it handled.
        """
        now = time.monotonic()
        if now - self._discovered_at >= self._config.discover_every_s:
            await self._discover()
            self._discovered_at = now
        if not self._streams:
            await self._sleep_ms(min(self._config.block_ms, 200))
            return 0
        entries = await self._pending_of_mine()
        if now - self._claimed_at >= self._config.claim_idle_ms / 1000:
            entries += await self._claim()
            self._claimed_at = now
        if not entries:
            entries = await self._read_new()
        touched = await self._fold_all(entries)
        if now - self._evaluated_at >= self._config.reevaluate_every_s:
            touched |= {s[len(STREAM_PREFIX):].decode() for s in self._streams}
            self._evaluated_at = now
        for model in sorted(touched):
            await self.evaluate(model)
        return len(entries)

    async def evaluate(self, model: str) -> dict[str, Any] | None:
        """Evaluate a model's sliding window now; returns the report (None before any window)."""
        current = await self._state.current(model)
        if current is None:
            return None
        reference = await self._profiles.get(model)
        if reference is None and is_output_key(model):  # no output profile: the model's other versions
            siblings = [s[len(STREAM_PREFIX):].decode() for s in self._streams]
            reference = sibling_reference(model, {k: await self._state.current(k) for k in siblings
                                                  if k != model and is_output_key(k)})
        report = evaluate(current, reference, self._config.monitor.evaluation)
        transitions = self._reports.record(report)
        body = report.to_dict()
        await self._state.save_report(model, orjson.dumps(body))
        log_transitions(transitions)
        if self._notifier is not None:
            await self._notifier.notify(transitions)
        return body

    # -- stream plumbing -----------------------------------------------------------------------
    async def _discover(self) -> None:
        found: set[bytes] = set()
        async for key in self._redis.scan_iter(match=f"{STREAM_PREFIX}*", count=500, _type="STREAM"):
            found.add(key if isinstance(key, bytes) else str(key).encode())
        for key in sorted(found - set(self._streams)):
            try:
                await self._redis.xgroup_create(key, self._config.group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            logger.info("drift service: reading %s", key.decode())
        self._streams = sorted(found | set(self._streams))

    async def _pending_of_mine(self) -> list[tuple[bytes, Entry]]:
        """Messages delivered to this consumer name before a restart and never acknowledged."""
        todo = [s for s in self._streams if s not in self._own_pending_done]
        if not todo:
            return []
        reply = await self._redis.xreadgroup(self._config.group, self._config.consumer,
                                             dict.fromkeys(todo, "0"), count=self._config.batch_messages)
        entries = _flatten(reply)
        have = {stream for stream, _ in entries}
        self._own_pending_done.update(s for s in todo if s not in have)
        return entries

    async def _claim(self) -> list[tuple[bytes, Entry]]:
        entries: list[tuple[bytes, Entry]] = []
        for stream in self._streams:
            reply = await self._redis.xautoclaim(stream, self._config.group, self._config.consumer,
                                                 self._config.claim_idle_ms, start_id="0-0",
                                                 count=self._config.batch_messages)
            entries += [(stream, (mid, fields)) for mid, fields in reply[1]]
        return entries

    async def _read_new(self) -> list[tuple[bytes, Entry]]:
        reply = await self._redis.xreadgroup(self._config.group, self._config.consumer,
                                             dict.fromkeys(self._streams, ">"),
                                             count=self._config.batch_messages, block=self._config.block_ms)
        return _flatten(reply)

    async def _fold_all(self, entries: Iterable[tuple[bytes, Entry]]) -> set[str]:
        touched: set[str] = set()
        for stream, (message_id, fields) in entries:
            model = stream[len(STREAM_PREFIX):].decode()
            payload = (fields or {}).get(b"payload")
            try:
                window = decode_window(payload) if payload is not None else None
            except Exception as exc:
                logger.error("drift service: undecodable message %s on %s: %s", message_id, stream, exc)
                window = None
            if window is None or window.model != model:
                self._metrics.windows_invalid.inc()
                await self._redis.xack(stream, self._config.group, message_id)
                continue
            outcome = await self._state.fold(stream.decode(), message_id, window)
            counter = {FoldOutcome.FOLDED: self._metrics.windows_folded,
                       FoldOutcome.DUPLICATE: self._metrics.windows_duplicate,
                       FoldOutcome.STALE: self._metrics.windows_stale}[outcome]
            counter.labels(model).inc()
            if outcome is FoldOutcome.FOLDED:
                touched.add(model)
        return touched

    async def _sleep_ms(self, ms: int) -> None:
        await asyncio.sleep(ms / 1000)


def _flatten(reply: Any) -> list[tuple[bytes, Entry]]:
    """XREADGROUP's reply ([[stream, [(id, fields), ...]], ...]) as (stream, (id, fields)) pairs."""
    return [(stream, (message_id, fields)) for stream, messages in reply or []
            for message_id, fields in messages]
