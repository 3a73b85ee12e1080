"""RolloutController: the state machine shadow -> canary steps -> promoted / rolled back, per model.

A tick task judges each active rollout when its step is complete; every transition is persisted
(StateStore), written to the audit trail and reflected in metrics. A restarted server loads the
persisted states and resumes each active rollout at the step it was in (the step's clock restarts).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from ..audit import AuditLog
from ..background import cancel, spawn
from ..errors import InvalidInput, ModelNotFound, ModelNotReady, TesseraError
from ..metrics import Metrics
from ..repository.manager import ModelManager
from .analysis import analyse, step_complete
from .evidence import StepEvidence
from .rollout import Rollout, ShadowOutputs
from .spec import RolloutSpec, read_rollout_file
from .state import Phase, RolloutState
from .store import StateStore

__all__ = ["RolloutController"]

logger = logging.getLogger(__name__)


class RolloutController:
    def __init__(self, manager: ModelManager, metrics: Metrics, store: StateStore, audit: AuditLog,
                 tick_s: float = 0.5) -> None:
        self._manager = manager
        self._metrics = metrics
        self._store = store
        self._audit = audit
        self._tick_s = tick_s
        self.rollouts: dict[str, Rollout] = {}
        self._task: asyncio.Task[None] | None = None
        self._declared: dict[str, tuple[float, int]] = {}  # model -> (rollout.pbtxt mtime, candidate)
        self._shadow_outputs: ShadowOutputs | None = None

    def observe_shadow_outputs(self, sink: ShadowOutputs) -> None:
        """Hand the candidate's outputs for shadow copies to `sink` (called before `start`; on the loop,
        never blocking: the drift tap's bounded queue)."""
        self._shadow_outputs = sink

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        for model, state in (await self._store.load_all()).items():
            if state.active:
                state.step_started_at = time.time()
                logger.info("resuming rollout of %s: %s step %d at %.1f%%", model, state.phase.value,
                            state.step, state.weight)
            self._install(state)
        await self.reconcile_declared()
        self._task = spawn(self._run(), "rollout-controller")

    async def stop(self) -> None:
        await cancel(self._task)
        await asyncio.gather(*(r.stop() for r in self.rollouts.values()))
        await self._store.close()

    def _install(self, state: RolloutState) -> Rollout:
        old = self.rollouts.get(state.model)
        if old is not None:
            spawn(old.stop(), f"rollout-stop-{old.state.model}")
        model = state.model

        def candidate_submit(version: int) -> Any:
            loaded = self._manager.get(model, str(version))
            return loaded.batcher.submit, loaded.spec.max_batch_size

        rollout = Rollout(state, self._metrics, candidate_submit, self._shadow_outputs)
        self.rollouts[state.model] = rollout
        if state.active:
            rollout.start()
        self._metrics.rollout_weight.labels(state.model, str(state.candidate_version)).set(state.weight)
        return rollout

    # -- admin operations ----------------------------------------------------------------------
    async def start_rollout(self, model: str, spec: RolloutSpec, actor: str = "api") -> RolloutState:
        """Begin a rollout. Raises ModelNotFound / ModelNotReady / InvalidInput."""
        state = self._new_state(model, spec)
        self._install(state)
        await self._persist(state, "rollout_started", actor, f"{state.phase.value} at {state.weight}%")
        return state

    def _new_state(self, model: str, spec: RolloutSpec) -> RolloutState:
        """The first state of a rollout of `spec`, checked against what serves here. Raises like start_rollout."""
        current = self.rollouts.get(model)
        if current is not None and current.active:
            raise InvalidInput(f"model '{model}' already has a rollout in progress "
                               f"(candidate {current.state.candidate_version}); promote or abort it first")
        self._manager.get(model, str(spec.candidate_version))  # must be READY
        stable = spec.stable_version or self.default_version(model, exclude=spec.candidate_version)
        if stable == spec.candidate_version:
            raise InvalidInput(f"rollout of '{model}': candidate and stable are both version {stable}")
        self._manager.get(model, str(stable))
        shadow_first = spec.shadow.percent > 0
        return RolloutState(model, stable, spec.candidate_version, spec,
                            Phase.SHADOW if shadow_first else Phase.CANARY,
                            weight=0.0 if shadow_first else spec.canary.steps[0])

    async def promote(self, model: str, actor: str = "api", reason: str = "manual promote") -> RolloutState:
        rollout = self._require(model)
        await self._finish(rollout, Phase.PROMOTED, reason, actor)
        return rollout.state

    async def abort(self, model: str, actor: str = "api", reason: str = "manual abort") -> RolloutState:
        rollout = self._require(model)
        await self._finish(rollout, Phase.ABORTED, reason, actor)
        return rollout.state

    def status(self, model: str) -> RolloutState | None:
        if not self._manager.has_model(model):
            raise ModelNotFound(f"unknown model: '{model}'")
        rollout = self.rollouts.get(model)
        return rollout.state if rollout else None

    def default_version(self, model: str, exclude: int | None = None) -> int:
        """The version unversioned requests go to: the rollout's pin, else the newest READY."""
        rollout = self.rollouts.get(model)
        if rollout is not None:
            return rollout.state.candidate_version if rollout.state.phase is Phase.PROMOTED \
                else rollout.state.stable_version
        ready = [v.spec.version for v in self._manager.loaded_versions(model)
                 if self._manager.is_ready(model, v.version) and v.spec.version != exclude]
        if not ready:
            raise ModelNotReady(f"model '{model}' has no ready version to compare with")
        return max(ready)

    def _require(self, model: str) -> Rollout:
        rollout = self.rollouts.get(model)
        if rollout is None or not rollout.active:
            raise InvalidInput(f"model '{model}' has no rollout in progress")
        return rollout

    # -- the state machine ---------------------------------------------------------------------
    async def _run(self) -> None:
        last_scan = 0.0
        while True:
            await asyncio.sleep(self._tick_s)
            for rollout in list(self.rollouts.values()):
                if rollout.active:
                    try:
                        await self._judge(rollout)
                    except Exception:
                        logger.exception("rollout of %s: analysis failed", rollout.state.model)
            if time.monotonic() - last_scan > 2.0:
                last_scan = time.monotonic()
                await self.reconcile_declared()

    def _evidence(self, rollout: Rollout) -> StepEvidence:
        """What a step is judged on: this process's evidence (the fleet's, in FleetRolloutController)."""
        return rollout.evidence

    async def _judge(self, rollout: Rollout) -> None:
        state = rollout.state
        evidence = self._evidence(rollout)
        if not step_complete(state.spec, state.phase, evidence, time.time() - state.step_started_at):
            return
        result = analyse(state.spec, state.phase, evidence)
        state.last_analysis = {"passed": result.passed, "failures": list(result.failures), **result.figures}
        outcome = "pass" if result.passed else "fail"
        self._metrics.rollout_analysis.labels(state.model, str(state.candidate_version), outcome).inc()
        await self._audit.write("analysis", state.model, reason="; ".join(result.failures) or "passed",
                                stable=state.stable_version, candidate=state.candidate_version,
                                step=state.step, weight=state.weight, **result.figures)
        if not result.passed:
            state.failed_checks += 1
            if state.failed_checks >= state.spec.analysis.failure_limit:
                await self._finish(rollout, Phase.ROLLED_BACK, "; ".join(result.failures), "system")
                return
            await self._next_step(rollout, state.phase, state.step, "analysis failed: retrying the step")
            return
        steps = state.spec.canary.steps
        if state.phase is Phase.SHADOW:
            if not steps:
                await self._finish(rollout, Phase.PROMOTED, "shadow analysis passed", "system")
            else:
                await self._next_step(rollout, Phase.CANARY, 0, "shadow analysis passed")
        elif state.step + 1 < len(steps):
            await self._next_step(rollout, Phase.CANARY, state.step + 1, "step analysis passed")
        else:
            await self._finish(rollout, Phase.PROMOTED, "every step passed", "system")

    async def _next_step(self, rollout: Rollout, phase: Phase, step: int, reason: str) -> None:
        state = rollout.state
        state.phase, state.step = phase, step
        state.weight = state.spec.canary.steps[step] if phase is Phase.CANARY else 0.0
        state.step_started_at = time.time()
        rollout.reset_evidence()
        self._metrics.rollout_weight.labels(state.model, str(state.candidate_version)).set(state.weight)
        await self._persist(state, "step", "system", reason)

    async def _finish(self, rollout: Rollout, phase: Phase, reason: str, actor: str) -> None:
        state = rollout.state
        state.phase, state.reason = phase, reason
        state.weight = 100.0 if phase is Phase.PROMOTED else 0.0
        await rollout.stop()
        self._metrics.rollout_weight.labels(state.model, str(state.candidate_version)).set(state.weight)
        event = {Phase.PROMOTED: "promoted", Phase.ROLLED_BACK: "rolled_back", Phase.ABORTED: "aborted"}[phase]
        logger.warning("rollout of %s v%d %s: %s", state.model, state.candidate_version, event, reason)
        await self._persist(state, event, actor, reason)

    async def _persist(self, state: RolloutState, event: str, actor: str, reason: str) -> None:
        await self._store.save(state)
        await self._audit.write(event, state.model, actor=actor, reason=reason, stable=state.stable_version,
                                candidate=state.candidate_version, phase=state.phase.value, step=state.step,
                                weight=state.weight)

    # -- declarative rollouts ------------------------------------------------------------------
    async def reconcile_declared(self) -> None:
        """Start rollouts declared in `<model>/rollout.pbtxt` once their candidate is READY."""
        for mv in self._manager.loaded_versions():
            model = mv.spec.name
            path = Path(self._manager.repository) / model / "rollout.pbtxt"
            try:
                mtime = path.stat().st_mtime
            except FileNotFoundError:
                continue
            if self._declared.get(model, (None, None))[0] == mtime:
                continue
            await self._start_declared(model, path.parent, mtime)

    async def _start_declared(self, model: str, model_dir: Path, mtime: float) -> None:
        try:
            spec = read_rollout_file(model_dir)
        except TesseraError as exc:
            logger.error("rollout.pbtxt of %s: %s", model, exc.message)
            self._declared[model] = (mtime, 0)
            return
        if spec is None:
            return
        current = self.rollouts.get(model)
        if current is not None and current.state.candidate_version == spec.candidate_version:
            self._declared[model] = (mtime, spec.candidate_version)  # already run (or running)
            return
        try:
            await self.start_rollout(model, spec, actor="rollout.pbtxt")
        except TesseraError as exc:  # candidate not READY yet: try again on a later scan
            logger.info("declared rollout of %s waits: %s", model, exc.message)
            return
        self._declared[model] = (mtime, spec.candidate_version)
