"""OrtRunner: runs batches on a model version's sessions, on a bounded thread pool off the event loop.

ORT's `run` releases the GIL, so one thread per session instance gives real parallelism.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import onnxruntime as ort

from ..errors import ExecutionFailed
from ..spec import ModelSpec
from ..tensors import Tensor
from .session import create_sessions

__all__ = ["OrtRunner"]


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

    def __init__(self, spec: ModelSpec, sessions: list[ort.InferenceSession], *, yield_to_loop: bool = True
                 ) -> None:
        self._spec = spec
        self._idle = list(sessions)
        self._count = len(sessions)
        self._output_names = [o.name for o in spec.outputs]
        self._bf16_inputs = {t.name for t in spec.inputs if t.datatype == "BF16"}
        self._pool = ThreadPoolExecutor(max_workers=self._count, thread_name_prefix=f"ort-{spec.name}",
                                        initializer=_yield_to_event_loop if yield_to_loop else None)

    @classmethod
    def create(cls, spec: ModelSpec, *, yield_to_loop: bool = True) -> OrtRunner:
        """Build every session of the spec. Blocking: call through asyncio.to_thread.

        `yield_to_loop=False` keeps the ORT threads at normal priority: for offline scoring
        (`tessera batch`), where no request waits on the event loop and compute is the job.
        """
        return cls(spec, create_sessions(spec), yield_to_loop=yield_to_loop)

    @property
    def instances(self) -> int:
        return self._count

    async def run(self, feeds: dict[str, Tensor]) -> dict[str, Tensor]:
        """Run one batch on an idle session. The caller never has more than `instances` runs in flight.

        Raises ExecutionFailed with ORT's message when the run fails.
        """
        session = self._idle.pop()
        try:
            loop = asyncio.get_running_loop()
            results = await loop.run_in_executor(self._pool, self._run_sync, session, feeds)
        finally:
            self._idle.append(session)
        return dict(zip(self._output_names, results, strict=True))

    def _run_sync(self, session: ort.InferenceSession, feeds: dict[str, Tensor]) -> list[Any]:
        if self._bf16_inputs:
            feeds = {name: self._bf16(name, array) for name, array in feeds.items()}
        try:
            return session.run(self._output_names, feeds)  # type: ignore[no-any-return]
        except Exception as exc:
            raise ExecutionFailed(f"model '{self._spec.name}' version {self._spec.version}: {exc}") from exc

    def _bf16(self, name: str, array: Tensor) -> Any:
        if name not in self._bf16_inputs:
            return array
        # BF16 travels as uint16 bit patterns; hand ORT an OrtValue typed as bfloat16 (ONNX type 16).
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(np.ascontiguousarray(array), 16)

    def close(self) -> None:
        """Release the sessions and the pool; in-flight runs finish first."""
        self._pool.shutdown(wait=True)
        self._idle.clear()
