"""Traffic mixes and replays against the real server: a 3:1 mix of two models gives per-model results
in those shares, and a 2,000-line arrival log is sent on schedule, as the generator itself records.

Timing: the send-time bound here is a sanity check (this machine is a shared 2-core VM running the
server in the same process); the p99 measurement against 2 ms is in BENCHMARKS.md, load noted.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from loadtests.cli import main
from loadtests.replay import build_replay, read_arrival_log
from loadtests.runner import run_step
from loadtests.scenario import build_traffic, parse_scenario
from loadtests.spec import LoadSpec, Target

from ..conftest import RunningServer

REPLAY_LAG_SANITY_MS = 1000.0
"""p99 send-time error allowed in the suite: a sanity check that the log is followed (a replay at the
wrong speed would fall seconds behind over its 4 s), not the acceptance figure. Run alone this test
read 1.3 and 1.4 ms at load average 3 (3.5 ms at load 7); inside the whole suite on this shared
2-core VM, 35 and 376 ms (the generator process waiting for a core). See BENCHMARKS.md."""


def _target(server: RunningServer, protocol: str = "grpc") -> Target:
    port = server.app.grpc_port if protocol == "grpc" else server.app.http_port
    return Target(port=port, protocol=protocol, model="tabular", request_timeout_s=5.0,  # type: ignore[arg-type]
                  metrics_url=f"http://127.0.0.1:{server.app.http_port}/metrics")


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_3_to_1_mix_gives_per_model_results_within_2_points_of_the_weights(
    running_server: RunningServer, protocol: str
) -> None:
    scenario = parse_scenario({
        "warmup": 0.5,
        "arrival": "poisson",
        "models": [{"name": "tabular", "weight": 3, "batch_sizes": {1: 0.7, 4: 0.3}},
                   {"name": "two_input", "weight": 1}],
        "schedule": [{"rate": 200, "duration": 1.5}, {"burst": 500, "duration": 0.5}, {"rate": 200, "duration": 1}],
    }, Path("."))
    target = _target(running_server, protocol)
    payloads, mix, arrivals = build_traffic(scenario, target, seed=4)
    spec = LoadSpec(mode="open", rate_rps=200, arrival="constant", duration_s=arrivals.span_s - 0.5 + 1e-3,
                    warmup_s=0.5)
    step = run_step(target, spec, payloads, mix=mix, arrivals=arrivals)
    assert step.errors == {}, step.first_error
    by_model = {m.model: m for m in step.per_model}
    assert set(by_model) == {"tabular", "two_input"}
    assert sum(m.ok for m in step.per_model) == step.ok
    for model, weight in (("tabular", 0.75), ("two_input", 0.25)):
        assert abs(by_model[model].share - weight) <= 0.02, by_model[model]
        assert abs(by_model[model].ok / step.ok - weight) <= 0.02
        assert by_model[model].latency.count == by_model[model].ok
    assert step.server is not None and step.server.batches > 0  # both models' server histograms


def _arrival_log(path: Path, lines: int = 2000, rate_rps: float = 500.0) -> Path:
    gaps = np.random.default_rng(11).exponential(1.0 / rate_rps, size=lines)
    offsets = np.cumsum(gaps) - gaps[0]
    models = np.where(np.arange(lines) % 4 == 3, "two_input", "tabular")
    path.write_text("offset,model,payload\n" + "".join(f"{o:.6f},{m},\n" for o, m in zip(offsets, models,
                                                                                          strict=True)))
    return path


def test_a_2000_line_arrival_log_is_sent_on_schedule(running_server: RunningServer, tmp_path: Path) -> None:
    log = read_arrival_log(_arrival_log(tmp_path / "arrivals.csv"))
    target = _target(running_server)
    payloads, mix, arrivals = build_replay(log, target, base=tmp_path)
    spec = LoadSpec(mode="open", rate_rps=500, arrival="constant", duration_s=arrivals.span_s + 1e-3, warmup_s=0.0)
    step = run_step(target, spec, payloads, mix=mix, arrivals=arrivals)  # a generator process, as users run it
    assert step.ok + step.error_count == 2000 and step.errors == {}, step.first_error
    assert {m.model: m.sent for m in step.per_model} == {"tabular": 1500, "two_input": 500}
    print(f"replay send-time error p99 {step.send_lag_p99_ms:.3f} ms, missed {step.missed_send_fraction:.2%}")
    assert step.send_lag_p99_ms <= REPLAY_LAG_SANITY_MS


def test_replay_command_at_double_speed_writes_per_model_results(
    running_server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = _arrival_log(tmp_path / "arrivals.csv", lines=200, rate_rps=200.0)
    code = main(["replay", str(log), "--speed", "2", "--port", str(running_server.app.grpc_port),
                 "--metrics-url", f"http://127.0.0.1:{running_server.app.http_port}/metrics",
                 "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0
    assert "replay: 200 requests" in out and "two_input" in out
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {m["model"]: m["sent"] for m in data["steps"][0]["per_model"]} == {"tabular": 150, "two_input": 50}
    assert (tmp_path / "out" / "models.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "out" / "models.csv").read_text().count("\n") == 3


def test_scenario_command_reads_a_yaml_file(running_server: RunningServer, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "mix.yaml").write_text(
        "models:\n  - {name: tabular, weight: 3}\n  - {name: two_input, weight: 1}\n"
        "schedule:\n  - {rate: 100, duration: 1}\n  - {ramp: [100, 200], duration: 1}\n")
    code = main(["scenario", str(tmp_path / "mix.yaml"), "--url", f"http://127.0.0.1:{running_server.app.http_port}"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "tabular" in out and "two_input" in out and "share %" in out
