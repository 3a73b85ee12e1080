"""Poll until a condition holds: the one helper the tests use to wait for something they cannot await.

Both variants check the condition first, then every `interval_s`; they raise AssertionError naming
`message` once `timeout_s` has passed (a monotonic clock) without it holding.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

__all__ = ["async_wait_until", "wait_until"]


def wait_until(predicate: Callable[[], object], timeout_s: float = 30.0, interval_s: float = 0.05,
               message: str | Callable[[], str] = "condition not reached") -> float:
    """Block this thread until `predicate()` is truthy; return the seconds that took. `message` may be
    a function, called only on a timeout (to show the state that was waited on)."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start >= timeout_s:
            raise AssertionError(f"timed out after {timeout_s} s: {message() if callable(message) else message}")
        time.sleep(interval_s)
    return time.monotonic() - start


async def async_wait_until(predicate: Callable[[], object | Awaitable[object]], timeout_s: float = 30.0,
                           interval_s: float = 0.05, message: str = "condition not reached") -> None:
    """Yield to the running loop until `predicate()` (a plain or a coroutine function) is truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s

    async def holds() -> object:
        value = predicate()
        return await value if inspect.isawaitable(value) else value

    while not await holds():
        assert loop.time() < deadline, f"timed out after {timeout_s} s: {message}"
        await asyncio.sleep(interval_s)
