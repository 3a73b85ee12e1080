"""RepositoryWatcher: poll mode's background task, one ModelManager.poll every `interval_s` seconds.

A failing poll is logged and the next one runs as usual: the watcher never dies while the server runs.
"""

from __future__ import annotations

import asyncio
import logging

from ..background import spawn
from .manager import ModelManager

__all__ = ["RepositoryWatcher"]

logger = logging.getLogger(__name__)


class RepositoryWatcher:
    """Started and stopped by App on its event loop."""

    def __init__(self, manager: ModelManager, interval_s: float) -> None:
        if interval_s <= 0:
            raise ValueError(f"repository poll interval must be positive, got {interval_s} s")
        self._manager = manager
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = spawn(self._run(), "repository-watcher")

    async def _run(self) -> None:
        logger.info("watching model repository %s every %g s", self._manager.repository, self._interval_s)
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self._manager.poll()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("model repository poll failed; the next one runs as usual")

    async def stop(self) -> None:
        """Cancel the loop; a reload in progress is cancelled with it, the serving versions stay."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
