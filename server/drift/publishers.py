"""Where closed windows go: a Redis Stream per model, or the embedded monitor of this process.

`publish` is called on the event loop by the tap's background task and never blocks or raises: the
Redis publisher encodes windows on its own task a few features at a time, and the embedded monitor
folds and evaluates them on a worker thread. The Redis publisher buffers windows (up to a bound,
then drops the oldest and counts them) while Redis is away, and reconnects with exponential
backoff, logging and counting each outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from ..background import spawn
from .background import run_steps
from .codec import encode_window_steps
from .metrics import TapMetrics
from .stats import WindowSummary

if TYPE_CHECKING:
    from .monitor import DriftMonitor

__all__ = ["STREAM_PREFIX", "InProcessPublisher", "Publisher", "RedisStreamPublisher", "stream_key"]

logger = logging.getLogger(__name__)

STREAM_PREFIX = "tessera:drift:"


def stream_key(model: str) -> str:
    return STREAM_PREFIX + model


class Publisher(Protocol):
    """Takes closed windows off the tap. `publish` runs on the event loop and must not block."""

    def publish(self, window: WindowSummary) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class InProcessPublisher:
    """Feeds the embedded DriftMonitor when no Redis is configured, on a worker thread in window order."""

    def __init__(self, monitor: DriftMonitor, metrics: TapMetrics) -> None:
        self._monitor = monitor
        self._metrics = metrics
        # One thread keeps the windows in order and the monitor's state free of locks.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="drift-monitor")
        self._pending: set[asyncio.Future[None]] = set()

    def publish(self, window: WindowSummary) -> None:
        try:
            future = asyncio.get_running_loop().run_in_executor(self._worker, self._submit, window)
        except RuntimeError:  # no running loop (a synchronous caller): evaluate here
            self._submit(window)
            return
        self._pending.add(future)
        future.add_done_callback(self._done)

    def _submit(self, window: WindowSummary) -> None:
        self._monitor.submit(window)
        self._metrics.windows_published.labels(window.model).inc()

    def _done(self, future: asyncio.Future[None]) -> None:
        self._pending.discard(future)
        if not future.cancelled() and future.exception() is not None:
            logger.error("drift monitor failed on a window", exc_info=future.exception())

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        """Wait for the windows handed over so far, then end the worker thread."""
        await asyncio.gather(*self._pending, return_exceptions=True)
        self._worker.shutdown(wait=True)


@dataclass(slots=True)
class _Pending:
    model: str
    window_id: str
    producer: str
    window: WindowSummary | None  # until encoded, in steps, just before its first send
    payload: bytes = b""

    async def encode(self) -> float:
        """Encode the window (once); returns the CPU seconds the loop spent on it."""
        if self.window is None:
            return 0.0
        self.payload, spent = await run_steps(encode_window_steps(self.window))
        self.window = None
        return spent


class RedisStreamPublisher:
    """XADDs each window to `tessera:drift:<model>` (MAXLEN ~ `maxlen`) from a background task."""

    def __init__(self, redis: Redis, metrics: TapMetrics, *, maxlen: int = 1000, buffer_windows: int = 256,
                 batch_windows: int = 32, backoff_initial_s: float = 0.1, backoff_max_s: float = 10.0,
                 timeout_s: float = 2.0, stop_timeout_s: float = 2.0) -> None:
        self._redis = redis
        self._metrics = metrics
        self._maxlen = maxlen
        self._bound = buffer_windows
        self._batch = batch_windows
        self._backoff = (backoff_initial_s, backoff_max_s)
        self._timeout_s = timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._buffer: deque[_Pending] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._down_since: float | None = None
        self._failures = 0
        self._sending = 0
        metrics.connected.set(0)

    @classmethod
    def from_url(cls, url: str, metrics: TapMetrics, *, timeout_s: float = 2.0,
                 **kwargs: Any) -> RedisStreamPublisher:
        """A publisher with its own client; redis-py's own retries are off, our backoff governs."""
        redis = Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                               retry=Retry(NoBackoff(), 0))
        return cls(redis, metrics, timeout_s=timeout_s, **kwargs)

    def publish(self, window: WindowSummary) -> None:
        """Buffer a window (encoded later, off the loop); when the buffer is full the oldest is dropped."""
        self._buffer.append(_Pending(window.model, window.window_id, window.producer, window))
        self._trim()
        self._wake.set()

    async def start(self) -> None:
        if self._task is None:
            self._task = spawn(self._run(), "drift-publisher")

    async def stop(self) -> None:
        """Try to send what is buffered (for at most stop_timeout_s), then close the connection."""
        if self._task is not None:
            deadline = time.monotonic() + self._stop_timeout_s
            while ((self._buffer or self._sending) and time.monotonic() < deadline
                   and self._down_since is None):
                await asyncio.sleep(0.01)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._buffer:
            logger.warning("drift publisher stopping with %d unsent windows", len(self._buffer))
        await self._redis.aclose()

    def _requeue(self, items: list[_Pending]) -> None:
        self._buffer.extendleft(reversed(items))
        self._trim()

    def _trim(self) -> None:
        while len(self._buffer) > self._bound:
            dropped = self._buffer.popleft()
            self._metrics.windows_dropped.labels(dropped.model).inc()
        self._metrics.buffered.set(len(self._buffer))

    async def _run(self) -> None:
        delay = self._backoff[0]
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._buffer:
                if await self._send_some():
                    delay = self._backoff[0]
                else:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._backoff[1])

    async def _send_some(self) -> bool:
        sending = [self._buffer.popleft() for _ in range(min(self._batch, len(self._buffer)))]
        self._sending = len(sending)
        try:
            for item in sending:
                self._metrics.loop_cpu.inc(await item.encode())
        except asyncio.CancelledError:
            self._requeue(sending)
            self._sending = 0
            raise
        except Exception:  # a window that cannot be encoded would block every later one
            logger.exception("drift publisher: could not encode %d windows; dropping them", len(sending))
            for item in sending:
                self._metrics.windows_dropped.labels(item.model).inc()
            self._sending = 0
            return True
        try:
            async with asyncio.timeout(self._timeout_s):
                async with self._redis.pipeline(transaction=False) as pipe:
                    for item in sending:
                        fields: dict[Any, Any] = {"window": item.window_id, "producer": item.producer,
                                                  "payload": item.payload}
                        pipe.xadd(stream_key(item.model), fields, maxlen=self._maxlen, approximate=True)
                    await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            self._requeue(sending)
            self._failed(exc)
            return False
        except asyncio.CancelledError:
            self._requeue(sending)
            raise
        finally:
            self._sending = 0
        for item in sending:
            self._metrics.windows_published.labels(item.model).inc()
        self._metrics.buffered.set(len(self._buffer))
        self._recovered()
        return True

    def _failed(self, exc: BaseException) -> None:
        self._metrics.publish_errors.inc()
        self._failures += 1
        if self._down_since is None:
            self._down_since = time.monotonic()
            self._metrics.connected.set(0)
            logger.warning("drift publisher: Redis unreachable (%s); buffering up to %d windows and "
                           "retrying with backoff", exc or type(exc).__name__, self._bound)

    def _recovered(self) -> None:
        self._metrics.connected.set(1)
        if self._down_since is not None:
            logger.warning("drift publisher: Redis reachable again after %.1f s and %d failed attempts",
                           time.monotonic() - self._down_since, self._failures)
            self._metrics.reconnects.inc()
            self._down_since = None
            self._failures = 0
