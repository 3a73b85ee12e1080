"""FleetStore: the rollout state every replica shares through Redis, written only through fenced scripts.

Keys (one Redis, any number of replicas):
- `tessera:rollouts` hash model -> state JSON, `tessera:rollouts:revision` hash model -> revision
  (bumped by every accepted write; a replica applies a state whose revision differs from its own);
- `tessera:rollouts:leader` the lease ("<token> <replica>", PX expiry) and `tessera:rollouts:fence`, the
  highest token ever granted: a write carrying an older token than the fence is refused, so a leader
  that lost its lease (paused, partitioned) can no longer change anything;
- `tessera:rollouts:events` a stream of every accepted write (the fleet's audit trail), and the channel
  `tessera:rollouts:changed`, which tells the replicas to read now rather than at their next tick;
- `tessera:rollouts:evidence:<model>:<step>` hash replica -> that replica's evidence for the step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis

from .state import RolloutState

__all__ = ["ADMIN_TOKEN", "CHANNEL", "CONFLICT", "STALE", "FleetKeys", "FleetStore"]

ADMIN_TOKEN = -1
"""Token of a write made for an API call (start, promote, abort): not fenced, but still compare-and-set."""
STALE = -1
"""write() result: the token is older than the fence, a newer leader exists; nothing was written."""
CONFLICT = -2
"""write() result: the state changed since the revision the writer read; nothing was written."""
CHANNEL = "tessera:rollouts:changed"
EVENTS_MAXLEN = 10_000
EVIDENCE_TTL_MS = 3_600_000

# KEYS: states, revisions, fence, events. ARGV: model, token, expected revision (-1: any), state JSON,
# channel, event, actor, reason, replica, events maxlen.
_WRITE = """
local token = tonumber(ARGV[2])
local fence = tonumber(redis.call('GET', KEYS[3]) or '0')
if token >= 0 and token < fence then return -1 end
local rev = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
local expected = tonumber(ARGV[3])
if expected >= 0 and rev ~= expected then return -2 end
rev = rev + 1
redis.call('HSET', KEYS[2], ARGV[1], rev)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[10], '*', 'model', ARGV[1], 'revision', rev, 'token', ARGV[2],
           'event', ARGV[6], 'actor', ARGV[7], 'reason', ARGV[8], 'replica', ARGV[9], 'state', ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[1])
return rev
"""

# KEYS: lease, fence. ARGV: replica, ttl ms, floor (a token this replica has held: a fence that Redis
# lost is never granted below it). Returns the holder's token when the replica holds the lease, else 0.
_ACQUIRE = """
local held = redis.call('GET', KEYS[1])
if held then
  local sep = string.find(held, ' ', 1, true)
  if string.sub(held, sep + 1) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(string.sub(held, 1, sep - 1))
  end
  return 0
end
local token = redis.call('INCR', KEYS[2])
local floor = tonumber(ARGV[3])
if token <= floor then
  token = floor + 1
  redis.call('SET', KEYS[2], token)
end
redis.call('SET', KEYS[1], token .. ' ' .. ARGV[1], 'PX', ARGV[2])
return token
"""

# KEYS: lease. ARGV: replica. Gives the lease up on a graceful stop, so another replica takes over at once.
_RELEASE = """
local held = redis.call('GET', KEYS[1])
if held and string.sub(held, string.find(held, ' ', 1, true) + 1) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True, slots=True)
class FleetKeys:
    states: str = "tessera:rollouts"
    revisions: str = "tessera:rollouts:revision"
    fence: str = "tessera:rollouts:fence"
    lease: str = "tessera:rollouts:leader"
    events: str = "tessera:rollouts:events"

    def evidence(self, model: str, step: str) -> str:
        return f"tessera:rollouts:evidence:{model}:{step}"


class FleetStore:
    """Reads and fenced writes of the shared rollout state. Every method raises redis' errors (or
    OSError) when Redis cannot be reached; callers decide whether that fails an API call or waits."""

    def __init__(self, url: str, keys: FleetKeys = FleetKeys()) -> None:
        self.url = url
        self.keys = keys
        self._redis = redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._write = self._redis.register_script(_WRITE)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._release = self._redis.register_script(_RELEASE)

    @property
    def client(self) -> redis.Redis:
        return self._redis

    # -- state ---------------------------------------------------------------------------------
    async def read_all(self) -> dict[str, tuple[RolloutState, int]]:
        """Every model's shared state and its revision, read in one transaction."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(self.keys.states)
            pipe.hgetall(self.keys.revisions)
            raw, revisions = await pipe.execute()
        result = {}
        for field, value in raw.items():
            state = RolloutState.from_json(json.loads(value))
            result[state.model] = (state, int(revisions.get(field, 0)))
        return result

    async def write(self, state: RolloutState, *, token: int, expected_revision: int, event: str,
                    actor: str = "system", reason: str = "", replica: str = "") -> int:
        """Write `state` if `token` is not older than the fence (ADMIN_TOKEN skips that check) and the
        stored revision is still `expected_revision` (-1: whatever it is). Returns the new revision,
        or STALE / CONFLICT when refused."""
        args: list[str | int] = [state.model, token, expected_revision, json.dumps(state.to_json()), CHANNEL,
                                 event, actor, reason, replica, EVENTS_MAXLEN]
        k = self.keys
        return int(await self._write(keys=[k.states, k.revisions, k.fence, k.events], args=args))

    async def events(self, model: str | None = None) -> list[dict[str, str]]:
        """The fleet's audit trail: every accepted write, oldest first."""
        entries: list[tuple[bytes, dict[bytes, bytes]]] = await self._redis.xrange(self.keys.events)  # type: ignore[assignment]
        decoded = [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries]
        return [e for e in decoded if model is None or e["model"] == model]

    # -- the StateStore protocol (what RolloutController expects) -----------------------------
    async def load_all(self) -> dict[str, RolloutState]:
        return {model: state for model, (state, _) in (await self.read_all()).items()}

    async def save(self, state: RolloutState) -> None:
        await self.write(state, token=ADMIN_TOKEN, expected_revision=-1, event="saved")

    async def close(self) -> None:
        await self._redis.aclose()

    # -- leadership ----------------------------------------------------------------------------
    async def acquire(self, replica: str, ttl_s: float, floor: int = 0) -> int:
        """Take or renew the lease; the token when held by `replica`, 0 when another replica holds it."""
        return int(await self._acquire(keys=[self.keys.lease, self.keys.fence],
                                       args=[replica, max(1, round(ttl_s * 1000)), floor]))

    async def release(self, replica: str) -> None:
        await self._release(keys=[self.keys.lease], args=[replica])

    async def leader(self) -> tuple[int, str] | None:
        """(token, replica) of the lease holder, None when nobody holds it."""
        held = await self._redis.get(self.keys.lease)
        if held is None:
            return None
        token, _, replica = _text(held).partition(" ")
        return int(token), replica

    # -- evidence ------------------------------------------------------------------------------
    async def publish_evidence(self, model: str, step: str, replica: str, snapshot: dict[str, Any]) -> None:
        key = self.keys.evidence(model, step)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hset(key, replica, json.dumps(snapshot))
            pipe.pexpire(key, EVIDENCE_TTL_MS)
            await pipe.execute()

    async def read_evidence(self, model: str, step: str) -> dict[str, dict[str, Any]]:
        raw = await self._redis.hgetall(self.keys.evidence(model, step))
        return {_text(k): json.loads(v) for k, v in raw.items()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
