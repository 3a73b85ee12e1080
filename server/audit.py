"""The audit trail: one JSON line per administrative event (rollout start, step, analysis, promote,
rollback, abort; repository load / unload) and per refused credential, with time, model, identity,
source address and outcome. Appends run off the event loop.

`write` is awaited by the admin operations that produce it; `record` never waits: it queues the line
(bounded; beyond the bound, and beyond `max_records_per_s`, lines are dropped and counted, and the
count is written as an `audit_dropped` line), so a flood of refused requests cannot grow memory or
the log without bound.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

from .background import spawn

__all__ = ["AuditLog"]

logger = logging.getLogger(__name__)


class AuditLog:
    def __init__(self, path: Path, *, max_pending: int = 1024, max_records_per_s: float = 100.0) -> None:
        self.path = path
        self.dropped = 0
        """Lines `record` left out since start (queue full or over the rate)."""
        self._max_pending = max_pending
        self._rate = max_records_per_s
        self._allowance = max_records_per_s
        self._last = time.monotonic()
        self._pending: list[str] = []
        self._unreported_drops = 0
        self._flush: asyncio.Task[None] | None = None
        self._report: asyncio.TimerHandle | None = None

    async def write(self, event: str, model: str, *, actor: str = "system", reason: str = "",
                    **details: Any) -> None:
        record = {"time": time.time(), "event": event, "model": model, "actor": actor, "reason": reason,
                  **details}
        await asyncio.to_thread(self._append, [json.dumps(record, default=str)])

    def record(self, event: str, model: str, **details: Any) -> None:
        """Queue a line without waiting (call on the event loop). Dropped and counted when over the bounds."""
        now = time.monotonic()
        self._allowance = min(self._rate, self._allowance + (now - self._last) * self._rate)
        self._last = now
        if self._allowance < 1 or len(self._pending) >= self._max_pending:
            self.dropped += 1
            self._unreported_drops += 1
            if self._report is None:  # the count is written at most once a second during a flood
                self._report = asyncio.get_running_loop().call_later(1.0, self._start_flush)
            return
        self._allowance -= 1
        self._pending.append(json.dumps({"time": time.time(), "event": event, "model": model, **details},
                                        default=str))
        self._start_flush()

    def _start_flush(self) -> None:
        self._report = None
        if self._flush is None or self._flush.done():
            self._flush = spawn(self._drain(), "audit-flush")

    async def _drain(self) -> None:
        try:
            while self._pending or self._unreported_drops:
                lines, self._pending = self._pending, []
                if self._unreported_drops:
                    lines.append(json.dumps({"time": time.time(), "event": "audit_dropped",
                                             "count": self._unreported_drops}))
                    self._unreported_drops = 0
                await asyncio.to_thread(self._append, lines)
        except Exception:
            logger.exception("audit lines could not be written to %s", self.path)

    async def flush(self) -> None:
        """Wait until every queued line and the count of dropped ones are written (shutdown, tests)."""
        if self._report is not None:
            self._report.cancel()
        if self._pending or self._unreported_drops:
            self._start_flush()
        while self._flush is not None and not self._flush.done():
            await asyncio.shield(self._flush)

    def _append(self, lines: list[str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as handle:
            handle.write("".join(line + "\n" for line in lines))

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]
