"""DynamicBatcher semantics, driven directly with a runner whose timing the test controls."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pytest

from server._generated import model_config_pb2 as mc
from server.batching.batcher import DynamicBatcher
from server.batching.load import WINDOW_NS, LoopLoad
from server.errors import DeadlineExceeded, ModelNotReady, Overloaded
from server.metrics import Metrics
from server.model_statistics import ModelStatistics
from server.spec import (
    BatchingSpec,
    DeviceKind,
    InstanceGroupSpec,
    ModelSpec,
    TensorSpec,
    VersionPolicy,
)


class GatedRunner:
    """Doubles its input; each run waits until the test opens the gate. Records batch sizes, and lets
    the test wait until a number of runs are inside it (no sleeps: the test synchronises on state)."""

    def __init__(self, instances: int = 1) -> None:
        self.instances = instances
        self.gate = asyncio.Event()
        self.gate.set()
        self.batches: list[int] = []
        self.running = 0
        self._changed = asyncio.Condition()

    async def run(self, feeds):
        async with self._changed:
            self.running += 1
            self._changed.notify_all()
        try:
            await self.gate.wait()
            x = feeds["x"]
            self.batches.append(int(x.shape[0]))
            return {"y": x * 2}
        finally:
            self.running -= 1

    async def wait_running(self, count: int) -> None:
        """Return once `count` runs are waiting at the gate."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: self.running >= count), 10)

    def runs_inline(self, rows: int) -> bool:
        return False

    def close(self) -> None:
        pass


async def queued() -> None:
    """Let every task created so far reach its first await: `submit` queues its request before that."""
    await asyncio.sleep(0)


DEFAULT_BATCHING = BatchingSpec()


def make_spec(max_batch_size=8, batching: BatchingSpec | None = DEFAULT_BATCHING) -> ModelSpec:
    return ModelSpec(
        name="m", version=1, model_path=Path("/dev/null"), max_batch_size=max_batch_size,
        inputs=(TensorSpec("x", "FP32", (-1,)),), outputs=(TensorSpec("y", "FP32", (-1,)),),
        instance_groups=(InstanceGroupSpec(DeviceKind.CPU, 1),), batching=batching,
        version_policy=VersionPolicy(), config=mc.ModelConfig(),
    )


def make_batcher(runner: GatedRunner, spec: ModelSpec) -> DynamicBatcher:
    batcher = DynamicBatcher(runner, spec, ModelStatistics("m", "1"), Metrics(), ("m", "1"))
    batcher.start()
    return batcher


def rows(values: list[float], width: int = 2) -> np.ndarray:
    return np.array([[v] * width for v in values], dtype=np.float32)


async def test_queued_requests_are_merged_and_each_gets_its_own_rows():
    runner = GatedRunner()
    runner.gate.clear()
    batcher = make_batcher(runner, make_spec())
    first = asyncio.create_task(batcher.submit({"x": rows([0])}, 1))
    await runner.wait_running(1)  # first batch is running; the rest queue up behind it
    rest = [asyncio.create_task(batcher.submit({"x": rows([i, i + 0.5])}, 2)) for i in range(1, 4)]
    await queued()
    runner.gate.set()
    results = await asyncio.gather(first, *rest)
    assert runner.batches == [1, 6]
    for i, (outputs, _, _) in enumerate(results[1:], start=1):
        np.testing.assert_array_equal(outputs["y"], rows([i, i + 0.5]) * 2)
    # Each member learns the batch it ran in (the request log's batch figures): one shared record.
    runs = {run for _, _, run in results[1:]}
    assert len(runs) == 1 and [run[2:] for run in runs] == [(6, 3)] and results[0][2][2:] == (1, 1)
    await batcher.stop()


async def test_the_pending_gauge_counts_queued_and_running_requests_and_returns_to_zero():
    runner = GatedRunner()
    runner.gate.clear()
    metrics = Metrics()
    batcher = DynamicBatcher(runner, make_spec(), ModelStatistics("m", "1"), metrics, ("m", "1"))
    batcher.start()

    def shown() -> float | None:
        return metrics.registry.get_sample_value("tessera_pending_requests", {"model": "m", "version": "1"})

    first = asyncio.create_task(batcher.submit({"x": rows([0])}, 1))
    await runner.wait_running(1)
    rest = [asyncio.create_task(batcher.submit({"x": rows([i])}, 1)) for i in range(1, 3)]
    await queued()
    await asyncio.sleep(0)  # the turn after the submits shows them
    assert shown() == 3
    runner.gate.set()
    await asyncio.gather(first, *rest)
    await asyncio.sleep(0)
    assert shown() == 0
    await batcher.stop()


async def test_a_batch_never_exceeds_max_batch_size():
    runner = GatedRunner()
    runner.gate.clear()
    batcher = make_batcher(runner, make_spec(max_batch_size=4))
    tasks = [asyncio.create_task(batcher.submit({"x": rows([i] * 3)}, 3)) for i in range(5)]
    await queued()
    runner.gate.set()
    await asyncio.gather(*tasks)
    assert max(runner.batches) <= 4 and sum(runner.batches) == 15
    await batcher.stop()


async def test_requests_with_different_non_batch_dims_are_never_merged():
    runner = GatedRunner()
    runner.gate.clear()
    batcher = make_batcher(runner, make_spec())
    blocker = asyncio.create_task(batcher.submit({"x": rows([0])}, 1))
    await runner.wait_running(1)
    narrow = [asyncio.create_task(batcher.submit({"x": rows([1], width=2)}, 1)) for _ in range(2)]
    wide = [asyncio.create_task(batcher.submit({"x": rows([2], width=3)}, 1)) for _ in range(2)]
    await queued()
    runner.gate.set()
    await asyncio.gather(blocker, *narrow, *wide)
    assert runner.batches == [1, 2, 2]
    await batcher.stop()


async def test_max_queue_delay_waits_for_the_preferred_batch_size():
    runner = GatedRunner()
    spec = make_spec(batching=BatchingSpec(preferred_batch_sizes=(4,), max_queue_delay_us=5_000_000))
    batcher = make_batcher(runner, spec)
    tasks = []
    for i in range(4):
        tasks.append(asyncio.create_task(batcher.submit({"x": rows([i])}, 1)))
        await queued()  # one at a time: the batcher holds the first ones until the preferred size
    await asyncio.wait_for(asyncio.gather(*tasks), 2)  # it goes at the preferred size, well before the delay
    assert runner.batches == [4]
    await batcher.stop()


async def test_requests_of_several_rows_fill_the_preferred_size_and_a_batch_it_cannot_join_does_not():
    runner = GatedRunner()
    spec = make_spec(batching=BatchingSpec(preferred_batch_sizes=(4,), max_queue_delay_us=5_000_000))
    batcher = make_batcher(runner, spec)
    first = asyncio.create_task(batcher.submit({"x": rows([0, 0, 0])}, 3))
    await queued()
    other = asyncio.create_task(batcher.submit({"x": rows([9], width=3)}, 1))  # other dims: never joins
    await queued()
    assert runner.batches == []  # 3 rows of the head's kind are queued, not 4: still waiting
    last = asyncio.create_task(batcher.submit({"x": rows([1])}, 1))
    await asyncio.wait_for(asyncio.gather(first, last), 2)  # well before the 5 s delay
    assert runner.batches == [4] and not other.done()  # alone, it waits out its delay
    other.cancel()
    await batcher.stop()


async def test_a_batch_short_of_its_preferred_size_goes_once_its_oldest_request_waited_the_delay():
    runner = GatedRunner()
    spec = make_spec(batching=BatchingSpec(preferred_batch_sizes=(4,), max_queue_delay_us=50_000))
    batcher = make_batcher(runner, spec)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await asyncio.gather(*(batcher.submit({"x": rows([i])}, 1) for i in range(2)))
    assert runner.batches == [2]
    assert loop.time() - began >= 0.045  # held for the delay (a lower bound: nothing is timed against it)
    await batcher.stop()


async def test_a_head_cancelled_while_its_batch_fills_leaves_the_others_to_form_it():
    runner = GatedRunner()
    spec = make_spec(batching=BatchingSpec(preferred_batch_sizes=(3,), max_queue_delay_us=5_000_000))
    batcher = make_batcher(runner, spec)
    head = asyncio.create_task(batcher.submit({"x": rows([0])}, 1))
    await queued()
    rest = [asyncio.create_task(batcher.submit({"x": rows([i])}, 1)) for i in (1, 2)]
    await queued()
    head.cancel()
    await queued()
    assert runner.batches == []  # two live rows: the batch is one short
    rest.append(asyncio.create_task(batcher.submit({"x": rows([3])}, 1)))
    await asyncio.wait_for(asyncio.gather(*rest), 2)  # well before the 5 s delay
    assert runner.batches == [3]
    await batcher.stop()


async def test_stop_sends_a_filling_batch_at_once_instead_of_waiting_out_its_delay():
    runner = GatedRunner()
    spec = make_spec(batching=BatchingSpec(preferred_batch_sizes=(4,), max_queue_delay_us=60_000_000))
    batcher = make_batcher(runner, spec)
    waiting = [asyncio.create_task(batcher.submit({"x": rows([i])}, 1)) for i in range(2)]
    gone = asyncio.create_task(batcher.submit({"x": rows([0], width=3)}, 1))
    await queued()
    gone.cancel()
    await asyncio.wait_for(batcher.stop(), 2)
    assert runner.batches == [2] and all(t.done() and not t.exception() for t in waiting)


async def test_without_dynamic_batching_each_request_runs_alone():
    runner = GatedRunner()
    runner.gate.clear()
    batcher = make_batcher(runner, make_spec(batching=None))
    tasks = [asyncio.create_task(batcher.submit({"x": rows([i])}, 1)) for i in range(3)]
    await queued()
    runner.gate.set()
    await asyncio.gather(*tasks)
    assert runner.batches == [1, 1, 1]
    await batcher.stop()


async def test_full_queue_rejects_at_once():
    runner = GatedRunner()
    runner.gate.clear()
    batcher = make_batcher(runner, make_spec(batching=BatchingSpec(max_queue_size=2)))
    running = asyncio.create_task(batcher.submit({"x": rows([0])}, 1))
    await runner.wait_running(1)
    waiting = [asyncio.create_task(batcher.submit({"x": rows([1])}, 1)) for _ in range(2)]
    await queued()
    with pytest.raises(Overloaded, match="queue is full"):
        await batcher.submit({"x": rows([3])}, 1)
    runner.gate.set()
    await asyncio.gather(running, *waiting)
    await batcher.stop()


async def test_timeout_fires_while_the_executor_is_busy_and_the_request_is_never_computed():
    runner = GatedRunner()
    runner.gate.clear()
    batcher = make_batcher(runner, make_spec())
    busy = asyncio.create_task(batcher.submit({"x": rows([0])}, 1))
    await runner.wait_running(1)
    with pytest.raises(DeadlineExceeded, match="timed out after 20000 us"):
        await batcher.submit({"x": rows([7])}, 1, timeout_us=20_000)
    assert runner.running == 1 and not busy.done()  # it fired while the executor was still busy
    runner.gate.set()
    await busy
    await batcher.stop()
    assert runner.batches == [1]  # the expired request was never run
    await batcher.stop()


async def test_queue_policy_default_timeout_applies_without_a_request_timeout():
    runner = GatedRunner()
    runner.gate.clear()
    batcher = make_batcher(runner, make_spec(batching=BatchingSpec(default_timeout_us=10_000)))
    busy = asyncio.create_task(batcher.submit({"x": rows([0])}, 1))
    await runner.wait_running(1)
    with pytest.raises(DeadlineExceeded):
        await batcher.submit({"x": rows([1])}, 1)
    runner.gate.set()
    await busy
    await batcher.stop()


async def test_cancelled_requests_are_skipped():
    runner = GatedRunner()
    runner.gate.clear()
    batcher = make_batcher(runner, make_spec())
    busy = asyncio.create_task(batcher.submit({"x": rows([0])}, 1))
    await runner.wait_running(1)
    gone = asyncio.create_task(batcher.submit({"x": rows([1])}, 1))
    kept = asyncio.create_task(batcher.submit({"x": rows([2])}, 1))
    await queued()
    gone.cancel()
    runner.gate.set()
    await asyncio.gather(busy, kept)
    assert runner.batches == [1, 1]
    await batcher.stop()


async def test_stop_drains_queued_requests_then_refuses_new_ones():
    runner = GatedRunner()
    runner.gate.clear()
    batcher = make_batcher(runner, make_spec())
    tasks = [asyncio.create_task(batcher.submit({"x": rows([i])}, 1)) for i in range(3)]
    await runner.wait_running(1)
    stopping = asyncio.create_task(batcher.stop())
    await queued()
    with pytest.raises(ModelNotReady):
        await batcher.submit({"x": rows([9])}, 1)
    runner.gate.set()
    await stopping
    assert all(t.done() and not t.exception() for t in tasks)


async def test_instances_run_batches_in_parallel():
    runner = GatedRunner(instances=2)
    runner.gate.clear()
    batcher = make_batcher(runner, make_spec(batching=None))
    tasks = [asyncio.create_task(batcher.submit({"x": rows([i])}, 1)) for i in range(3)]
    await runner.wait_running(2)
    assert runner.running == 2
    runner.gate.set()
    await asyncio.gather(*tasks)
    await batcher.stop()


class InlineRunner:
    """Answers at once, as a run made on the event loop does; `short` rows per batch or fewer count as
    inline. `broken` answers with no array (so splitting a batch of several requests fails)."""

    instances = 1

    def __init__(self, short: int = 8, broken: bool = False) -> None:
        self.short, self.broken = short, broken
        self.batches: list[int] = []
        self.tasks: list[asyncio.Task | None] = []

    async def run(self, feeds):
        x = feeds["x"]
        self.batches.append(int(x.shape[0]))
        self.tasks.append(asyncio.current_task())
        return {"y": None if self.broken else x * 2}

    def runs_inline(self, rows: int) -> bool:
        return rows <= self.short

    def close(self) -> None:
        pass


async def test_a_batch_the_runner_makes_inline_needs_no_task_and_answers_each_request():
    runner = InlineRunner(short=4)
    batcher = make_batcher(runner, make_spec(max_batch_size=8))
    small = [asyncio.create_task(batcher.submit({"x": rows([i])}, 1)) for i in range(3)]
    for i, (outputs, _, _) in enumerate(await asyncio.gather(*small)):
        np.testing.assert_array_equal(outputs["y"], rows([i]) * 2)
    assert runner.tasks == [batcher._loop_task]  # one batch of 3, made in the batcher's own loop
    large = [asyncio.create_task(batcher.submit({"x": rows([i] * 3)}, 3)) for i in range(2)]
    for i, (outputs, _, _) in enumerate(await asyncio.gather(*large)):
        np.testing.assert_array_equal(outputs["y"], rows([i] * 3) * 2)
    assert runner.batches == [3, 6] and runner.tasks[1] is not batcher._loop_task  # 6 rows: a task, as before
    await batcher.stop()


async def test_a_batch_that_fails_after_its_run_fails_its_requests_and_the_batcher_goes_on():
    runner = InlineRunner(broken=True)
    batcher = make_batcher(runner, make_spec())
    both = [asyncio.create_task(batcher.submit({"x": rows([i])}, 1)) for i in range(2)]
    done = await asyncio.wait_for(asyncio.gather(*both, return_exceptions=True), 5)
    assert runner.batches == [2] and all(isinstance(result, TypeError) for result in done)
    runner.broken = False
    outputs, _, _ = await asyncio.wait_for(batcher.submit({"x": rows([3])}, 1), 5)
    np.testing.assert_array_equal(outputs["y"], rows([3]) * 2)
    await batcher.stop()


def fixed_load(saturated: bool) -> LoopLoad:
    """A LoopLoad whose clocks say the loop's thread is always busy, or never."""
    ticks = itertools.count(0, WINDOW_NS)  # a window passes between any two readings
    now = [0]

    def clock() -> int:
        now[0] = next(ticks)
        return now[0]

    return LoopLoad(clock=clock, cpu=lambda: now[0] if saturated else 0)


def adaptive_batcher(runner, saturated: bool, spec: ModelSpec | None = None) -> DynamicBatcher:
    """A started batcher whose loop reads saturated or not. The wait's cap is a second, far above any
    loop turn even on a loaded machine: what ends a wait in these tests is a turn without a request."""
    batcher = DynamicBatcher(runner, spec or make_spec(), ModelStatistics("m", "1"), Metrics(), ("m", "1"),
                             load=fixed_load(saturated), adaptive_delay_us=1_000_000)
    batcher.start()
    return batcher


async def _arrive(batcher: DynamicBatcher, together: int = 2, then: int = 3) -> list[asyncio.Task]:
    """`together` one-row requests in one turn (as one read brings them), then `then` more one per loop
    turn (as reads from other connections bring them); wait for all."""
    tasks = [asyncio.create_task(batcher.submit({"x": rows([i])}, 1)) for i in range(together)]
    await queued()
    for i in range(together, together + then):
        tasks.append(asyncio.create_task(batcher.submit({"x": rows([i])}, 1)))
        await queued()
    await asyncio.gather(*tasks)
    return tasks


async def _turns_until(awaitable) -> int:
    """Loop turns that pass while `awaitable` completes."""
    turns = 0
    job = asyncio.ensure_future(awaitable)
    while not job.done():
        turns += 1
        await asyncio.sleep(0)
    await job
    return turns


@pytest.mark.parametrize("saturated", [True, False], ids=["saturated", "idle"])
async def test_a_saturated_loop_waits_for_requests_that_arrive_turn_after_turn(saturated):
    runner = InlineRunner(short=8)
    batcher = adaptive_batcher(runner, saturated)
    tasks = await _arrive(batcher)
    for i, task in enumerate(tasks):
        np.testing.assert_array_equal(task.result()[0]["y"], rows([i]) * 2)
    if saturated:
        assert runner.batches[0] >= 4, runner.batches  # the first two waited for those behind them
    else:
        assert runner.batches == [2, 1, 1, 1]  # Triton's semantics: whatever is queued goes at once
    await batcher.stop()


async def test_a_lone_clients_requests_never_wait_even_on_a_saturated_loop():
    turns = {}
    for saturated in (False, True):
        runner = InlineRunner(short=8)
        batcher = adaptive_batcher(runner, saturated)
        # Never more than one request queued: nobody to wait for, not even one loop turn.
        turns[saturated] = [await _turns_until(batcher.submit({"x": rows([1])}, 1)) for _ in range(5)]
        assert runner.batches == [1] * 5
        await batcher.stop()
    assert turns[True] == turns[False]


async def test_the_wait_ends_at_the_first_turn_that_brings_no_request():
    turns = {}
    for saturated in (False, True):
        runner = InlineRunner(short=8)
        batcher = adaptive_batcher(runner, saturated)
        both = asyncio.gather(*(batcher.submit({"x": rows([i])}, 1) for i in range(2)))
        turns[saturated] = await _turns_until(both)
        assert runner.batches == [2]
        await batcher.stop()
    # One turn more to learn that nothing else came, not the thousands an idle loop turns in the cap.
    assert turns[True] <= turns[False] + 1, turns


@pytest.mark.parametrize(("batching", "batches"), [
    pytest.param(BatchingSpec(max_queue_delay_us=1), [2, 1, 1, 1], id="own-delay"),
    pytest.param(None, [1, 1, 1, 1, 1], id="no-dynamic-batching"),
])
async def test_a_model_with_its_own_delay_or_no_batching_never_gets_the_adaptive_one(batching, batches):
    runner = InlineRunner(short=8)
    batcher = adaptive_batcher(runner, True, make_spec(batching=batching))
    await _arrive(batcher)
    assert runner.batches == batches
    await batcher.stop()


async def test_a_batch_whose_run_goes_to_the_pool_never_waits():
    batches = {}
    for saturated in (False, True):
        runner = InlineRunner(short=1)  # two rows or more: a run on the pool, whose instance would idle
        batcher = adaptive_batcher(runner, saturated)
        await _arrive(batcher)
        batches[saturated] = runner.batches
        await batcher.stop()
    assert batches[True] == batches[False]


async def test_the_adaptive_batching_parameter_turns_the_wait_off():
    runner = InlineRunner(short=8)
    spec = dataclasses.replace(make_spec(), adaptive_batching=False)
    batcher = adaptive_batcher(runner, True, spec)
    await _arrive(batcher)
    assert runner.batches == [2, 1, 1, 1]
    await batcher.stop()
