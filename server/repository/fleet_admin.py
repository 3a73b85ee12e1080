"""FleetAdmin: repository load/unload through any replica reaches every replica (explicit mode, Redis).

The replica that takes the call applies it first (its errors are the caller's, as on one server), then
appends it to the stream `tessera:admin:commands`. Every replica reads the stream with its own cursor,
so each command is applied once per replica, and answers in `tessera:admin:result:<id>`; the first
replica waits for the live replicas' answers, up to a timeout. A replica that starts later replays the
stream's last command per model, so a scaled-out fleet serves the same models. Each replica also
publishes its repository index with a heartbeat, so any replica can show the fleet's state.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from typing import Any

import redis.asyncio as redis
from redis.exceptions import RedisError

from ..background import spawn
from ..errors import ModelLoadError, TesseraError, Unavailable
from .manager import IndexEntry, ModelManager

__all__ = ["FleetAdmin"]

logger = logging.getLogger(__name__)

STREAM = "tessera:admin:commands"
MEMBERS = "tessera:fleet:members"  # sorted set: replica -> time of its last heartbeat
INDEX = "tessera:fleet:index"  # hash: replica -> its repository index (JSON)
STREAM_MAXLEN = 1000
RESULT_TTL_S = 600
HEARTBEAT_S = 1.0
LIVE_S = 3.5  # a replica without a heartbeat for this long is not waited for
_FAILURES = (RedisError, OSError)


def _result_key(command_id: str) -> str:
    return f"tessera:admin:result:{command_id}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class FleetAdmin:
    """Explicit-mode repository admin for every replica sharing `url`. Same calls as ModelManager's."""

    def __init__(self, manager: ModelManager, url: str, replica: str, timeout_s: float) -> None:
        self._manager = manager
        self._redis = redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=2.0)
        self.replica = replica
        self._timeout_s = timeout_s
        self._cursor = "0-0"
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Replay the fleet's last command per model (when Redis answers), then follow the stream."""
        try:
            await self._replay()
        except _FAILURES as exc:
            logger.warning("fleet admin: Redis unreachable at start (%s); following the stream once it is back", exc)
        self._tasks = [spawn(self._follow(), "fleet-admin"),
                       spawn(self._heartbeat(), "fleet-heartbeat")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(*_FAILURES):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zrem(MEMBERS, self.replica)
                pipe.hdel(INDEX, self.replica)
                await pipe.execute()
        await self._redis.aclose()

    # -- the API's calls -----------------------------------------------------------------------
    async def load(self, name: str, *, config_json: str | None = None, files: dict[str, bytes] | None = None
                   ) -> None:
        """Load here, then on every replica. Raises what ModelManager.load raises (here), ModelLoadError
        naming the replicas that failed or did not answer in time, or Unavailable (Redis)."""
        await self._manager.load(name, config_json=config_json, files=files)
        encoded = {k: base64.b64encode(v).decode() for k, v in (files or {}).items()}
        await self._broadcast({"op": "load", "model": name, "config": config_json or "", "files": json.dumps(encoded)})

    async def unload(self, name: str) -> None:
        """Unload here, then on every replica. Raises like load."""
        await self._manager.unload(name)
        await self._broadcast({"op": "unload", "model": name})

    async def fleet_index(self) -> dict[str, list[IndexEntry]]:
        """Each live replica's repository index as it last published it (this one's as it is now)."""
        try:
            live = await self._live()
            raw = await self._redis.hgetall(INDEX)
        except _FAILURES as exc:
            raise Unavailable(f"the fleet's state is kept in Redis, which cannot be reached: {exc}") from exc
        index = {_text(k): [IndexEntry(*e) for e in json.loads(v)["entries"]] for k, v in raw.items()}
        index = {name: entries for name, entries in index.items() if name in live}
        index[self.replica] = self._manager.index()
        return dict(sorted(index.items()))

    async def _broadcast(self, command: dict[str, str]) -> None:
        try:
            others = [r for r in await self._live() if r != self.replica]
            fields: dict[Any, Any] = {**command, "origin": self.replica}
            command_id = _text(await self._redis.xadd(STREAM, fields, maxlen=STREAM_MAXLEN, approximate=True))
        except _FAILURES as exc:
            raise Unavailable(f"{command['op']} of '{command['model']}' was applied on this replica only: the "
                              f"fleet's Redis cannot be reached ({exc})") from exc
        answers = await self._gather(command_id, others)
        failed = [f"{r}: {a['error']}" for r, a in sorted(answers.items()) if not a["ok"]]
        silent = sorted(set(others) - set(answers))
        if failed or silent:
            reasons = failed + ([f"no answer within {self._timeout_s:g} s from {', '.join(silent)} (they apply it "
                                 "when they can)"] if silent else [])
            raise ModelLoadError(f"{command['op']} of '{command['model']}' succeeded on {self.replica} and "
                                 f"{len(answers) - len(failed)} other replica(s); " + "; ".join(reasons))

    async def _gather(self, command_id: str, replicas: list[str]) -> dict[str, dict[str, Any]]:
        answers: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + self._timeout_s
        while set(replicas) - set(answers) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            with contextlib.suppress(*_FAILURES):
                raw = await self._redis.hgetall(_result_key(command_id))
                answers = {_text(k): json.loads(v) for k, v in raw.items()}
        return answers

    # -- every replica: apply what the stream says ---------------------------------------------
    async def _replay(self) -> None:
        entries: list[tuple[bytes, dict[bytes, bytes]]] = await self._redis.xrange(STREAM)  # type: ignore[assignment]
        last: dict[str, tuple[str, dict[str, str]]] = {}
        for entry_id, fields in entries:
            command = {_text(k): _text(v) for k, v in fields.items()}
            last[command["model"]] = (_text(entry_id), command)
            self._cursor = _text(entry_id)
        for _, command in last.values():
            if command["op"] == "unload" and not self._manager.has_model(command["model"]):
                continue
            error = await self._apply(command)
            if error:
                logger.error("fleet admin: replaying %s of %s failed: %s", command["op"], command["model"], error)

    async def _follow(self) -> None:
        while True:
            try:
                batches: list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]] | None = (
                    await self._redis.xread({STREAM: self._cursor}, count=100, block=1000))  # type: ignore[assignment]
                for _, entries in batches or []:
                    for entry_id, fields in entries:
                        await self._handle(_text(entry_id), {_text(k): _text(v) for k, v in fields.items()})
                        self._cursor = _text(entry_id)
            except _FAILURES:
                await asyncio.sleep(HEARTBEAT_S)

    async def _handle(self, command_id: str, command: dict[str, str]) -> None:
        if command["origin"] == self.replica:
            return  # applied before it was sent
        error = await self._apply(command)
        answer = {"ok": not error, "error": error}
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(_result_key(command_id), self.replica, json.dumps(answer))
            pipe.expire(_result_key(command_id), RESULT_TTL_S)
            await pipe.execute()
        await self._publish_index()

    async def _apply(self, command: dict[str, str]) -> str:
        """Apply one command here; the error message, or "" on success."""
        name = command["model"]
        try:
            if command["op"] == "load":
                files = {k: base64.b64decode(v) for k, v in json.loads(command.get("files") or "{}").items()}
                await self._manager.load(name, config_json=command.get("config") or None, files=files)
            else:
                await self._manager.unload(name)
        except TesseraError as exc:
            return exc.message
        logger.info("fleet admin: %s of %s applied (from %s)", command["op"], name, command.get("origin", "?"))
        return ""

    async def _heartbeat(self) -> None:
        while True:
            with contextlib.suppress(*_FAILURES):
                await self._publish_index()
            await asyncio.sleep(HEARTBEAT_S)

    async def _publish_index(self) -> None:
        entries = [[e.name, e.version, e.state, e.reason] for e in self._manager.index()]
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zadd(MEMBERS, {self.replica: time.time()})
            pipe.hset(INDEX, self.replica, json.dumps({"time": time.time(), "entries": entries}))
            await pipe.execute()

    async def _live(self) -> list[str]:
        members: list[bytes] = await self._redis.zrangebyscore(MEMBERS, time.time() - LIVE_S, "+inf")  # type: ignore[assignment]
        return [_text(m) for m in members]
