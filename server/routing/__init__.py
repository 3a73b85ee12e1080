"""Routing: which version serves a request, and the rollouts (shadow, canary) that move traffic."""

from __future__ import annotations

from .controller import RolloutController
from .fleet import FleetRolloutController, build_rollout_controller, replica_name
from .fleet_store import FleetStore
from .router import Route, Router
from .spec import RolloutSpec
from .state import Phase, RolloutState
from .store import FileStateStore, StateStore

__all__ = [
    "FileStateStore",
    "FleetRolloutController",
    "FleetStore",
    "Phase",
    "RolloutController",
    "RolloutSpec",
    "RolloutState",
    "Route",
    "Router",
    "StateStore",
    "build_rollout_controller",
    "replica_name",
]
