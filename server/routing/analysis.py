"""Judging a rollout step: candidate vs stable on error rate, p99 latency and output agreement.

Thresholds come from the rollout's AnalysisSpec; every check reports its figures, so the audit trail
shows why a step passed or failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .evidence import ArmEvidence, StepEvidence
from .spec import RolloutSpec
from .state import Phase

__all__ = ["AnalysisResult", "analyse", "step_complete"]


@dataclass(frozen=True, slots=True)
class AnalysisResult:
    passed: bool
    figures: dict[str, Any] = field(default_factory=dict)
    failures: tuple[str, ...] = ()


def step_complete(spec: RolloutSpec, phase: Phase, evidence: StepEvidence, elapsed_s: float) -> bool:
    """Whether the step has run long enough, with enough requests, to be judged."""
    if phase is Phase.SHADOW:
        seen = evidence.shadow.pairs + evidence.shadow.candidate_errors
        return elapsed_s >= spec.shadow.duration_s and seen >= spec.shadow.min_requests
    return elapsed_s >= spec.canary.step_s and evidence.candidate.requests >= spec.canary.min_requests


def _candidate_arm(phase: Phase, evidence: StepEvidence) -> ArmEvidence:
    return evidence.shadow.candidate if phase is Phase.SHADOW else evidence.candidate


def analyse(spec: RolloutSpec, phase: Phase, evidence: StepEvidence) -> AnalysisResult:
    a = spec.analysis
    stable, candidate = evidence.stable, _candidate_arm(phase, evidence)
    failures: list[str] = []
    error_increase = candidate.error_rate - stable.error_rate
    if error_increase > a.max_error_rate_increase:
        failures.append(f"error rate {candidate.error_rate:.4f} vs stable {stable.error_rate:.4f} "
                        f"(allowed increase {a.max_error_rate_increase})")
    stable_p99, candidate_p99 = stable.p99_s(), candidate.p99_s()
    ratio = candidate_p99 / stable_p99 if stable_p99 > 0 else 1.0
    if ratio > a.max_p99_ratio:
        failures.append(f"p99 {candidate_p99 * 1e3:.2f} ms is {ratio:.2f}x stable's {stable_p99 * 1e3:.2f} ms "
                        f"(allowed {a.max_p99_ratio}x)")
    shadow = evidence.shadow
    if shadow.pairs and shadow.agreement < a.min_agreement:
        failures.append(f"outputs agree on {shadow.agreement:.4f} of {shadow.pairs} pairs "
                        f"(required {a.min_agreement}; max abs diff {shadow.max_abs_diff:.3g})")
    figures = {
        "phase": phase.value,
        "stable_requests": stable.requests, "stable_error_rate": stable.error_rate,
        "candidate_requests": candidate.requests, "candidate_error_rate": candidate.error_rate,
        "stable_p99_ms": stable_p99 * 1e3, "candidate_p99_ms": candidate_p99 * 1e3, "p99_ratio": ratio,
        "compared_pairs": shadow.pairs, "agreement": shadow.agreement,
        "max_abs_diff": shadow.max_abs_diff, "max_rel_diff": shadow.max_rel_diff,
        "shadow_dropped": shadow.dropped,
    }
    return AnalysisResult(not failures, figures, tuple(failures))
