"""Work of the drift side path driven a step at a time, so that the serving event loop runs requests
between the steps (its tasks start through server/background.py like every other)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Generator
from typing import TypeVar

__all__ = ["run_steps"]

T = TypeVar("T")

logger = logging.getLogger(__name__)


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
