"""`plan` on a sweep recorded against the real server: pods, workers per pod, the HPA target from the
server's /metrics, and the assumptions, printed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtests.cli import main

from ..conftest import RunningServer


def test_plan_on_a_recorded_sweep_prints_pods_workers_hpa_target_and_assumptions(
    running_server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep_dir = tmp_path / "sweep"
    code = main(["sweep", "--port", str(running_server.app.grpc_port), "--model", "tabular", "--mode", "open",
                 "--arrival", "constant", "--levels", "50,150", "--duration", "1", "--warmup", "0.3",
                 "--slo-p99", "200", "--workers-per-pod", "1",
                 "--metrics-url", f"http://127.0.0.1:{running_server.app.http_port}/metrics",
                 "--out", str(sweep_dir)])
    assert code == 0, capsys.readouterr().err
    recorded = json.loads((sweep_dir / "results.json").read_text())
    assert recorded["meta"]["workers_per_pod"] == 1
    assert all(s["server"]["pending_mean"] > 0 for s in recorded["steps"])  # Little's law from /metrics
    capsys.readouterr()
    signals = (("pending", "tessera_pending_requests"), ("queue-p99", "p99 of tessera_queue_duration_seconds"))
    for signal, name in signals:
        code = main(["plan", "--from", str(sweep_dir / "results.json"), "--target-rps", "5000", "--slo-p99", "200",
                     "--zones", "3", "--hpa-signal", signal])
        out = capsys.readouterr().out
        assert code == 0
        assert "pod(s) x 1 worker(s) per pod" in out and "per zone over 3 zones" in out
        assert f"HPA target: {name}" in out and "averageValue" in out
        assert "Assumptions:" in out and "scales linearly" in out and "one zone lost" in out
