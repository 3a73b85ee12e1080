"""Rollout: one model's rollout at run time — the traffic split, the evidence, and the shadow mirror.

The request path calls `pick_candidate` and `observe`; both are a few arithmetic operations and, for
shadow copies, one `put_nowait` onto a bounded queue. A worker task runs the copies on the candidate
with their own timeout; when the candidate falls behind, copies are dropped and counted, never queued
without bound, and the caller never waits for them or sees their errors.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from ..metrics import Metrics
from ..tensors import Tensor
from .evidence import StepEvidence, compare_outputs
from .state import Phase, RolloutState

__all__ = ["SHADOW_QUEUE_SIZE", "SHADOW_TIMEOUT_US", "Rollout"]

logger = logging.getLogger(__name__)

SHADOW_QUEUE_SIZE = 256
SHADOW_TIMEOUT_US = 5_000_000

# (feeds, rows, stable outputs)
_Copy = tuple[dict[str, Tensor], int, dict[str, Tensor]]
# Resolves the candidate's scheduler submit function at the time of the copy.
Submitter = Callable[[int], Any]


def _bucket(key: str) -> int:
    """A stable 0..9999 bucket for a routing key: the same key always lands in the same bucket."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") % 10_000


class Rollout:
    def __init__(self, state: RolloutState, metrics: Metrics, submitter: Submitter) -> None:
        self.state = state
        self.evidence = StepEvidence()
        self._metrics = metrics
        self._submitter = submitter
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
            self._copies.put_nowait((feeds, rows, outputs))
        except asyncio.QueueFull:
            self.evidence.shadow.dropped += 1
            self._dropped.inc()

    # -- off the request path ------------------------------------------------------------------
    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._mirror(), name=f"shadow-{self.state.model}")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None

    def reset_evidence(self) -> None:
        self.evidence = StepEvidence()

    async def _mirror(self) -> None:
        while True:
            feeds, rows, stable_outputs = await self._copies.get()
            try:
                await self._compare_one(feeds, rows, stable_outputs)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("shadow comparison failed for model %s", self.state.model)

    async def _compare_one(self, feeds: dict[str, Tensor], rows: int, stable_outputs: dict[str, Tensor]) -> None:
        shadow = self.evidence.shadow
        start = time.perf_counter()
        try:
            submit = self._submitter(self.state.candidate_version)
            candidate_outputs, _ = await submit(feeds, rows, SHADOW_TIMEOUT_US)
        except Exception as exc:
            shadow.candidate.record(False, time.perf_counter() - start)
            shadow.candidate_errors += 1
            logger.debug("shadow request to %s v%d failed: %s", self.state.model, self.state.candidate_version, exc)
            return
        shadow.candidate.record(True, time.perf_counter() - start)
        agree, abs_diff, rel_diff = compare_outputs(stable_outputs, candidate_outputs,
                                                    self.state.spec.analysis.max_abs_diff)
        shadow.record(agree, abs_diff, rel_diff)
        self._compared.inc()
        self._agreement_gauge.set(shadow.agreement)
