"""RolloutState: the persisted part of a rollout (phase, step, weight, failures), as plain JSON."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from google.protobuf.json_format import MessageToDict

from .spec import RolloutSpec

__all__ = ["ACTIVE_PHASES", "Phase", "RolloutState"]


class Phase(StrEnum):
    SHADOW = "SHADOW"
    CANARY = "CANARY"
    PROMOTED = "PROMOTED"
    ROLLED_BACK = "ROLLED_BACK"
    ABORTED = "ABORTED"


ACTIVE_PHASES = (Phase.SHADOW, Phase.CANARY)


@dataclass(slots=True)
class RolloutState:
    model: str
    stable_version: int
    candidate_version: int
    spec: RolloutSpec
    phase: Phase
    step: int = 0
    weight: float = 0.0
    failed_checks: int = 0
    reason: str = ""
    step_started_at: float = field(default_factory=time.time)
    last_analysis: dict[str, Any] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE_PHASES

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["phase"] = self.phase.value
        data["spec"] = MessageToDict(self.spec.to_proto(), preserving_proto_field_name=True)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RolloutState:
        return cls(
            model=data["model"], stable_version=int(data["stable_version"]),
            candidate_version=int(data["candidate_version"]), spec=RolloutSpec.from_dict(data["spec"]),
            phase=Phase(data["phase"]), step=int(data["step"]), weight=float(data["weight"]),
            failed_checks=int(data["failed_checks"]), reason=data.get("reason", ""),
            step_started_at=float(data["step_started_at"]), last_analysis=data.get("last_analysis", {}),
        )
