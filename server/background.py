"""The one way a server process starts background work: a task that is referenced until it ends, whose
crash is logged with its traceback (never lost with a dropped reference), and which the App cancels on
shutdown if its owner has not already stopped it."""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Coroutine
from typing import Any

__all__ = ["cancel", "cancel_remaining", "spawn"]

logger = logging.getLogger(__name__)

# Tasks by event loop: in tests several Apps run in one process, each on its own loop, and one App's
# shutdown must cancel only what was started on its loop.
_running: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, set[asyncio.Task[Any]]] = weakref.WeakKeyDictionary()


def _ended(task: asyncio.Task[Any]) -> None:
    tasks = _running.get(task.get_loop())
    if tasks is not None:
        tasks.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.error("background task %s failed", task.get_name(), exc_info=task.exception())


def spawn(coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
    """Start `coro` as a task on the running loop, keep it referenced, and log it if it crashes."""
    loop = asyncio.get_running_loop()
    task = loop.create_task(coro, name=name)
    _running.setdefault(loop, set()).add(task)
    task.add_done_callback(_ended)
    return task


async def cancel(*tasks: asyncio.Task[Any] | None, timeout_s: float = 10.0) -> None:
    """Cancel the given tasks (None ones skipped) and wait until they have ended, at most `timeout_s`:
    a task stuck in its cleanup (a connection that never closes) must not hold up a shutdown. Their
    crashes were already logged, so nothing is raised here."""
    running = [t for t in tasks if t is not None and not t.done()]
    for task in running:
        task.cancel()
    if not running:
        return
    _, stuck = await asyncio.wait(running, timeout=timeout_s)
    for task in stuck:
        logger.warning("background task %s did not end within %.0f s of being cancelled", task.get_name(),
                       timeout_s)


async def cancel_remaining(timeout_s: float = 5.0) -> None:
    """Cancel every task spawned on this loop that is still running, and wait for them (bounded)."""
    tasks = [t for t in _running.get(asyncio.get_running_loop(), ()) if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=timeout_s)
