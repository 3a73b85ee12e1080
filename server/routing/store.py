"""Where one process's rollout state survives restarts: a JSON file per model in the state directory.
With Redis, the fleet's shared state lives in FleetStore (fleet_store.py) instead. Writes happen on
transitions only."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Protocol

from ..names import check_model_name, path_inside
from .state import RolloutState

__all__ = ["FileStateStore", "StateStore"]


class StateStore(Protocol):
    async def load_all(self) -> dict[str, RolloutState]: ...

    async def save(self, state: RolloutState) -> None: ...

    async def close(self) -> None: ...


class FileStateStore:
    """`<state_dir>/rollouts/<model>.json`, replaced atomically (write, fsync, rename)."""

    def __init__(self, state_dir: Path) -> None:
        self._dir = state_dir / "rollouts"

    async def load_all(self) -> dict[str, RolloutState]:
        return await asyncio.to_thread(self._load_all)

    def _load_all(self) -> dict[str, RolloutState]:
        if not self._dir.is_dir():
            return {}
        states = {}
        for path in sorted(self._dir.glob("*.json")):
            state = RolloutState.from_json(json.loads(path.read_text()))
            states[state.model] = state
        return states

    async def save(self, state: RolloutState) -> None:
        await asyncio.to_thread(self._save, state)

    def _save(self, state: RolloutState) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        target = path_inside(self._dir, f"{check_model_name(state.model)}.json")
        tmp = target.with_suffix(".json.tmp")
        with open(tmp, "w") as handle:
            json.dump(state.to_json(), handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)

    async def close(self) -> None:
        return None
