"""Per-stream queue shares and string-heavy batches, driven directly on a DynamicBatcher."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from server.batching import QueueShare
from server.batching.batcher import STRING_ELEMENTS_PER_RUN, DynamicBatcher
from server.errors import Overloaded
from server.spec import BatchingSpec

from .test_batcher import GatedRunner, make_batcher, make_spec, rows


class EchoRunner:
    """Returns its string input's row count as an output; records the rows of each run."""

    instances = 1

    def __init__(self) -> None:
        self.runs: list[int] = []

    async def run(self, feeds):
        self.runs.append(int(feeds["x"].shape[0]))
        return {"y": np.full((feeds["x"].shape[0], 2), len(self.runs), dtype=np.int64)}

    def runs_inline(self, rows: int) -> bool:
        return False

    def close(self) -> None:
        pass


async def _submit_in(share: QueueShare | None, batcher: DynamicBatcher, value: float):
    if share is None:
        return await batcher.submit({"x": rows([value])}, 1)
    with share.applied():
        return await batcher.submit({"x": rows([value])}, 1)


async def test_a_share_holds_at_most_its_part_of_the_queue_and_others_still_get_in():
    runner = GatedRunner()
    runner.gate.clear()
    batcher = make_batcher(runner, make_spec(batching=BatchingSpec(max_queue_size=8)))
    stream = QueueShare(0.25)  # 2 of 8
    flood = [asyncio.create_task(_submit_in(stream, batcher, i)) for i in range(6)]
    await asyncio.sleep(0.01)
    refused = [t for t in flood if t.done() and isinstance(t.exception(), Overloaded)]
    assert len(refused) == 4
    assert "its share of the queue (8 requests)" in str(refused[0].exception())
    other = asyncio.create_task(_submit_in(None, batcher, 9))
    another_stream = asyncio.create_task(_submit_in(QueueShare(0.25), batcher, 10))
    runner.gate.set()
    assert (await other)[0]["y"][0, 0] == 18
    assert (await another_stream)[0]["y"][0, 0] == 20
    assert len([t for t in flood if not t.done() or t.exception() is None]) == 2
    await asyncio.gather(*flood, return_exceptions=True)
    with stream.applied():  # the share's requests are done: it has room again
        await batcher.submit({"x": rows([1])}, 1)
    await batcher.stop(1)


@pytest.mark.parametrize("fraction", [pytest.param(0.0, id="zero"), pytest.param(0.01, id="tiny")])
async def test_a_share_always_allows_one_request(fraction):
    batcher = make_batcher(GatedRunner(), make_spec(batching=BatchingSpec(max_queue_size=8)))
    with QueueShare(fraction).applied():
        await batcher.submit({"x": rows([1])}, 1)
    await batcher.stop(1)


async def test_a_string_heavy_batch_runs_a_step_of_rows_at_a_time():
    runner = EchoRunner()
    batcher = make_batcher(runner, make_spec())  # type: ignore[arg-type]
    width = STRING_ELEMENTS_PER_RUN // 2  # two rows per run
    strings = np.full((6, width), "ab", dtype="<U2")
    outputs, _, _ = await batcher.submit({"x": strings}, 6)
    assert runner.runs == [2, 2, 2]
    np.testing.assert_array_equal(outputs["y"][:, 0], [1, 1, 2, 2, 3, 3])
    await batcher.stop(1)
