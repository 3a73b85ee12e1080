"""Router: picks the model version that serves a request — pinned, stable, or canary by weight.

- A request naming a version number gets exactly that version (it bypasses any split).
- `stable` and `canary` are version labels (as TF Serving's): the rollout's stable and candidate.
- Otherwise: with no rollout, the newest READY version; during a rollout, the stable version, or the
  candidate for the canary's share (sticky by routing key); after one, the version it settled on.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ModelNotFound
from ..repository.manager import ModelManager, ModelVersion
from ..tensors import InferRequest
from .controller import RolloutController
from .rollout import Rollout
from .state import Phase

__all__ = ["Route", "Router"]

LABELS = ("stable", "canary")


@dataclass(slots=True)
class Route:
    version: ModelVersion
    rollout: Rollout | None  # set when the request counts as rollout evidence
    arm: str  # "stable", "candidate", or "pinned"

    def __init__(self, version: ModelVersion, rollout: Rollout | None, arm: str) -> None:
        # Its own __init__, compiled: one @dataclass generates runs interpreted (server/tensors.py says more).
        self.version = version
        self.rollout = rollout
        self.arm = arm


class Router:
    def __init__(self, manager: ModelManager, controller: RolloutController) -> None:
        self._manager = manager
        self._rollouts = controller.rollouts

    def route(self, request: InferRequest) -> Route:
        """Raises ModelNotFound / ModelNotReady like ModelManager.get."""
        name, version = request.model_name, request.model_version
        rollout = self._rollouts.get(name)
        if version and version not in LABELS:
            return Route(self._manager.get(name, version), None, "pinned")
        if rollout is None:
            if version == "canary":
                raise ModelNotFound(f"model '{name}' has no canary: no rollout is in progress")
            return Route(self._manager.get(name, None), None, "pinned")
        state = rollout.state
        if version == "canary":
            if not rollout.active:
                raise ModelNotFound(f"model '{name}' has no canary: its rollout is {state.phase.value}")
            return Route(self._manager.get(name, str(state.candidate_version)), None, "pinned")
        if not rollout.active:
            settled = state.candidate_version if state.phase is Phase.PROMOTED else state.stable_version
            return Route(self._manager.get(name, str(settled)), None, "pinned")
        if version is None and rollout.pick_candidate(request.routing_key):
            return Route(self._manager.get(name, str(state.candidate_version)), rollout, "candidate")
        return Route(self._manager.get(name, str(state.stable_version)), rollout, "stable")
