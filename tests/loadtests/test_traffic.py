"""Scenario files and arrival logs, as pure code: parsing, the rate schedule, the mix's shares."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from loadtests.inputs import ModelInfo, TensorInfo
from loadtests.replay import build_replay, read_arrival_log
from loadtests.scenario import Segment, build_traffic, exact_allocation, load_scenario, schedule_offsets
from loadtests.spec import Target
from loadtests.traffic import Arrivals

INFO = {
    "a": ModelInfo("a", (TensorInfo("x", "FP32", (-1, 4)),), ()),
    "b": ModelInfo("b", (TensorInfo("y", "INT32", (-1, 2)),), ()),
}
TARGET = Target(port=1, model="a")

SCENARIO_YAML = """
warmup: 1
arrival: constant
models:
  - name: a
    weight: 3
    batch_sizes: {1: 0.5, 4: 0.5}
  - name: b
    weight: 1
    inputs: {synthetic: {distinct: 8}}
schedule:
  - {rate: 100, duration: 2}
  - {ramp: [100, 300], duration: 2}
  - {burst: 1000, duration: 0.5}
"""


def _info(target: Target) -> ModelInfo:
    return INFO[target.model]


def test_a_yaml_scenario_becomes_steps_ramps_and_bursts(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(SCENARIO_YAML)
    scenario = load_scenario(tmp_path / "s.yaml")
    assert [m.name for m in scenario.models] == ["a", "b"]
    assert scenario.models[0].batch_sizes == ((1, 0.5), (4, 0.5))
    assert [s.kind for s in scenario.schedule] == ["step", "ramp", "burst"]
    assert scenario.duration_s == 4.5 and scenario.warmup_s == 1.0
    offsets = schedule_offsets(scenario.schedule, "constant", np.random.default_rng(0))
    counts = np.histogram(offsets, bins=[0, 2, 3, 4, 4.5])[0]
    assert counts.tolist() == pytest.approx([200, 150, 250, 500], abs=1)  # ramp: 100->200 then 200->300 req/s


def test_the_same_scenario_in_json(tmp_path: Path) -> None:
    import yaml

    (tmp_path / "s.json").write_text(json.dumps(yaml.safe_load(SCENARIO_YAML)))
    assert load_scenario(tmp_path / "s.json").schedule[1] == Segment(duration_s=2, start_rps=100, end_rps=300,
                                                                    kind="ramp")


def test_poisson_schedule_follows_the_rate_within_the_noise() -> None:
    schedule = [Segment(duration_s=10, start_rps=200, end_rps=200), Segment(duration_s=1, start_rps=0, end_rps=0),
                Segment(duration_s=10, start_rps=0, end_rps=400, kind="ramp")]
    offsets = schedule_offsets(schedule, "poisson", np.random.default_rng(3))
    counts = np.histogram(offsets, bins=[0, 10, 11, 16, 21])[0]
    assert counts[1] == 0  # nothing while the rate is 0
    for got, expected in zip(counts[[0, 2, 3]], (2000, 500, 1500), strict=True):
        assert abs(got - expected) < 5 * np.sqrt(expected)
    assert np.all(np.diff(offsets) >= 0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("models: []\nschedule: [{rate: 1, duration: 1}]", "at least one model", id="no-models"),
        pytest.param("models: [{name: a}]\nschedule: []", "at least one segment", id="no-schedule"),
        pytest.param("models: [{name: a}]\nschedule: [{rate: 1}]", "duration", id="no-duration"),
        pytest.param("models: [{name: a}]\nschedule: [{speed: 1, duration: 1}]", "rate, ramp or burst", id="no-rate"),
        pytest.param("models: [{name: a, weight: -1}]\nschedule: [{rate: 1, duration: 1}]", "weight", id="weight"),
    ],
)
def test_bad_scenarios_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "s.yaml").write_text(text)
    with pytest.raises(ValueError, match=message):
        load_scenario(tmp_path / "s.yaml")


def test_mix_shares_are_the_weights_to_one_request() -> None:
    picks = exact_allocation(np.asarray([3.0, 1.0, 0.5]), 1001, np.random.default_rng(1))
    assert np.bincount(picks).tolist() == [667, 223, 111]  # 667.3, 222.4, 111.2
    assert picks[:20].tolist() != sorted(picks[:20].tolist())  # random order, not blocks


def test_scenario_traffic_groups_payloads_by_model_and_batch_size(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(SCENARIO_YAML)
    payloads, mix, arrivals = build_traffic(load_scenario(tmp_path / "s.yaml"), TARGET, info_of=_info)
    assert mix.models == ("a", "b") and len(payloads) == 64 * 2 + 8
    models = np.asarray(mix.payload_model)[arrivals.payloads]
    assert np.bincount(models).tolist() == [825, 275]  # 1100 requests at 3:1


def test_arrival_logs_in_csv_and_json_lines(tmp_path: Path) -> None:
    (tmp_path / "body.json").write_text(json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],
                                                                "data": [1, 2, 3, 4]}]}))
    (tmp_path / "log.csv").write_text("offset_ms,model,payload\n10,a,body.json\n0,b,\n2.5,a,\n")
    log = read_arrival_log(tmp_path / "log.csv")
    assert log.offsets_s == (0.0, 0.0025, 0.01) and log.models == ("b", "a", "a")
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"timestamp": "2026-11-29T10:00:00.500Z", "model": "a"},
        {"ts": "2026-11-29T10:00:00Z", "model_name": "b", "payload": "body.json"},
    ]) + "\n")
    log2 = read_arrival_log(tmp_path / "log.jsonl")
    assert log2.offsets_s == (0.0, 0.5) and log2.payload_refs == ("body.json", "")
    payloads, mix, arrivals = build_replay(log, TARGET, base=tmp_path, speed=2.0, info_of=_info)
    assert arrivals.offsets_s.tolist() == [0.0, 0.00125, 0.005]  # twice as fast
    assert [mix.models[mix.payload_model[i]] for i in arrivals.payloads] == ["b", "a", "a"]
    assert len(payloads) == 1 + 16 + 16  # the body file; 16 synthetic requests for each model without one


def test_a_log_line_without_a_time_is_named(tmp_path: Path) -> None:
    (tmp_path / "log.csv").write_text("offset,model\n0,a\n,b\n")
    with pytest.raises(ValueError, match="arrival 2"):
        read_arrival_log(tmp_path / "log.csv")


def test_arrivals_split_round_robin_over_generators() -> None:
    arrivals = Arrivals(np.arange(10, dtype=np.float64), np.arange(10))
    parts = arrivals.split(3)
    assert [p.payloads.tolist() for p in parts] == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
