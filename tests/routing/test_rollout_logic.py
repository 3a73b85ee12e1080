"""Pure rollout logic: sticky split, output comparison, step analysis, spec validation, state round trip."""

from __future__ import annotations

import numpy as np
import pytest

from server.errors import InvalidInput
from server.metrics import Metrics
from server.routing.analysis import analyse, step_complete
from server.routing.evidence import StepEvidence, compare_outputs
from server.routing.rollout import Rollout, _groups
from server.routing.spec import AnalysisSpec, RolloutSpec
from server.routing.state import Phase, RolloutState


def _rollout(weight: float, phase: Phase = Phase.CANARY) -> Rollout:
    state = RolloutState("m", 1, 2, RolloutSpec(candidate_version=2), phase, weight=weight)
    return Rollout(state, Metrics(), lambda version: (None, 0))


@pytest.mark.parametrize("weight", [5.0, 25.0, 50.0])
def test_split_over_10000_keys_is_within_two_points_of_the_weight(weight):
    rollout = _rollout(weight)
    share = sum(rollout.pick_candidate(f"user-{i}") for i in range(10_000)) / 100
    assert abs(share - weight) <= 2.0


def test_split_without_keys_is_within_two_points_of_the_weight():
    rollout = _rollout(25.0)
    share = sum(rollout.pick_candidate(None) for _ in range(10_000)) / 100
    assert abs(share - 25.0) <= 2.0


def test_the_same_key_always_reaches_the_same_side():
    rollout = _rollout(50.0)
    for i in range(200):
        first = rollout.pick_candidate(f"k{i}")
        assert all(rollout.pick_candidate(f"k{i}") == first for _ in range(5))


def test_a_key_on_the_candidate_stays_there_as_the_weight_grows():
    low, high = _rollout(25.0), _rollout(50.0)
    on_candidate = [k for k in (f"k{i}" for i in range(2000)) if low.pick_candidate(k)]
    assert all(high.pick_candidate(k) for k in on_candidate)


def test_shadow_phase_sends_no_live_traffic_to_the_candidate():
    rollout = _rollout(0.0, Phase.SHADOW)
    assert not any(rollout.pick_candidate(f"k{i}") for i in range(1000))


def test_classifier_outputs_agree_on_argmax_even_when_values_differ():
    a = {"p": np.array([[0.1, 0.9], [0.8, 0.2]], np.float32)}
    b = {"p": np.array([[0.2, 0.8], [0.7, 0.3]], np.float32)}
    agree, abs_diff, _ = compare_outputs(a, b, max_abs_diff=1e-6)
    assert agree and abs_diff == pytest.approx(0.1)


def test_regression_outputs_must_be_within_the_absolute_tolerance():
    a = {"y": np.array([[1.0], [2.0]], np.float32)}
    assert compare_outputs(a, {"y": a["y"] + 1e-7}, max_abs_diff=1e-5)[0]
    assert not compare_outputs(a, {"y": a["y"] + 1e-3}, max_abs_diff=1e-5)[0]


def test_shape_mismatch_disagrees():
    assert not compare_outputs({"y": np.zeros((2, 2))}, {"y": np.zeros((2, 3))}, 1.0)[0]


def _evidence(stable_errors=0, candidate_errors=0, agree=100, pairs=100, latency_ratio=1.0) -> StepEvidence:
    e = StepEvidence()
    for i in range(200):
        e.stable.record(i >= stable_errors, 0.010)
        e.candidate.record(i >= candidate_errors, 0.010 * latency_ratio)
    for i in range(pairs):
        e.shadow.record(i < agree, 0.0, 0.0)
    return e


def test_analysis_passes_a_healthy_candidate():
    result = analyse(RolloutSpec(candidate_version=2), Phase.CANARY, _evidence())
    assert result.passed and result.figures["agreement"] == 1.0


@pytest.mark.parametrize(("evidence", "text"), [
    pytest.param(_evidence(candidate_errors=20), "error rate", id="errors"),
    pytest.param(_evidence(latency_ratio=3.0), "p99", id="latency"),
    pytest.param(_evidence(agree=90), "outputs agree on 0.9000", id="disagreement"),
])
def test_analysis_fails_with_the_figures_that_failed(evidence, text):
    result = analyse(RolloutSpec(candidate_version=2, analysis=AnalysisSpec()), Phase.CANARY, evidence)
    assert not result.passed and any(text in f for f in result.failures)


def test_a_step_is_judged_only_after_its_time_and_requests():
    spec = RolloutSpec.from_dict({"candidate_version": 2, "canary": {"steps": [10], "step_seconds": 5,
                                                                    "min_requests": 50}})
    evidence = _evidence()
    assert not step_complete(spec, Phase.CANARY, evidence, elapsed_s=1.0)
    assert step_complete(spec, Phase.CANARY, evidence, elapsed_s=6.0)
    assert not step_complete(spec, Phase.CANARY, StepEvidence(), elapsed_s=6.0)


@pytest.mark.parametrize(("data", "text"), [
    pytest.param({}, "candidate_version", id="no-candidate"),
    pytest.param({"candidate_version": 2, "shadow": {"percent": 120}}, "shadow.percent", id="percent"),
    pytest.param({"candidate_version": 2, "canary": {"steps": [50, 10]}}, "canary.steps", id="falling-steps"),
    pytest.param({"candidate_version": 2, "nonsense": 1}, "nonsense", id="unknown-field"),
])
def test_bad_specs_are_invalid_input_naming_the_field(data, text):
    with pytest.raises(InvalidInput, match=text):
        RolloutSpec.from_dict(data)


def test_state_survives_a_json_round_trip():
    spec = RolloutSpec.from_dict({"candidate_version": 3, "stable_version": 1, "shadow": {"percent": 50},
                                  "canary": {"steps": [5, 50, 100]}})
    state = RolloutState("m", 1, 3, spec, Phase.CANARY, step=1, weight=50.0, failed_checks=1)
    again = RolloutState.from_json(state.to_json())
    assert again == state


def test_copies_group_by_input_shape_up_to_the_candidates_batch_size():
    def copy(rows: int, width: int = 4):
        return ({"x": np.zeros((rows, width), np.float32)}, rows, {})

    copies = [copy(3), copy(3), copy(2, width=5), copy(3), copy(0), copy(1, width=5)]
    groups = _groups(copies, max_rows=8)
    index = {id(c): i for i, c in enumerate(copies)}
    assert [[index[id(member)] for member in g] for g in groups] == [[0, 1], [2, 5], [3], [4]]
    assert all(len(g) == 1 for g in _groups(copies, max_rows=0))


async def test_a_batch_of_copies_counts_agreement_per_copy():
    """Five copies run as one candidate batch; the one whose rows the candidate answers differently disagrees."""
    rollout = _rollout(0.0, Phase.SHADOW)
    batches: list[int] = []

    async def candidate(feeds, rows, timeout_us):
        batches.append(rows)
        x = feeds["x"].copy()
        x[4:6] = x[4:6, ::-1]  # rows 4-5 are the third copy's: argmax flips
        return {"p": x}, 0, (0, 0, rows, 5)

    rollout._submitter = lambda version: (candidate, 64)
    copies = []
    for i in range(5):
        p = np.array([[0.9, 0.1], [0.2, 0.8]], np.float32) + i * 0.01
        copies.append(({"x": p}, 2, {"p": p}))
    await rollout._compare(copies)
    shadow = rollout.evidence.shadow
    assert batches == [10]
    assert (shadow.pairs, shadow.agreeing, shadow.candidate.requests) == (5, 4, 5)
    assert shadow.max_abs_diff == pytest.approx(0.8)  # 0.92 - 0.12


async def test_a_failed_candidate_batch_counts_every_copy_as_a_candidate_error():
    rollout = _rollout(0.0, Phase.SHADOW)

    async def candidate(feeds, rows, timeout_us):
        raise RuntimeError("candidate broke")

    rollout._submitter = lambda version: (candidate, 64)
    x = np.zeros((1, 2), np.float32)
    await rollout._compare([({"x": x}, 1, {"p": x})] * 3)
    shadow = rollout.evidence.shadow
    assert (shadow.pairs, shadow.candidate_errors, shadow.candidate.errors) == (0, 3, 3)
