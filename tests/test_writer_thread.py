"""The side paths' writer thread: it drains on its interval and once more when stopped, and it runs at
a lower scheduling priority than the thread that started it (the event loop's)."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from server.writer_thread import WRITER_NICENESS, WriterThread


def test_it_drains_on_its_interval_and_once_more_when_stopped() -> None:
    drains: list[int] = []
    drained = threading.Event()

    def drain() -> None:
        drains.append(threading.get_ident())
        if len(drains) >= 2:
            drained.set()

    writer = WriterThread("test-writer", drain, interval_s=0.01)
    writer.start()
    writer.start()  # a second start is a no-op: still one thread
    assert drained.wait(5)
    writer.stop()
    count = len(drains)
    assert not writer.running and count >= 3  # the interval's drains, then the last one at stop
    assert len(set(drains)) == 1 and drains[0] != threading.get_ident()
    writer.stop()  # stopping twice is harmless
    assert len(drains) == count


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
def test_its_thread_runs_at_a_lower_priority_than_the_thread_that_started_it() -> None:
    seen: list[int] = []

    def drain() -> None:
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    writer = WriterThread("test-writer", drain, interval_s=10)
    writer.start()
    writer.stop()
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert seen == [min(19, mine + WRITER_NICENESS)]
    assert mine == os.getpriority(os.PRIO_PROCESS, threading.get_native_id())  # the starter's is unchanged
