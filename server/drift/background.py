"""Background work of the drift side path: tasks whose failure is logged, never lost, and one worker
thread for the heavy, occasional work (encoding and evaluating closed windows) that must not hold
the serving event loop: a 512-feature window takes ~25 ms to encode and longer to evaluate.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["OffLoopWorker", "spawn"]

T = TypeVar("T")

logger = logging.getLogger(__name__)


def _report(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("background task %s failed", task.get_name(), exc_info=task.exception())


def spawn(coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
    """Create a task on the running loop; an exception ending it is logged with its traceback."""
    task = asyncio.create_task(coro, name=name)
    task.add_done_callback(_report)
    return task


class OffLoopWorker:
    """Runs functions one at a time, in order, on one thread of its own.

    One thread keeps the work serial (the embedded monitor's state needs no lock) and bounds what it
    can take from the serving loop: while it computes, the loop waits for the GIL at most one switch
    interval (5 ms) at a time instead of for the whole computation.
    """

    def __init__(self, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
