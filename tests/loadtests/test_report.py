"""Table, CSV, JSON and PNG from a sweep, and `plan --from` reading them back."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest

from loadtests.cli import main
from loadtests.plan import plan_capacity
from loadtests.plot import plot_latency
from loadtests.report import load_steps, table, write_csv, write_json
from loadtests.results import StepResult
from loadtests.sweep import Slo, SweepResult, run_sweep

from .synthetic import nan_server, server, step

STEPS = {100: step(100, 100, 2.0), 200: step(200, 199, 3.0), 400: step(400, 390, 40.0, view=nan_server()),
         800: step(800, 420, 300.0, view=server(queue_p99_ms=250.0))}


def _sweep() -> SweepResult:
    return run_sweep(list(STEPS), lambda level: STEPS[int(level)], Slo(p99_ms=25.0))


def test_table_marks_the_best_step_and_failures() -> None:
    sweep = _sweep()
    text = table(sweep.steps, sweep.verdicts, sweep.best_index)
    lines = text.splitlines()
    assert "p99 ms" in lines[0] and "queue p99" in lines[0]
    assert lines[3].endswith("met <- best")
    assert "FAIL: p99 40.0 ms > 25 ms" in lines[4]
    assert "-" in lines[4].split("|")[1]  # no server figures for that step


def test_json_round_trips_and_csv_has_one_row_per_step(tmp_path: Path) -> None:
    sweep = _sweep()
    plan = plan_capacity(sweep, target_rps=1000)
    write_json(tmp_path / "r.json", list(sweep.steps), sweep=sweep, plan=plan)
    write_csv(tmp_path / "r.csv", list(sweep.steps), list(sweep.verdicts))
    steps, verdicts = load_steps(tmp_path / "r.json")
    assert [s.level for s in steps] == [100, 200, 400, 800]
    assert steps[0] == sweep.steps[0]
    assert verdicts == list(sweep.verdicts)
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["plan"]["replicas"] == 8 and data["best_index"] == 1
    rows = list(csv.DictReader((tmp_path / "r.csv").read_text().splitlines()))
    assert len(rows) == 4 and rows[1]["slo_met"] == "True" and rows[2]["server_queue_p99_ms"] == ""


def test_plot_writes_a_png(tmp_path: Path) -> None:
    sweep = _sweep()
    plot_latency(tmp_path / "p.png", list(sweep.steps), title="synthetic", slo_p99_ms=25.0,
                 best_index=sweep.best_index)
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plan_command_reads_a_sweep_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = _sweep()
    write_json(tmp_path / "results.json", list(sweep.steps), sweep=sweep)
    code = main(["plan", "--from", str(tmp_path / "results.json"), "--target-rps", "2000", "--slo-p99", "25",
                 "--out", str(tmp_path / "plan")])
    out = capsys.readouterr().out
    assert code == 0
    assert "15 replica(s) for 2000 req/s" in out  # 2000 / (199 * 0.7) = 14.4
    plan = json.loads((tmp_path / "plan" / "results.json").read_text())["plan"]
    assert plan["bound"] == "unknown"  # the knee step has no /metrics
    assert (tmp_path / "plan" / "latency.png").exists()


def test_step_result_keeps_its_histogram() -> None:
    assert StepResult.from_dict(STEPS[100].to_dict()) == STEPS[100]


def test_a_mixed_step_keeps_its_per_model_results_through_json(tmp_path: Path) -> None:
    from loadtests.histograms import LatencySummary
    from loadtests.report import model_table, write_models_csv
    from loadtests.results import ModelResult

    latency = LatencySummary(count=30, mean_ms=1.0, p50_ms=1.0, p90_ms=2.0, p95_ms=2.5, p99_ms=3.0, p999_ms=3.0,
                             max_ms=4.0)
    parts = (ModelResult(model="a", sent=30, share=0.75, ok=30, errors={}, latency=latency),
             ModelResult(model="b", sent=10, share=0.25, ok=9, errors={"http_503": 1}, latency=latency))
    mixed = replace(STEPS[100], per_model=parts)
    assert StepResult.from_dict(json.loads(json.dumps(mixed.to_dict()))) == mixed
    text = model_table(mixed)
    assert "75.00" in text and "25.00" in text and "10.00" in text  # b: 1 error in 10
    write_models_csv(tmp_path / "models.csv", [mixed])
    assert (tmp_path / "models.csv").read_text().splitlines()[2].startswith("0,b,10,0.25,9,1,0.1,")
