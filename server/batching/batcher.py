"""DynamicBatcher: one queue and one loop task per model version, with Triton's batching semantics.

- `max_batch_size` counts rows; a request may carry several rows; a batch never exceeds it.
- A batch is sent at once when it reaches the largest preferred size (or max_batch_size), otherwise
  after `max_queue_delay_us` from its oldest request; with no delay, whatever is queued goes.
- Unless the model turns it off (`adaptive_batching`), a model with no delay of its own gets one of
  up to ADAPTIVE_DELAY_US while the event loop is saturated (load.py), makes the runs itself, and
  requests lately came in together: there more rows join each batch at no cost in throughput. The
  batch waits a loop turn at a time, and goes as soon as a turn brings no new request.
- Requests whose non-batch dims or dtypes differ never share a batch.
- The queue is bounded: a full queue raises Overloaded at once.
- A request that belongs to a QueueShare (one gRPC stream) is refused with Overloaded when its
  share already has max(1, fraction * queue limit) requests queued or running here.
- Timeouts fire from a timer while the request waits, even when every instance is busy; an
  expired request is never computed. Cancelled requests (client gone) are skipped.
- A batch with more than STRING_ELEMENTS_PER_RUN string elements runs as several runs of whole
  rows: ONNX Runtime holds the GIL while it converts string tensors (measured: 0.33 s for 10
  million), and the event loop must not wait that long. A single row cannot be split: the codecs cap
  the strings in one row (DecodeLimits.max_strings_per_row).
- Without dynamic batching (or with max_batch_size 0) each request runs alone, through the same queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Final, Protocol

import numpy as np

from .. import observation as _observation
from ..background import cancel, spawn
from ..errors import DeadlineExceeded, ModelNotReady, Overloaded
from ..metrics import Labels, Metrics
from ..model_statistics import ModelStatistics
from ..observation import RequestObservation
from ..spec import ModelSpec
from ..tensors import BatchRun, Tensor
from .fairness import QueueShare, current_share
from .load import LoopLoad, running_loop_load
from .stacking import BatchKey, batch_key, split_outputs, stack_inputs

__all__ = ["ADAPTIVE_DELAY_US", "DEFAULT_QUEUE_LIMIT", "STRING_ELEMENTS_PER_RUN", "DynamicBatcher", "Runner"]

logger = logging.getLogger(__name__)

# Bound on queued requests when the config sets no max_queue_size: memory must never grow unbounded.
DEFAULT_QUEUE_LIMIT = 4096

# String elements per ONNX Runtime run of a batched model; a bigger batch runs a step of rows at a
# time (each step's GIL-held string conversion stays in the tens of milliseconds).
STRING_ELEMENTS_PER_RUN = 1 << 18

# The queue delay a saturated loop applies when the model sets none. The wait ends at the first loop
# turn that brings no request, so this cap only bounds a wait that keeps finding rows. It must span
# several turns, and a saturated turn takes 100-300 us on a small machine: on one core, small model,
# 8 clients, a cap of 100 us left batches at 2 rows; 300 us and 1000 us both took them to 7 and
# throughput up 35-38% with p99 lower; at 64 clients 1000 us doubled the batches without more
# throughput (BENCHMARKS.md, "A queue delay while the loop is saturated").
ADAPTIVE_DELAY_US = 300
# How long a sight of several requests queued together keeps the adaptive wait allowed.
COMPANY_NS = 20_000_000

_EXECUTE_TASK: Final = "batch"
Result = tuple[dict[str, Tensor], int, BatchRun]
"""What `submit` answers: the request's outputs, the ns it waited in the queue, the batch it ran in."""


@dataclass(slots=True, eq=False)
class _Pending:
    feeds: dict[str, Tensor]
    rows: int
    key: BatchKey
    future: asyncio.Future[Result]
    enqueued_ns: int
    timer: asyncio.TimerHandle | None = field(default=None)
    observation: RequestObservation | None = field(default=None)

    def __init__(self, feeds: dict[str, Tensor], rows: int, key: BatchKey, future: asyncio.Future[Result],
                 enqueued_ns: int, timer: asyncio.TimerHandle | None = None,
                 observation: RequestObservation | None = None) -> None:
        # Its own __init__, compiled: one @dataclass generates runs interpreted (tensors.py says more).
        self.feeds = feeds
        self.rows = rows
        self.key = key
        self.future = future
        self.enqueued_ns = enqueued_ns
        self.timer = timer
        self.observation = observation

    @property
    def live(self) -> bool:
        return not self.future.done()


class Runner(Protocol):
    """What a batcher needs from an executor (executor/runner.py's OrtRunner is one)."""

    @property
    def instances(self) -> int: ...

    async def run(self, feeds: dict[str, Tensor]) -> dict[str, Tensor]: ...

    def runs_inline(self, rows: int) -> bool:
        """Whether a run of `rows` rows would now be made on the event loop, without suspending."""
        ...

    def close(self) -> None: ...


class DynamicBatcher:
    """Schedules one model version's requests onto its runner."""

    def __init__(self, runner: Runner, spec: ModelSpec, stats: ModelStatistics, metrics: Metrics,
                 labels: Labels, load: LoopLoad | None = None,
                 adaptive_delay_us: int = ADAPTIVE_DELAY_US) -> None:
        self._runner = runner
        self._spec = spec
        self._stats = stats
        self._metrics = metrics.for_version(labels)
        self._labels = labels
        batching = spec.batching
        self._merge = batching is not None and spec.batched
        self._max_rows = max(spec.max_batch_size, 1)
        self._target_rows = (
            max(batching.preferred_batch_sizes) if batching and batching.preferred_batch_sizes else self._max_rows
        )
        self._delay_ns = (batching.max_queue_delay_us * 1000) if batching else 0
        adaptive = self._merge and not self._delay_ns and spec.adaptive_batching
        self._adaptive_ns = adaptive_delay_us * 1000 if adaptive else 0
        self._load = load or running_loop_load()
        self._arrivals = 0  # requests ever queued: tells whether a loop turn brought any
        self._queued_rows = 0  # rows in the queue, live or not: at least what can still join the head
        self._company_ns = -COMPANY_NS  # when a batch last began with more than one request queued
        self._queue_limit = (batching.max_queue_size if batching and batching.max_queue_size else
                             DEFAULT_QUEUE_LIMIT)
        self._default_timeout_us = batching.default_timeout_us if batching else 0
        self._allow_override = batching.allow_timeout_override if batching else True
        self._queue: deque[_Pending] = deque()
        self._by_share: dict[QueueShare, int] = {}
        # The batcher sleeps on `_wake`; an arrival wakes it only once the queue holds `_wake_rows` rows,
        # so a batch filling towards its preferred size costs one wake-up, not one per request.
        self._wake: asyncio.Future[None] | None = None
        self._wake_rows = 1
        self._slots = asyncio.Semaphore(self._runner.instances)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._accepting = True
        self._pending_gauge = metrics.pending_requests.labels(*labels)
        self._pending = 0  # what the gauge shows, set from here at most once per loop turn
        self._pending_due = False
        self._loop_task: asyncio.Task[None] | None = None
        # Kept: asyncio.get_running_loop() is a getpid system call on Python 3.11, and a request asked twice.
        self._event_loop: asyncio.AbstractEventLoop | None = None

    # -- public --------------------------------------------------------------------------------
    def start(self) -> None:
        self._event_loop = asyncio.get_running_loop()
        self._loop_task = spawn(self._run(), f"batcher-{self._labels}")

    async def submit(self, feeds: dict[str, Tensor], rows: int, timeout_us: int = 0,
                     observation: RequestObservation | None = None) -> Result:
        """Queue a validated request; return its outputs, the nanoseconds it waited in the queue and the
        batch it ran in.

        Raises Overloaded (queue full, or the caller's QueueShare spent), ModelNotReady (version
        draining), DeadlineExceeded, ExecutionFailed. Runs on the event loop.
        """
        if not self._accepting:
            raise ModelNotReady(f"model '{self._spec.name}' version {self._spec.version} is unloading")
        if len(self._queue) >= self._queue_limit:
            raise Overloaded(f"model '{self._spec.name}' version {self._spec.version}: queue is full "
                             f"({self._queue_limit} requests); retry later")
        share = current_share.get()
        if share is None:
            return await self._submit(feeds, rows, timeout_us, observation)
        held = self._by_share.get(share, 0)
        if held >= share.cap(self._queue_limit):
            raise Overloaded(f"model '{self._spec.name}' version {self._spec.version}: this stream already "
                             f"has {held} requests queued, its share of the queue ({self._queue_limit} "
                             f"requests); retry later")
        self._by_share[share] = held + 1
        try:
            return await self._submit(feeds, rows, timeout_us, observation)
        finally:
            left = self._by_share.pop(share) - 1
            if left:
                self._by_share[share] = left

    async def _submit(self, feeds: dict[str, Tensor], rows: int, timeout_us: int,
                      observation: RequestObservation | None = None) -> Result:
        loop = self._loop()
        pending = _Pending(feeds, rows, batch_key(feeds) if self._merge else (), loop.create_future(),
                           time.perf_counter_ns(), observation=observation)
        timeout = self._effective_timeout_us(timeout_us)
        if timeout:
            pending.timer = loop.call_later(timeout / 1e6, self._expire, pending, timeout)
        self._queue.append(pending)
        self._arrivals += 1
        self._queued_rows += rows
        self._count_pending(1)
        if self._wake is not None and self._queued_rows >= self._wake_rows:
            self._wake_batcher()
        try:
            return await pending.future
        finally:
            self._count_pending(-1)
            if pending.timer is not None:
                pending.timer.cancel()

    def _count_pending(self, change: int) -> None:
        # The gauge is set once per loop turn instead of moved twice per request (each move takes a
        # lock): a scrape, which runs in a turn of its own, sees the same count.
        self._pending += change
        if not self._pending_due:
            self._pending_due = True
            self._loop().call_soon(self._show_pending)

    def _loop(self) -> asyncio.AbstractEventLoop:
        loop = self._event_loop
        if loop is None:  # a request before start(): the loop that runs it
            loop = self._event_loop = asyncio.get_running_loop()
        return loop

    def _show_pending(self) -> None:
        self._pending_due = False
        self._pending_gauge.set(self._pending)

    async def stop(self, drain_timeout_s: float = 30.0) -> None:
        """Stop accepting, finish queued and in-flight requests, then end the loop."""
        self._accepting = False
        self._wake_batcher()  # a batch filling towards its preferred size can get no more rows: it goes now
        deadline = time.monotonic() + drain_timeout_s
        while (self._queue or self._in_flight) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        await cancel(self._loop_task)
        for pending in self._queue:
            if pending.live:
                pending.future.set_exception(ModelNotReady(f"model '{self._spec.name}' was unloaded"))
        self._queue.clear()
        self._queued_rows = 0

    @property
    def queued(self) -> int:
        return len(self._queue)

    # -- internals -----------------------------------------------------------------------------
    def _effective_timeout_us(self, requested_us: int) -> int:
        default = self._default_timeout_us
        if not default:
            return requested_us
        if self._allow_override and 0 < requested_us < default:
            return requested_us
        return default

    def _expire(self, pending: _Pending, timeout_us: int) -> None:
        if pending.live:
            pending.future.set_exception(DeadlineExceeded(
                f"request to model '{self._spec.name}' timed out after {timeout_us} us in the queue"))

    async def _run(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                batch = await self._collect()
            except BaseException:
                self._slots.release()
                raise
            if self._merge and self._runner.runs_inline(sum(p.rows for p in batch)):
                # Made on the loop right now (the runner's measure): no task, no extra loop turn.
                await self._execute(batch)
                continue
            task = asyncio.Task(self._execute(batch), loop=self._loop(), name=_EXECUTE_TASK)  # no "Task-N" to format
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    def _drop_dead_head(self) -> None:
        while self._queue and not self._queue[0].live:
            self._queued_rows -= self._queue.popleft().rows

    async def _wait_for_work(self) -> None:
        while True:
            self._drop_dead_head()
            if self._queue:
                return
            await self._sleep_until_rows(1)

    async def _sleep_until_rows(self, rows: int) -> None:
        """Until the queue holds `rows` rows (live or not), or until `_wake_batcher` is called."""
        self._wake_rows = rows
        wake = self._wake = self._loop().create_future()
        try:
            await wake
        finally:
            if self._wake is wake:
                self._wake = None

    def _wake_batcher(self) -> None:
        wake = self._wake
        self._wake = None
        if wake is not None and not wake.done():
            wake.set_result(None)

    def _take(self) -> tuple[list[_Pending], int]:
        """Take the head and every later request that can join it, up to max rows."""
        head = self._queue[0]
        if not self._merge:
            self._queue.popleft()
            self._queued_rows -= head.rows
            return [head], head.rows
        taken: list[_Pending] = []
        rows = 0
        keep: deque[_Pending] = deque()
        while self._queue:
            item = self._queue.popleft()
            if not item.live:
                self._queued_rows -= item.rows
                continue
            if item.key == head.key and rows + item.rows <= self._max_rows:
                taken.append(item)
                rows += item.rows
                self._queued_rows -= item.rows
            else:
                keep.append(item)
        keep.extend(self._queue)
        self._queue = keep
        return taken, rows

    def _ready_rows(self) -> int:
        head = self._queue[0]
        return sum(p.rows for p in self._queue if p.live and p.key == head.key)

    @staticmethod
    def _dispatch(taken: list[_Pending]) -> list[_Pending]:
        """From here on a request is being computed: its timeout no longer applies."""
        for item in taken:
            if item.timer is not None:
                item.timer.cancel()
        return taken

    async def _collect(self) -> list[_Pending]:
        await self._wait_for_work()
        if self._adaptive_ns and self._worth_waiting():
            await self._gather_arrivals(self._queue[0].enqueued_ns + self._adaptive_ns)
        elif self._merge and self._delay_ns:
            await self._fill_or_wait_out()
        taken, _ = self._take()
        return self._dispatch(taken)

    async def _fill_or_wait_out(self) -> None:
        """Until the head's batch can reach the target rows, or the head has waited max_queue_delay.

        One timer per sleep, and a sleep that only an arrival able to complete the batch ends: before,
        every arrival woke the batcher through `asyncio.wait_for`, a task and a timer per request
        (7.7% of the loop's CPU with the heavy model at 32 clients filling batches of 32).
        """
        loop = self._loop()
        while True:
            ready = self._ready_rows()
            remaining_ns = self._queue[0].enqueued_ns + self._delay_ns - time.perf_counter_ns()
            if ready >= self._target_rows or remaining_ns <= 0 or not self._accepting:
                return
            timer = loop.call_later(remaining_ns / 1e9, self._wake_batcher)
            try:
                # An arrival adds at most its own rows to the head's batch, so none before this many can fill it.
                await self._sleep_until_rows(self._queued_rows + self._target_rows - ready)
            finally:
                timer.cancel()
            await self._wait_for_work()  # the head may have expired or been cancelled meanwhile

    def _worth_waiting(self) -> bool:
        """A saturated loop that makes the run itself, and requests lately found queued together.

        A lone client's request never has company in the queue, and a wait for it is a loop turn lost.
        A run handed to the pool makes the wait cost the instance's time: it idles while the loop waits.
        """
        now = time.perf_counter_ns()
        if len(self._queue) > 1:
            self._company_ns = now
        return (now - self._company_ns < COMPANY_NS and self._load.update()
                and self._runner.runs_inline(self._ready_rows()))

    async def _gather_arrivals(self, deadline_ns: int) -> None:
        """Let loop turns pass while each brings requests, until the batch is full or the deadline."""
        while self._ready_rows() < self._target_rows and time.perf_counter_ns() < deadline_ns:
            seen = self._arrivals
            await asyncio.sleep(0)  # one turn: the loop polls its sockets and other calls submit
            if self._arrivals == seen:
                break
            await self._wait_for_work()
        await self._wait_for_work()  # the head may have expired or been cancelled during the last turn

    async def _compute(self, feeds: dict[str, Tensor], rows: int) -> dict[str, Tensor]:
        """One run, or a run per step of rows when the batch carries many string elements."""
        strings = sum(a.size for a in feeds.values() if a.dtype.kind in "OUS")
        if not self._spec.batched or rows < 2 or strings <= STRING_ELEMENTS_PER_RUN:
            return await self._runner.run(feeds)
        step = max(1, rows * STRING_ELEMENTS_PER_RUN // strings)
        outputs: dict[str, Tensor] = {}
        for first in range(0, rows, step):
            part = await self._runner.run({name: array[first : first + step] for name, array in feeds.items()})
            for name, array in part.items():  # copied a step at a time: no long concatenate on the loop
                if name not in outputs:
                    outputs[name] = np.empty((rows, *array.shape[1:]), dtype=array.dtype)
                outputs[name][first : first + len(array)] = array
        return outputs

    async def _execute(self, batch: list[_Pending]) -> None:
        try:
            batch = [p for p in batch if p.live]  # expired while the batch formed
            if not batch:
                return
            dispatched = time.perf_counter_ns()
            rows = [p.rows for p in batch]
            total = sum(rows)
            feeds = stack_inputs([p.feeds for p in batch])
            t1 = time.perf_counter_ns()
            try:
                outputs = await self._compute(feeds, total)
            except Exception as exc:
                for p in batch:
                    if p.live:
                        p.future.set_exception(exc)
                return
            t2 = time.perf_counter_ns()
            pieces = split_outputs(outputs, rows) if self._merge else [outputs]
            t3 = time.perf_counter_ns()
            self._stats.record_execution(total, len(batch), t1 - dispatched, t2 - t1, t3 - t2)
            self._metrics.record_batch(total, t2 - t1)
            run = (dispatched, t2 - t1, total, len(batch))
            if _observation.ACTIVE is not None:
                _observation.batch_executed(batch, run, t1, t2, t3, *self._labels)
            for p, piece in zip(batch, pieces, strict=True):
                queue_ns = dispatched - p.enqueued_ns
                self._metrics.record_queue(queue_ns)
                if p.live:
                    p.future.set_result((piece, queue_ns, run))
        except Exception as exc:  # stacking, splitting or bookkeeping failed: no request is left waiting
            logger.exception("model '%s' version %s: a batch failed outside the model run", *self._labels)
            for p in batch:
                if p.live:
                    p.future.set_exception(exc)
        finally:
            self._slots.release()
