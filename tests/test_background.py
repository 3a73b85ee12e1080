"""Background tasks: referenced until they end, a crash logged with its traceback, cancelled at shutdown."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest

from server.background import cancel_remaining, spawn


async def test_a_crash_is_logged_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    async def crash() -> None:
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR, logger="server.background"):
        task = spawn(crash(), "crasher")
        await asyncio.wait([task])
    [record] = [r for r in caplog.records if r.name == "server.background"]
    assert "crasher" in record.getMessage() and record.exc_info is not None


async def test_a_task_nobody_holds_keeps_running_until_it_ends() -> None:
    done = asyncio.Event()
    release = asyncio.Event()

    async def work() -> None:
        await release.wait()
        done.set()

    spawn(work(), "unreferenced")  # the caller drops the task at once
    gc.collect()
    release.set()
    await asyncio.wait_for(done.wait(), 5)


async def test_shutdown_cancels_what_is_left_on_this_loop_only() -> None:
    forever = spawn(asyncio.Event().wait(), "forever")
    await asyncio.sleep(0)
    await cancel_remaining(timeout_s=5)
    assert forever.cancelled()
