"""Where rollout state survives restarts: a JSON file per model in the state directory, or Redis
when one is configured (so every replica shares one rollout). Writes happen on transitions only."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Protocol

from ..names import check_model_name, path_inside
from .state import RolloutState

__all__ = ["FileStateStore", "RedisStateStore", "StateStore"]


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


class RedisStateStore:
    """One hash `tessera:rollouts` (field: model, value: JSON) shared by every replica."""

    KEY = "tessera:rollouts"

    def __init__(self, url: str) -> None:
        import redis.asyncio as redis

        self._redis = redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)

    async def load_all(self) -> dict[str, RolloutState]:
        raw = await self._redis.hgetall(self.KEY)
        states = (RolloutState.from_json(json.loads(v)) for v in raw.values())
        return {s.model: s for s in states}

    async def save(self, state: RolloutState) -> None:
        await self._redis.hset(self.KEY, state.model, json.dumps(state.to_json()))

    async def close(self) -> None:
        await self._redis.aclose()
