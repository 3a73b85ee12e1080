"""RolloutSpec: how a candidate version is shadowed, canaried and judged, parsed once into frozen dataclasses.

Read from `<model>/rollout.pbtxt` (text format) or from the admin API (protobuf or JSON); zero-valued
fields take the defaults below (Flagger's and Argo Rollouts' customary values).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from google.protobuf.json_format import ParseDict, ParseError

from .._generated import rollout_pb2 as rp
from ..errors import InvalidInput

__all__ = ["ROLLOUT_FILENAME", "AnalysisSpec", "CanarySpec", "RolloutSpec", "ShadowSpec", "read_rollout_file"]

ROLLOUT_FILENAME = "rollout.pbtxt"


@dataclass(frozen=True, slots=True)
class ShadowSpec:
    percent: float = 0.0
    duration_s: float = 30.0
    min_requests: int = 100


@dataclass(frozen=True, slots=True)
class CanarySpec:
    steps: tuple[float, ...] = (5.0, 25.0, 50.0, 100.0)
    step_s: float = 30.0
    min_requests: int = 100


@dataclass(frozen=True, slots=True)
class AnalysisSpec:
    max_error_rate_increase: float = 0.01
    max_p99_ratio: float = 1.5
    min_agreement: float = 0.99
    max_abs_diff: float = 1e-5
    failure_limit: int = 2


@dataclass(frozen=True, slots=True)
class RolloutSpec:
    candidate_version: int
    stable_version: int = 0
    shadow: ShadowSpec = ShadowSpec()
    canary: CanarySpec = CanarySpec()
    analysis: AnalysisSpec = AnalysisSpec()

    @classmethod
    def from_proto(cls, msg: rp.RolloutSpec) -> RolloutSpec:
        """Validate and fill defaults. Raises InvalidInput naming the bad field."""
        if msg.candidate_version <= 0:
            raise InvalidInput("rollout: candidate_version must be a positive version number")
        if not 0 <= msg.shadow.percent <= 100:
            raise InvalidInput(f"rollout: shadow.percent {msg.shadow.percent} is not within 0..100")
        shadow, canary = ShadowSpec(), CanarySpec()  # the defaults (slots hide class-level values)
        steps = tuple(msg.canary.steps) if msg.HasField("canary") else canary.steps
        if any(not 0 < s <= 100 for s in steps) or list(steps) != sorted(steps):
            raise InvalidInput(f"rollout: canary.steps {list(steps)} must rise within (0, 100]")
        a, d = msg.analysis, AnalysisSpec()
        return cls(
            candidate_version=msg.candidate_version,
            stable_version=msg.stable_version,
            shadow=ShadowSpec(msg.shadow.percent, msg.shadow.duration_seconds or shadow.duration_s,
                              msg.shadow.min_requests or shadow.min_requests),
            canary=CanarySpec(steps, msg.canary.step_seconds or canary.step_s,
                              msg.canary.min_requests or canary.min_requests),
            analysis=AnalysisSpec(
                a.max_error_rate_increase or d.max_error_rate_increase, a.max_p99_ratio or d.max_p99_ratio,
                a.min_agreement or d.min_agreement, a.max_abs_diff or d.max_abs_diff,
                a.failure_limit or d.failure_limit),
        )

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> RolloutSpec:
        msg = rp.RolloutSpec()
        try:
            ParseDict(data, msg)
        except (ParseError, TypeError) as exc:
            raise InvalidInput(f"rollout: {exc}") from exc
        return cls.from_proto(msg)

    def to_proto(self) -> rp.RolloutSpec:
        msg = rp.RolloutSpec(candidate_version=self.candidate_version, stable_version=self.stable_version)
        msg.shadow.percent = self.shadow.percent
        msg.shadow.duration_seconds = self.shadow.duration_s
        msg.shadow.min_requests = self.shadow.min_requests
        msg.canary.steps.extend(self.canary.steps)
        msg.canary.step_seconds = self.canary.step_s
        msg.canary.min_requests = self.canary.min_requests
        a = self.analysis
        msg.analysis.max_error_rate_increase = a.max_error_rate_increase
        msg.analysis.max_p99_ratio = a.max_p99_ratio
        msg.analysis.min_agreement = a.min_agreement
        msg.analysis.max_abs_diff = a.max_abs_diff
        msg.analysis.failure_limit = a.failure_limit
        return msg


def read_rollout_file(model_dir: Path) -> RolloutSpec | None:
    """The declarative rollout beside config.pbtxt, if there is one."""
    path = model_dir / ROLLOUT_FILENAME
    if not path.is_file():
        return None
    msg = rp.RolloutSpec()
    try:
        text_format.Parse(path.read_text(), msg)
    except text_format.ParseError as exc:
        raise InvalidInput(f"{path}: {exc}") from exc
    return RolloutSpec.from_proto(msg)
