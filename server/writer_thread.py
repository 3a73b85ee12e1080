"""The thread that writes a side path's records (request log lines, payload records), and the manners
that keep it from slowing the event loop beside it.

A writer shares the process, and the GIL, with the loop. Even with CPU to spare it delays requests:
- the GIL: a writer that formats for milliseconds keeps the loop, woken by its socket, waiting for the
  GIL until the writer is done or the interpreter's switch interval (5 ms) runs out. A drain of ~1,200
  request lines takes ~2.5 ms, and with it the loop's p99.9 was ~3.1 ms against ~1.8 ms without a log;
- the scheduler: on the loop's core, a writer in the middle of its time slice need not be preempted
  at once when the loop's thread wakes.
So the thread runs at a lower scheduling priority (niceness +10: on a saturated core it still gets
about a tenth of it, far more than it needs), and its work comes in slices: between two slices
`hand_over` sleeps briefly, which releases the GIL to a loop that waits for it. The loop then waits
about one slice (~0.3 ms of work) at most; the p99.9 went back to within ~0.1-0.3 ms of a server
without a log. Smaller slices cost more than they save: at ~0.1 ms the hand-overs added ~0.8 us of CPU
per line and HTTP throughput fell ~1.5%; a `sys.setswitchinterval` of 0.5 ms instead of slices did not
lower the loop's p99 at all (BENCHMARKS.md, "Eighth session: side-path threads that hand the GIL back").
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

__all__ = ["HANDOFF_S", "WRITER_NICENESS", "WriterThread", "hand_over", "in_slices", "slice_sizes"]

T = TypeVar("T")

logger = logging.getLogger(__name__)

WRITER_NICENESS = 10
"""Added to the writer thread's niceness (per thread on Linux)."""

HANDOFF_S = 10e-6
"""The pause between two slices of a writer's work: a real sleep, so that a waiting loop takes the GIL
(a zero sleep releases it, but the writer usually takes it back before the loop's thread runs). The
kernel's timer slack makes it ~60 us."""


def hand_over() -> None:
    """Let a thread waiting for the GIL (the event loop) run before this one goes on."""
    time.sleep(HANDOFF_S)


def slice_sizes(count: int, per_slice: int) -> Iterator[int]:
    """The sizes of the slices `count` items are taken in, `per_slice` at most, handing the GIL over
    (`hand_over`) between slices, not after the last: for a loop that takes a whole slice at a time."""
    for first in range(0, count, per_slice):
        if first:
            hand_over()
        yield min(per_slice, count - first)


def in_slices(items: Sequence[T], per_slice: int) -> Iterator[T]:
    """`items`, handing the GIL over (`hand_over`) after every `per_slice` of them, but not after the last."""
    first = 0
    for count in slice_sizes(len(items), per_slice):
        yield from items[first : first + count]
        first += count


def lower_priority(increment: int = WRITER_NICENESS) -> None:
    """Lower the calling thread's scheduling priority (on Linux `setpriority` of a thread id applies to
    that thread alone); where that is not possible the thread keeps its priority."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + increment))
    except (AttributeError, OSError) as exc:  # not Linux, or refused: correct, only less polite
        logger.debug("writer thread keeps its priority: %s", exc)


class WriterThread:
    """A daemon thread that calls `drain` every `interval_s`, and once more when stopped, at a lower
    priority than the loop's thread. `drain` hands the GIL over between slices of its work (`hand_over`)."""

    def __init__(self, name: str, drain: Callable[[], None], interval_s: float) -> None:
        self._name = name
        self._drain = drain
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Drain what is queued and end the thread (blocking: call it off the event loop)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        lower_priority()
        while not self._stop.wait(self._interval):
            self._drain()
        self._drain()
