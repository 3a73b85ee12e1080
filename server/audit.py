"""The audit trail: one JSON line per administrative event (rollout start, step, analysis, promote,
rollback, abort), with time, model, versions, actor and reason. Appends run off the event loop."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

__all__ = ["AuditLog"]


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    async def write(self, event: str, model: str, *, actor: str = "system", reason: str = "",
                    **details: Any) -> None:
        record = {"time": time.time(), "event": event, "model": model, "actor": actor, "reason": reason,
                  **details}
        await asyncio.to_thread(self._append, json.dumps(record, default=str))

    def _append(self, line: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as handle:
            handle.write(line + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]
