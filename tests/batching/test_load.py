"""LoopLoad: the event loop thread's CPU share, with hysteresis, renewed once a window."""

from __future__ import annotations

import asyncio
import time

from server.batching.batcher import DynamicBatcher
from server.batching.load import ENTER_SHARE, LEAVE_SHARE, WINDOW_NS, LoopLoad, running_loop_load
from server.grpc_api.server import GrpcServer
from server.metrics import Metrics
from server.model_statistics import ModelStatistics
from tests.batching.test_batcher import GatedRunner, make_spec


class Clocks:
    """Wall and CPU clocks the test moves by hand."""

    def __init__(self) -> None:
        self.wall = 0
        self.cpu = 0

    def spend(self, busy_share: float, windows: float = 1.0) -> None:
        elapsed = int(WINDOW_NS * windows)
        self.wall += elapsed
        self.cpu += int(elapsed * busy_share)


def test_the_verdict_enters_at_the_high_share_and_leaves_only_under_the_low_one():
    clocks = Clocks()
    load = LoopLoad(clock=lambda: clocks.wall, cpu=lambda: clocks.cpu)
    clocks.spend(ENTER_SHARE - 0.02)
    assert load.update() is False
    clocks.spend(ENTER_SHARE + 0.02)
    assert load.update() is True
    clocks.spend(LEAVE_SHARE + 0.05)  # waiting for rows lowers the loop's share: still saturated
    assert load.update() is True
    clocks.spend(LEAVE_SHARE - 0.05)
    assert load.update() is False
    clocks.spend(LEAVE_SHARE + 0.05)  # back up, but not to the entry share
    assert load.update() is False


def test_within_a_window_the_last_verdict_holds_and_the_cpu_clock_is_not_read():
    clocks = Clocks()
    reads = []

    def cpu() -> int:
        reads.append(clocks.cpu)
        return clocks.cpu

    load = LoopLoad(clock=lambda: clocks.wall, cpu=cpu)
    clocks.spend(1.0)
    assert load.update() is True
    clocks.spend(0.0, windows=0.5)
    before = len(reads)
    assert load.update() is True
    assert len(reads) == before
    clocks.spend(0.0, windows=0.6)  # the window that started at the last renewal is over: idle time counts
    assert load.update() is False


def test_a_long_idle_spell_ends_saturation_at_the_next_batch():
    clocks = Clocks()
    load = LoopLoad(clock=lambda: clocks.wall, cpu=lambda: clocks.cpu)
    clocks.spend(1.0)
    assert load.update() is True
    clocks.spend(0.0, windows=50)  # no batch for a second: the next one sees the whole spell
    assert load.update() is False


def _spin(windows: float) -> None:
    deadline = time.perf_counter_ns() + int(windows * WINDOW_NS)
    while time.perf_counter_ns() < deadline:
        pass


def test_the_real_clocks_tell_a_busy_thread_from_a_sleeping_one():
    load = LoopLoad()
    # Another process may take this core for part of a window; a thread that spins through ten
    # windows must read saturated in one of them.
    for _ in range(10):
        _spin(1.2)
        if load.update():
            break
    assert load.saturated
    time.sleep(3 * WINDOW_NS / 1e9)
    assert load.update() is False


async def test_a_loop_has_one_measure_that_its_batchers_and_the_grpc_transport_share():
    shared = running_loop_load()
    assert running_loop_load() is shared
    server = GrpcServer({}, max_message_bytes=1 << 20)
    batcher = DynamicBatcher(GatedRunner(), make_spec(), ModelStatistics("m", "1"), Metrics(), ("m", "1"))
    assert server.loop_load is shared and batcher._load is shared


def test_another_loop_has_its_own():
    loops = [asyncio.new_event_loop() for _ in range(2)]  # not asyncio.run: it resets the thread's loop
    try:
        first, second = (loop.run_until_complete(_load_of_a_new_loop()) for loop in loops)
    finally:
        for loop in loops:
            loop.close()
    assert first is not second


async def _load_of_a_new_loop() -> LoopLoad:
    return running_loop_load()
