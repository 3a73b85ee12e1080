"""FleetRolloutController: one rollout per model for every replica sharing a Redis.

Each tick (and at once when the `changed` channel says so) a replica takes or renews the lease, reads
the shared states and applies any whose revision it has not applied, and publishes its evidence for the
step each active rollout is in. The lease holder alone judges steps, on the evidence merged from every
replica; its writes carry its fencing token and the revision they were based on, so a leader that lost
its lease, or a state changed meanwhile, makes the write refused rather than applied. Start, promote
and abort on any replica are compare-and-set writes of the shared state, applied by all within a tick.

Requests are routed on each replica's applied state only: Redis being slow or down delays a transition,
never a request. Should Redis come back empty (restarted without persistence), the leader writes back
the states the fleet holds, and every replica republishes its evidence for the step, which goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from dataclasses import replace

from redis.exceptions import RedisError

from ..audit import AuditLog
from ..background import cancel, spawn
from ..errors import InvalidInput, Unavailable
from ..metrics import Metrics
from ..repository.manager import ModelManager
from ..settings import ServerSettings
from .controller import RolloutController
from .evidence import StepEvidence
from .fleet_evidence import merge_snapshots, snapshot, step_key
from .fleet_store import ADMIN_TOKEN, CHANNEL, CONFLICT, STALE, FleetStore
from .rollout import Rollout
from .spec import RolloutSpec
from .state import Phase, RolloutState
from .store import FileStateStore

__all__ = ["FleetRolloutController", "build_rollout_controller", "replica_name"]

logger = logging.getLogger(__name__)

_EVENTS = {Phase.PROMOTED: "promoted", Phase.ROLLED_BACK: "rolled_back", Phase.ABORTED: "aborted"}
_FAILURES = (RedisError, OSError)


class FleetRolloutController(RolloutController):
    def __init__(self, manager: ModelManager, metrics: Metrics, store: FleetStore, audit: AuditLog, *,
                 replica: str, tick_s: float = 0.5, lease_s: float = 0.0) -> None:
        super().__init__(manager, metrics, store, audit, tick_s=tick_s)
        self._fleet = store
        self.replica = replica
        self._lease_s = lease_s or max(3 * tick_s, 0.5)
        self.token = 0  # our fencing token while we hold the lease, else 0
        self._highest_token = 0
        self._revisions: dict[str, int] = {}  # model -> revision of the shared state applied here
        self._merged: dict[str, StepEvidence] = {}
        self._changed = asyncio.Event()
        self._lock = asyncio.Lock()
        self._listener: asyncio.Task[None] | None = None
        self._redis_down = False

    @property
    def leader(self) -> bool:
        return self.token > 0

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        try:
            await self._sync()
        except _FAILURES as exc:
            self._note_outage(exc)
        await self.reconcile_declared()
        self._task = spawn(self._run(), "fleet-rollouts")
        self._listener = spawn(self._listen(), "fleet-rollouts-listener")

    async def stop(self) -> None:
        await cancel(self._listener, self._task)
        self._task = None
        if self.leader:  # hand over now rather than when the lease expires
            with contextlib.suppress(*_FAILURES):
                await self._fleet.release(self.replica)
        await super().stop()

    # -- admin operations: compare-and-set writes of the shared state -------------------------
    async def start_rollout(self, model: str, spec: RolloutSpec, actor: str = "api") -> RolloutState:
        """Begin a rollout on every replica. Raises like RolloutController's, or Unavailable."""
        await self._fresh()
        state = self._new_state(model, spec)
        await self._admin_write(state, "rollout_started", actor, f"{state.phase.value} at {state.weight}%")
        return state

    async def promote(self, model: str, actor: str = "api", reason: str = "manual promote") -> RolloutState:
        return await self._admin_finish(model, Phase.PROMOTED, actor, reason)

    async def abort(self, model: str, actor: str = "api", reason: str = "manual abort") -> RolloutState:
        return await self._admin_finish(model, Phase.ABORTED, actor, reason)

    async def _admin_finish(self, model: str, phase: Phase, actor: str, reason: str) -> RolloutState:
        await self._fresh()
        state = _finished(self._require(model).state, phase, reason)
        await self._admin_write(state, _EVENTS[phase], actor, reason)
        return state

    async def _fresh(self) -> None:
        try:
            await self._sync()
        except _FAILURES as exc:
            raise Unavailable(f"rollouts are shared through Redis, which cannot be reached: {exc}") from exc

    async def _admin_write(self, state: RolloutState, event: str, actor: str, reason: str) -> None:
        try:
            written = await self._write(state, event, actor, reason, ADMIN_TOKEN)
        except _FAILURES as exc:
            raise Unavailable(f"rollouts are shared through Redis, which cannot be reached: {exc}") from exc
        if not written:
            raise InvalidInput(f"the rollout of '{state.model}' changed on another replica meanwhile; "
                               "read its status and try again")

    # -- the leader's transitions (called by RolloutController._judge) -------------------------
    async def _next_step(self, rollout: Rollout, phase: Phase, step: int, reason: str) -> None:
        state = rollout.state
        weight = state.spec.canary.steps[step] if phase is Phase.CANARY else 0.0
        new = replace(state, phase=phase, step=step, weight=weight, step_started_at=time.time(),
                      last_analysis=dict(state.last_analysis))
        await self._write(new, "step", "system", reason, self.token)

    async def _finish(self, rollout: Rollout, phase: Phase, reason: str, actor: str) -> None:
        await self._write(_finished(rollout.state, phase, reason), _EVENTS[phase], actor, reason, self.token)

    async def _write(self, state: RolloutState, event: str, actor: str, reason: str, token: int) -> bool:
        """One fenced compare-and-set write; applied here at once when accepted. Raises Redis' errors."""
        async with self._lock:
            return await self._write_locked(state, event, actor, reason, token)

    async def _write_locked(self, state: RolloutState, event: str, actor: str, reason: str, token: int) -> bool:
        expected = self._revisions.get(state.model, 0)
        revision = await self._fleet.write(state, token=token, expected_revision=expected, event=event,
                                           actor=actor, reason=reason, replica=self.replica)
        if revision == STALE:
            logger.warning("rollout of %s: write with token %d refused, a newer leader exists", state.model, token)
            self.token = 0
            return False
        if revision == CONFLICT:
            logger.info("rollout of %s: state changed meanwhile (%s not written)", state.model, event)
            self._revisions.pop(state.model, None)  # read it again next time
            return False
        self._apply(state, revision)
        if event != "reseeded":
            await self._audit.write(event, state.model, actor=actor, reason=reason, stable=state.stable_version,
                                    candidate=state.candidate_version, phase=state.phase.value, step=state.step,
                                    weight=state.weight, revision=revision, token=token, replica=self.replica)
        return True

    # -- applying the shared state here --------------------------------------------------------
    def _apply(self, state: RolloutState, revision: int) -> None:
        self._revisions[state.model] = revision
        current = self.rollouts.get(state.model)
        if current is None or not _same_rollout(current.state, state) or current.active != state.active:
            self._install(state)
            return
        same_step = step_key(current.state) == step_key(state)
        current.state = state
        if not same_step:
            current.reset_evidence()
        self._metrics.rollout_weight.labels(state.model, str(state.candidate_version)).set(state.weight)

    async def _sync(self) -> None:
        """Apply every shared state whose revision differs from the one applied here.

        Reads and writes take turns (one lock): a read that started before a write made here could
        otherwise apply the older state over the newer one for a tick."""
        async with self._lock:
            shared = await self._fleet.read_all()
            for model, (state, revision) in shared.items():
                if self._revisions.get(model) != revision:
                    self._apply(state, revision)
            if self.leader:  # Redis lost what it held: write back what the fleet serves
                for model in [m for m in self.rollouts if m not in shared]:
                    self._revisions[model] = 0
                    await self._write_locked(self.rollouts[model].state, "reseeded", "system", "Redis had lost it",
                                             self.token)

    # -- the tick ------------------------------------------------------------------------------
    async def _run(self) -> None:
        last_scan = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self._tick_s)
            self._changed.clear()
            try:
                await self._tick()
                if self._redis_down:
                    self._redis_down = False
                    logger.warning("rollouts: Redis reachable again")
            except _FAILURES as exc:
                self._note_outage(exc)
            if time.monotonic() - last_scan > 2.0:
                last_scan = time.monotonic()
                await self.reconcile_declared()

    async def _tick(self) -> None:
        token = await self._fleet.acquire(self.replica, self._lease_s, self._highest_token)
        if token and token != self.token:
            logger.info("rollouts: %s leads the fleet (token %d)", self.replica, token)
        self.token = token
        self._highest_token = max(self._highest_token, token)
        await self._sync()
        active = [r for r in self.rollouts.values() if r.active]
        for rollout in active:
            await self._fleet.publish_evidence(rollout.state.model, step_key(rollout.state), self.replica,
                                               snapshot(rollout.evidence))
        if not self.leader:
            return
        for rollout in active:
            await self._judge_fleet(rollout)

    async def _judge_fleet(self, rollout: Rollout) -> None:
        model = rollout.state.model
        replicas = await self._fleet.read_evidence(model, step_key(rollout.state))
        self._merged[model] = merge_snapshots(list(replicas.values()))
        original, revision = rollout.state, self._revisions.get(model)
        rollout.state = replace(original, last_analysis=dict(original.last_analysis))  # judged on a copy
        try:
            await self._judge(rollout)
        except _FAILURES:
            raise
        except Exception:
            logger.exception("rollout of %s: analysis failed", model)
        finally:
            self._merged.pop(model, None)
            if self._revisions.get(model) == revision and rollout.state is not original:
                rollout.state = original  # nothing written: keep the applied state as it was

    def _evidence(self, rollout: Rollout) -> StepEvidence:
        return self._merged.get(rollout.state.model, rollout.evidence)

    async def _listen(self) -> None:
        """Wake the tick whenever a replica writes; a missed message only waits for the next tick."""
        while True:
            pubsub = self._fleet.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CHANNEL)
                while True:
                    if await pubsub.get_message(timeout=1.0) is not None:
                        self._changed.set()
            except _FAILURES:
                await asyncio.sleep(self._tick_s)
            finally:
                with contextlib.suppress(*_FAILURES, TimeoutError):  # bounded: it runs on cancellation too
                    await asyncio.wait_for(pubsub.aclose(), 2.0)  # type: ignore[no-untyped-call]

    def _note_outage(self, exc: BaseException) -> None:
        if not self._redis_down:
            self._redis_down = True
            logger.warning("rollouts: Redis unreachable (%s); serving on the applied states until it is back", exc)


def _finished(state: RolloutState, phase: Phase, reason: str) -> RolloutState:
    return replace(state, phase=phase, reason=reason, weight=100.0 if phase is Phase.PROMOTED else 0.0,
                   last_analysis=dict(state.last_analysis))


def _same_rollout(a: RolloutState, b: RolloutState) -> bool:
    return (a.candidate_version, a.stable_version, a.spec) == (b.candidate_version, b.stable_version, b.spec)


def replica_name(settings: ServerSettings) -> str:
    """This process's name in the fleet: --replica-id, else <hostname>-<pid>. Under --workers N each worker
    is a replica of its own (its own lease attempts, its own admin cursor): the pid is appended."""
    if settings.replica_id and settings.workers <= 1:
        return settings.replica_id
    return f"{settings.replica_id or socket.gethostname()}-{os.getpid()}"


def build_rollout_controller(settings: ServerSettings, manager: ModelManager, metrics: Metrics,
                             audit: AuditLog) -> RolloutController:
    """The fleet's controller with --redis-url; otherwise one process's, persisted in --state-dir."""
    if settings.redis_url:
        return FleetRolloutController(manager, metrics, FleetStore(settings.redis_url), audit,
                                      replica=replica_name(settings), tick_s=settings.rollout_tick_s,
                                      lease_s=settings.rollout_lease_s)
    return RolloutController(manager, metrics, FileStateStore(settings.state_dir), audit,
                             tick_s=settings.rollout_tick_s)
