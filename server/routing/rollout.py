"""Rollout: one model's rollout at run time — the traffic split, the evidence, and the shadow mirror.

The request path calls `pick_candidate` and `observe`; both are a few arithmetic operations and, for
shadow copies, one `put_nowait` onto a bounded queue. A worker task runs the copies on the candidate
with their own timeout; when the candidate falls behind, copies are dropped and counted, never queued
without bound, and the caller never waits for them or sees their errors.

The worker wakes every SHADOW_DRAIN_INTERVAL_S and submits everything queued at once, so the
candidate's batcher runs the copies in a few large batches instead of one model run per copy: on
one core, one run per copy took 10-20% of the stable version's throughput at 100% shadowing.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from .. import observation
from ..background import spawn
from ..batching.batcher import Result
from ..batching.stacking import batch_key, stack_inputs
from ..metrics import Metrics
from ..observation import RequestObservation
from ..tensors import Tensor
from .evidence import StepEvidence, compare_rows
from .state import Phase, RolloutState

__all__ = ["SHADOW_DRAIN_INTERVAL_S", "SHADOW_QUEUE_SIZE", "SHADOW_TIMEOUT_US", "Rollout"]

logger = logging.getLogger(__name__)

SHADOW_QUEUE_SIZE = 256
SHADOW_TIMEOUT_US = 5_000_000
SHADOW_DRAIN_INTERVAL_S = 0.02

# (feeds, rows, stable outputs, the copied request's observation when tracing or payload logging is on)
_Copy = tuple[dict[str, Tensor], int, dict[str, Tensor], RequestObservation | None]
# Resolves a candidate version to (its batcher's submit function, its max_batch_size) when copies run.
Submitter = Callable[[int], tuple[Callable[..., Awaitable[Result]], int]]
# Takes (model, candidate version, the outputs the candidate computed for a group of copies): the drift tap's
# output statistics, so that the rollout status compares outputs while the candidate only shadows.
ShadowOutputs = Callable[[str, str, dict[str, Tensor]], None]


def _bucket(key: str) -> int:
    """A stable 0..9999 bucket for a routing key: the same key always lands in the same bucket."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") % 10_000


class Rollout:
    def __init__(self, state: RolloutState, metrics: Metrics, submitter: Submitter,
                 shadow_outputs: ShadowOutputs | None = None) -> None:
        self.state = state
        self.evidence = StepEvidence()
        self._metrics = metrics
        self._submitter = submitter
        self._shadow_outputs = shadow_outputs
        self._copies: asyncio.Queue[_Copy] = asyncio.Queue(SHADOW_QUEUE_SIZE)
        self._worker: asyncio.Task[None] | None = None
        labels = (state.model, str(state.candidate_version))
        self._agreement_gauge = metrics.shadow_agreement.labels(*labels)
        self._dropped = metrics.shadow_dropped.labels(*labels)
        self._compared = metrics.shadow_compared.labels(*labels)

    # -- request path --------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self.state.active

    def pick_candidate(self, routing_key: str | None) -> bool:
        """Whether this request goes to the candidate: sticky by key, random without one."""
        if self.state.phase is not Phase.CANARY:
            return False
        threshold = self.state.weight * 100  # weight in percent -> basis points
        if routing_key is not None:
            return _bucket(routing_key) < threshold
        return random.random() * 10_000 < threshold

    def observe(self, arm: str, ok: bool, latency_s: float, feeds: dict[str, Tensor] | None = None,
                rows: int = 0, outputs: dict[str, Tensor] | None = None) -> None:
        """Record one served request; maybe hand a shadow copy to the worker (never blocks)."""
        if arm == "candidate":
            self.evidence.candidate.record(ok, latency_s)
            return
        self.evidence.stable.record(ok, latency_s)
        percent = self.state.spec.shadow.percent
        if not ok or outputs is None or feeds is None or percent <= 0 or not self.active:
            return
        if percent < 100 and random.random() * 100 >= percent:
            return
        try:
            self._copies.put_nowait((feeds, rows, outputs,
                                     observation.current() if observation.ACTIVE is not None else None))
        except asyncio.QueueFull:
            self.evidence.shadow.dropped += 1
            self._dropped.inc()

    # -- off the request path ------------------------------------------------------------------
    def start(self) -> None:
        if self._worker is None:
            self._worker = spawn(self._mirror(), f"shadow-{self.state.model}")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None

    def reset_evidence(self) -> None:
        self.evidence = StepEvidence()

    async def _mirror(self) -> None:
        while True:
            copies = [await self._copies.get()]
            while not self._copies.empty():
                copies.append(self._copies.get_nowait())
            try:
                await self._compare(copies)
            except Exception:
                logger.exception("shadow comparison failed for model %s", self.state.model)
            await asyncio.sleep(SHADOW_DRAIN_INTERVAL_S)  # copies gather meanwhile, to be run as one batch

    async def _compare(self, copies: list[_Copy]) -> None:
        """Run the copies on the candidate, stacked into batches where the model batches, and compare."""
        try:
            submit, max_rows = self._submitter(self.state.candidate_version)
        except Exception as exc:  # the candidate is gone (unloaded): every copy failed
            self._record_failure(len(copies), 0.0, exc)
            return
        await asyncio.gather(*(self._compare_group(submit, group) for group in _groups(copies, max_rows)))

    async def _compare_group(self, submit: Callable[..., Awaitable[Result]],
                             group: list[_Copy]) -> None:
        shadow = self.evidence.shadow
        start = time.perf_counter()
        try:
            candidate_outputs, _, _ = await submit(stack_inputs([c[0] for c in group]), sum(c[1] for c in group),
                                                SHADOW_TIMEOUT_US)
        except Exception as exc:
            self._record_failure(len(group), time.perf_counter() - start, exc)
            if observation.ACTIVE is not None:
                observation.shadow_ran([c[3] for c in group], int(start * 1e9), time.perf_counter_ns(),
                                       self.state.model, self.state.candidate_version, False)
            return
        latency_s = time.perf_counter() - start
        if observation.ACTIVE is not None:
            observation.shadow_ran([c[3] for c in group], int(start * 1e9), time.perf_counter_ns(),
                                   self.state.model, self.state.candidate_version, True)
        for _ in group:
            shadow.candidate.record(True, latency_s)
        if self._shadow_outputs is not None:
            self._shadow_outputs(self.state.model, str(self.state.candidate_version), candidate_outputs)
        stable_outputs = stack_inputs([c[2] for c in group])
        row_agree, abs_diff, rel_diff = compare_rows(stable_outputs, candidate_outputs,
                                                     self.state.spec.analysis.max_abs_diff)
        if len(group) == 1:
            agreeing = int(row_agree.all())
        else:  # a copy agrees when all its rows do
            starts = np.cumsum([0] + [c[1] for c in group[:-1]])
            agreeing = int(np.logical_and.reduceat(row_agree, starts).sum())
        shadow.record_many(len(group), agreeing, abs_diff, rel_diff)
        self._compared.inc(len(group))
        self._agreement_gauge.set(shadow.agreement)

    def _record_failure(self, copies: int, latency_s: float, exc: Exception) -> None:
        shadow = self.evidence.shadow
        for _ in range(copies):
            shadow.candidate.record(False, latency_s)
        shadow.candidate_errors += copies
        logger.debug("shadow request to %s v%d failed: %s", self.state.model, self.state.candidate_version, exc)


def _groups(copies: list[_Copy], max_rows: int) -> list[list[_Copy]]:
    """Copies that can run as one batch: same input shapes and dtypes, at most max_rows rows in all.

    A model without batching (max_rows 0) runs each copy alone; so does a copy with no rows, whose
    empty slice could not be told apart in the stacked comparison.
    """
    groups: list[list[_Copy]] = []
    open_groups: dict[Any, tuple[list[_Copy], int]] = {}
    for copy in copies:
        rows = copy[1]
        if max_rows <= 0 or rows <= 0:
            groups.append([copy])
            continue
        key = batch_key(copy[0])
        group, total = open_groups.get(key, (None, 0))
        if group is None or total + rows > max_rows:
            group, total = [], 0
            groups.append(group)
        group.append(copy)
        open_groups[key] = (group, total + rows)
    return groups
