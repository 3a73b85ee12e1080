"""Background work of the drift side path: tasks whose failure is logged, never lost, and generators
of work driven a step at a time, so that the serving event loop runs requests between the steps.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

__all__ = ["run_steps", "spawn"]

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


async def run_steps(steps: Generator[None, None, T]) -> tuple[T, float]:
    """Run `steps` to its end, yielding to the event loop after each step.

    Returns the generator's return value and the CPU time this thread spent inside its steps (the
    loop's other work in between is not counted). If the caller is cancelled between two steps, the
    generator is left where it stopped, so its owner can finish it.
    """
    spent = 0.0
    while True:
        started = time.thread_time()
        try:
            next(steps)
        except StopIteration as done:
            return done.value, spent + time.thread_time() - started
        spent += time.thread_time() - started
        await asyncio.sleep(0)  # requests go first between steps
