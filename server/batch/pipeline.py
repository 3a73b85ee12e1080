"""The local engine: read -> run -> write as a bounded pipeline on one event loop.

A reader thread decodes record batches and builds feeds, `instances` tasks run them on the model's
sessions (ORT releases the GIL), and results are written strictly in read order, so each output file
keeps its input file's row order: the loop gathers them into row groups and a writer thread encodes
and writes each row group. At most `instances + queue_batches` batches are between reading and writing
at any time: memory does not grow with the input.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy.typing as npt

from ..errors import InvalidInput
from .columns import ColumnPlan, Prepared
from .job import BatchJob, BatchResult
from .location import Location
from .manifest import FragmentRecord, Manifest
from .model import ScoringModel
from .output import REJECTS_DIR, FileWriter
from .progress import Progress
from .source import Fragment, ParquetSource

__all__ = ["LocalPipeline"]


@dataclass(slots=True)
class _Item:
    seq: int
    fragment: Fragment
    kind: str
    """"start", "batch" or "end" of a fragment."""

    prepared: Prepared | None = None
    outputs: dict[str, npt.NDArray[Any]] | None = None


@dataclass(slots=True)
class _Open:
    """The output file being written and its counts."""

    output: FileWriter
    rejects: FileWriter
    rows: int = 0
    reasons: Counter[str] = field(default_factory=Counter)


class LocalPipeline:
    """Scores the fragments not yet in the manifest. One instance per run."""

    def __init__(self, job: BatchJob, model: ScoringModel, plan: ColumnPlan, source: ParquetSource,
                 output: Location, manifest: Manifest, progress: Progress | None) -> None:
        self._job = job
        self._model = model
        self._plan = plan
        self._source = source
        self._output = output
        self._manifest = manifest
        self._progress = progress
        self._result = BatchResult()
        self._done: dict[int, _Item] = {}
        self._arrived = asyncio.Event()
        self._open: _Open | None = None
        # One thread each, not asyncio.to_thread's pool: a hop per batch spread over the pool's threads
        # cost ~0.1 CPU-us a row more on the small model (each thread cold in cache, more wake-ups).
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="batch-read")
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="batch-write")

    async def run(self, fragments: list[Fragment]) -> BatchResult:
        """Raises InvalidInput (bad data with --on-error fail) or ExecutionFailed; what was committed
        stays committed, the file being written is discarded."""
        started, cpu_started = time.monotonic(), time.process_time()
        slots = asyncio.Semaphore(self._model.instances + self._job.queue_batches)
        work: asyncio.Queue[_Item | None] = asyncio.Queue()
        try:
            async with asyncio.TaskGroup() as group:
                total = group.create_task(self._read(fragments, slots, work))
                for _ in range(self._model.instances):
                    group.create_task(self._compute(work))
                group.create_task(self._write(total, slots))
        except BaseExceptionGroup as errors:
            if self._open is not None:
                await self._on_writer(self._abort, self._open)
            raise errors.exceptions[0] from None
        finally:
            self._reader.shutdown(wait=False)
            self._writer.shutdown(wait=False)
        self._result.seconds = time.monotonic() - started
        self._result.cpu_seconds = time.process_time() - cpu_started
        return self._result

    # -- read ----------------------------------------------------------------------------------
    def _items(self, fragments: list[Fragment]) -> Iterator[_Item]:
        seq = 0
        for fragment in fragments:
            yield _Item(seq, fragment, "start")
            seq += 1
            first_row = 0
            for batch in self._source.batches(fragment, self._plan.read_columns, self._job.batch_rows):
                prepared = self._plan.prepare(batch, first_row)
                if prepared.rejects is not None and self._job.on_error == "fail":
                    row = prepared.rejects.column("_row")[0].as_py()
                    reason = prepared.rejects.column("_reject_reason")[0].as_py()
                    raise InvalidInput(f"{fragment.name}: row {row}: {reason}; nothing of this file was "
                                       "written (--on-error skip sets such rows aside)")
                first_row += batch.num_rows
                yield _Item(seq, fragment, "batch", prepared)
                seq += 1
            yield _Item(seq, fragment, "end")
            seq += 1

    async def _read(self, fragments: list[Fragment], slots: asyncio.Semaphore,
                    work: asyncio.Queue[_Item | None]) -> int:
        items = self._items(fragments)
        count = 0
        try:
            while True:
                await slots.acquire()
                item = await asyncio.get_running_loop().run_in_executor(self._reader, next, items, None)
                if item is None:
                    break
                count += 1
                if item.kind == "batch":
                    await work.put(item)
                else:
                    self._arrive(item)
            for _ in range(self._model.instances):
                await work.put(None)
            return count
        finally:
            self._arrived.set()  # the writer may be waiting to learn that nothing more comes

    # -- run -----------------------------------------------------------------------------------
    async def _compute(self, work: asyncio.Queue[_Item | None]) -> None:
        while (item := await work.get()) is not None:
            assert item.prepared is not None
            if item.prepared.rows:
                item.outputs = await self._model.score(item.prepared.feeds)
            self._arrive(item)

    def _arrive(self, item: _Item) -> None:
        self._done[item.seq] = item
        self._arrived.set()

    # -- write ---------------------------------------------------------------------------------
    async def _write(self, total: asyncio.Task[int], slots: asyncio.Semaphore) -> None:
        seq = 0
        while not (total.done() and seq == total.result()):
            item = self._done.pop(seq, None)
            if item is None:
                # Arrivals (and the end of reading) happen on this loop: none can slip in since the pop.
                self._arrived.clear()
                await self._arrived.wait()
                continue
            await self._write_item(item)
            if item.kind == "batch" and self._progress is not None and item.prepared is not None:
                self._progress.advance(item.prepared.rows + _rejected(item.prepared))
            slots.release()
            seq += 1

    async def _on_writer(self, fn: Callable[..., None], *args: Any) -> None:
        await asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)

    async def _write_item(self, item: _Item) -> None:
        """Gathers on the loop; encoding and I/O go to the writer thread."""
        fragment = item.fragment
        if item.kind == "start":
            self._open = _Open(
                FileWriter(self._output, fragment.name, self._plan.output_schema(fragment.schema),
                           dictionary_columns=self._plan.keep, statistics_columns=self._plan.scalar_columns),
                FileWriter(self._output, f"{REJECTS_DIR}/{fragment.name}", self._plan.rejects_schema(fragment.schema)))
            return
        current = self._open
        assert current is not None
        if item.kind == "batch":
            prepared = item.prepared
            assert prepared is not None
            current.rows += prepared.rows + _rejected(prepared)
            if prepared.rows:
                assert item.outputs is not None
                if current.output.add(self._plan.to_arrow(prepared.keep, item.outputs)):
                    await self._on_writer(current.output.flush)
            if prepared.rejects is not None:
                await self._on_writer(current.rejects.write, prepared.rejects)
                current.reasons.update(prepared.rejects.column("_reject_reason").to_pylist())
            return
        await self._on_writer(self._commit, fragment, current)

    def _commit(self, fragment: Fragment, current: _Open) -> None:
        current.output.commit()
        if current.rejects.rows:
            current.rejects.commit()
        record = FragmentRecord(current.rows, current.output.rows, current.rejects.rows, dict(current.reasons))
        self._manifest.record(fragment.name, record)
        self._open = None
        self._result.rows += record.rows
        self._result.scored += record.scored
        self._result.rejected += record.rejected
        self._result.reasons.update(record.reasons)
        self._result.files_done += 1

    @staticmethod
    def _abort(current: _Open) -> None:
        current.output.abort()
        current.rejects.abort()


def _rejected(prepared: Prepared) -> int:
    return prepared.rejects.num_rows if prepared.rejects is not None else 0
