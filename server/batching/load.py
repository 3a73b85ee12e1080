"""LoopLoad: whether the event loop's thread has lately been busy nearly all the time.

A batcher whose loop is saturated gains from waiting a little for more rows: the loop has other
requests to read and parse meanwhile, so the wait costs no throughput, and every row that joins a batch
saves the per-batch work (the run's fixed cost, a wake-up, a write) that dominates when batches are
small. On a loop with idle time the same wait is pure latency. The measure is the loop thread's CPU
time over wall time in windows of 20 ms (longer when no batch forms to renew it), with hysteresis:
waiting lowers the loop's CPU per request, and the verdict must not flip back for that alone.

Our gRPC transport asks it too: with time to spare, each answer is written as soon as it is made; when
saturated, the turn's answers to one connection share a write. Both ask the same instance,
`running_loop_load()`: one loop, one measure.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable

__all__ = ["LoopLoad", "running_loop_load"]

# Long enough to average over many batches, short enough to follow a load that starts or stops.
WINDOW_NS = 20_000_000
# Enter at 90% busy; leave under 70%. Waiting for rows itself drops a saturated loop to 80-90%.
ENTER_SHARE = 0.90
LEAVE_SHARE = 0.70


class LoopLoad:
    """Samples the calling thread's CPU time; call it from the event loop's thread only."""

    __slots__ = ("_clock", "_cpu", "_cpu_start", "_wall_start", "saturated")

    def __init__(self, clock: Callable[[], int] = time.perf_counter_ns,
                 cpu: Callable[[], int] = time.thread_time_ns) -> None:
        self._clock = clock
        self._cpu = cpu
        self._wall_start = clock()
        self._cpu_start = cpu()
        self.saturated = False

    def update(self) -> bool:
        """The verdict, renewed when a window has passed since the last renewal (one clock read otherwise)."""
        now = self._clock()
        elapsed = now - self._wall_start
        if elapsed < WINDOW_NS:
            return self.saturated
        cpu = self._cpu()
        share = (cpu - self._cpu_start) / elapsed
        self._wall_start, self._cpu_start = now, cpu
        self.saturated = share >= (LEAVE_SHARE if self.saturated else ENTER_SHARE)
        return self.saturated


_BY_LOOP: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopLoad] = weakref.WeakKeyDictionary()


def running_loop_load() -> LoopLoad:
    """The running loop's LoopLoad, made on first use: every batcher and the gRPC transport on a loop
    share its verdict. Call it on the loop, as LoopLoad samples the calling thread's CPU clock."""
    loop = asyncio.get_running_loop()
    load = _BY_LOOP.get(loop)
    if load is None:
        load = _BY_LOOP[loop] = LoopLoad()
    return load
