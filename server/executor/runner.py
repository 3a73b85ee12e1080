"""OrtRunner: runs batches on a model version's sessions, on a bounded thread pool off the event loop.

ORT's `run` releases the GIL, so one thread per session instance gives real parallelism.

Except for runs too short to be worth the trip. Handing a run to the pool and its result back costs
CPU (executor future, thread wake-up, self-pipe wake-up of the loop, callbacks) that the loop pays
whenever the two share a core: on this project's 2-core machine, ~25 us per batch in a hot loop and
50-110 us in a server pinned to one core (BENCHMARKS.md), while a 4-row batch of a small MLP computes
in ~7 us. A run whose batch size has recently computed in under `inline_run_us` of CPU is made on the
loop's thread instead. Each run's CPU time is measured where it runs, per batch-size bucket (powers of
two), so a bucket whose runs grow slower goes back to the pool at once, and one never measured always
goes there first. Only single-threaded CPU sessions qualify: the calling thread's CPU time is then the
run's whole cost.

The default limit depends on what the pool can buy. With several CPUs a pooled run overlaps the
loop's own work, so only runs shorter than the hand-off stay on the loop (20 us). A process that can
use one CPU (`usable_cpus`: its affinity, or a container's quota; under `--workers N` each worker's
share) gets no overlap: the pooled run takes the same core from the loop and the hand-off comes on
top, so runs up to 500 us stay on the loop: long enough for a 64-row batch of a small model on a slow
core (100 us was, on a faster machine; on a slower one its 64-row runs took ~110 us, went to the pool,
and 64-row requests lost 40-50% of their rows/s: BENCHMARKS.md, "A queue delay while the loop is
saturated"), short enough that a run delays the loop's other connections by half a millisecond at most
(the limit applies to a batch size's moving average, so one run can take longer). A heavy model's
batches, milliseconds each, still go to the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import onnxruntime as ort

from ..errors import ExecutionFailed
from ..spec import ModelSpec
from ..tensors import Tensor
from .session import create_sessions

__all__ = ["INLINE_RUN_US_MANY_CPUS", "INLINE_RUN_US_ONE_CPU", "OrtRunner", "default_inline_run_us"]

_SMOOTHING = 0.25  # weight of the newest run in a bucket's moving average
INLINE_RUN_US_MANY_CPUS = 20
INLINE_RUN_US_ONE_CPU = 500


def default_inline_run_us(cpus: float) -> int:
    """The inline limit for an event loop with `cpus` to overlap runs with (`usable_cpus`, or a worker's
    share of them), when neither the server nor the model sets one: see the module's note."""
    return INLINE_RUN_US_ONE_CPU if cpus <= 1 else INLINE_RUN_US_MANY_CPUS


def _yield_to_event_loop() -> None:
    """Lower this ORT worker thread's scheduling priority below the event loop's.

    On a machine with few cores, a run that holds a core while requests arrive starves the loop that
    accepts them, so batches stay small. Seen here (BENCHMARKS.md): nice 10 on the ORT thread grew
    heavy-model batches from ~7 to ~15 rows and throughput by 20-30%.
    """
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


class OrtRunner:
    """Owns the sessions of one model version and the thread pool they run on."""

    def __init__(self, spec: ModelSpec, sessions: list[ort.InferenceSession], *, yield_to_loop: bool = True,
                 inline_run_us: int = 0) -> None:
        self._spec = spec
        self._idle = list(sessions)
        self._count = len(sessions)
        self._output_names = [o.name for o in spec.outputs]
        self._bf16_inputs = {t.name for t in spec.inputs if t.datatype == "BF16"}
        self._pool = ThreadPoolExecutor(max_workers=self._count, thread_name_prefix=f"ort-{spec.name}",
                                        initializer=_yield_to_event_loop if yield_to_loop else None)
        limit = max(spec.inline_run_us if spec.inline_run_us is not None else inline_run_us, 0)
        single_threaded_cpu = spec.intra_op_threads == 1 and spec.inter_op_threads <= 1 and all(
            s.get_providers() == ["CPUExecutionProvider"] for s in sessions)
        self._inline_limit_ns = limit * 1000 if single_threaded_cpu else 0
        self._run_ns: dict[int, float] = {}
        """Moving average of a run's CPU ns per batch-size bucket (rows.bit_length())."""

    @classmethod
    def create(cls, spec: ModelSpec, *, yield_to_loop: bool = True, inline_run_us: int = 0) -> OrtRunner:
        """Build every session of the spec. Blocking: call through asyncio.to_thread.

        `yield_to_loop=False` keeps the ORT threads at normal priority: for offline scoring
        (`tessera batch`), where no request waits on the event loop and compute is the job.
        `inline_run_us` (the model's `inline_run_us` parameter overrides it): see the module's note.
        """
        return cls(spec, create_sessions(spec), yield_to_loop=yield_to_loop, inline_run_us=inline_run_us)

    @property
    def instances(self) -> int:
        return self._count

    async def run(self, feeds: dict[str, Tensor]) -> dict[str, Tensor]:
        """Run one batch on an idle session. The caller never has more than `instances` runs in flight.

        Raises ExecutionFailed with ORT's message when the run fails.
        """
        bucket = _bucket(feeds) if self._inline_limit_ns else 0
        session = self._idle.pop()
        try:
            if self._inline(bucket):
                results = self._run_sync(session, feeds, bucket)
            else:
                loop = asyncio.get_running_loop()
                results = await loop.run_in_executor(self._pool, self._run_sync, session, feeds, bucket)
        finally:
            self._idle.append(session)
        return dict(zip(self._output_names, results, strict=True))

    def _run_sync(self, session: ort.InferenceSession, feeds: dict[str, Tensor], bucket: int = 0) -> list[Any]:
        if self._bf16_inputs:
            feeds = {name: self._bf16(name, array) for name, array in feeds.items()}
        started = time.thread_time_ns()
        try:
            results = session.run(self._output_names, feeds)
        except Exception as exc:
            raise ExecutionFailed(f"model '{self._spec.name}' version {self._spec.version}: {exc}") from exc
        if bucket:
            spent = time.thread_time_ns() - started
            before = self._run_ns.get(bucket)
            # Written from the loop or a pool thread, read on the loop: a float swap, no lock needed.
            self._run_ns[bucket] = spent if before is None else before + _SMOOTHING * (spent - before)
        return results  # type: ignore[no-any-return]

    def _bf16(self, name: str, array: Tensor) -> Any:
        if name not in self._bf16_inputs:
            return array
        # BF16 travels as uint16 bit patterns; hand ORT an OrtValue typed as bfloat16 (ONNX type 16).
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(np.ascontiguousarray(array), 16)

    def runs_inline(self, rows: int) -> bool:
        """Whether a run of a `rows`-row batch would now be made on the event loop."""
        return self._inline(rows.bit_length())

    def _inline(self, bucket: int) -> bool:
        """Bucket 0 is a run not measured; a bucket with no measure yet goes to the pool first."""
        return bucket > 0 and self._run_ns.get(bucket, self._inline_limit_ns) < self._inline_limit_ns

    @property
    def inline_limit_us(self) -> int:
        """Runs of a batch size whose recent CPU time is under this are made on the event loop; 0: never."""
        return self._inline_limit_ns // 1000

    def close(self) -> None:
        """Release the sessions and the pool; in-flight runs finish first."""
        self._pool.shutdown(wait=True)
        self._idle.clear()


def _bucket(feeds: dict[str, Tensor]) -> int:
    """Batch-size bucket of a run: the bit length of its first input's leading dimension (1 for scalars)."""
    for array in feeds.values():
        return (array.shape[0] if array.ndim else 1).bit_length()
    return 1

