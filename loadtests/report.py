"""Results people read and keep: the summary table, CSV, JSON (with the plan, when there is one)."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .plan import CapacityPlan
from .results import StepResult
from .sweep import SweepResult

__all__ = [
    "CSV_COLUMNS",
    "MODEL_CSV_COLUMNS",
    "load_steps",
    "model_table",
    "row",
    "table",
    "write_csv",
    "write_json",
    "write_models_csv",
]

CSV_COLUMNS = (
    "protocol",
    "mode",
    "level",
    "throughput_rps",
    "offered_rps",
    "ok",
    "errors",
    "error_rate",
    "p50_ms",
    "p90_ms",
    "p95_ms",
    "p99_ms",
    "p999_ms",
    "max_ms",
    "service_p50_ms",
    "service_p99_ms",
    "send_lag_p99_ms",
    "missed_send_fraction",
    "generator_cpu",
    "server_batch_mean",
    "server_queue_p50_ms",
    "server_queue_p99_ms",
    "server_compute_p99_ms",
    "server_request_p99_ms",
    "slo_met",
    "slo_reason",
)


def row(step: StepResult, verdict: tuple[bool, str] | None = None) -> dict[str, Any]:
    server = step.server
    return {
        "protocol": step.protocol,
        "mode": step.mode,
        "level": step.level,
        "throughput_rps": round(step.throughput_rps, 1),
        "offered_rps": round(step.offered_rps, 1),
        "ok": step.ok,
        "errors": step.error_count,
        "error_rate": round(step.error_rate, 6),
        "p50_ms": step.latency.p50_ms,
        "p90_ms": step.latency.p90_ms,
        "p95_ms": step.latency.p95_ms,
        "p99_ms": step.latency.p99_ms,
        "p999_ms": step.latency.p999_ms,
        "max_ms": step.latency.max_ms,
        "service_p50_ms": step.service.p50_ms,
        "service_p99_ms": step.service.p99_ms,
        "send_lag_p99_ms": step.send_lag_p99_ms,
        "missed_send_fraction": round(step.missed_send_fraction, 4),
        "generator_cpu": round(step.generator_cpu, 3),
        "server_batch_mean": _num(server.batch_mean if server else math.nan),
        "server_queue_p50_ms": _num(server.queue_p50_ms if server else math.nan),
        "server_queue_p99_ms": _num(server.queue_p99_ms if server else math.nan),
        "server_compute_p99_ms": _num(server.compute_p99_ms if server else math.nan),
        "server_request_p99_ms": _num(server.request_p99_ms if server else math.nan),
        "slo_met": "" if verdict is None else verdict[0],
        "slo_reason": "" if verdict is None else verdict[1],
    }


def table(
    steps: Sequence[StepResult],
    verdicts: Sequence[tuple[bool, str]] | None = None,
    best_index: int | None = None,
) -> str:
    """A fixed-width summary: client view, then the server's view from /metrics."""
    head = (
        f"{'level':>8} {'req/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'err %':>6} {'gen cpu':>7} | {'batch':>6} {'queue p99':>9} {'compute p99':>11} | SLO"
    )
    lines = [head, "-" * len(head)]
    for i, step in enumerate(steps):
        r = row(step, verdicts[i] if verdicts else None)
        slo = "" if verdicts is None else ("met" if r["slo_met"] else f"FAIL: {r['slo_reason']}")
        mark = " <- best" if i == best_index else ""
        lines.append(
            f"{step.level:>8g} {r['throughput_rps']:>9.1f} {r['p50_ms']:>8.2f} {r['p95_ms']:>8.2f} "
            f"{r['p99_ms']:>8.2f} {r['max_ms']:>8.2f} {100 * step.error_rate:>6.2f} "
            f"{100 * step.generator_cpu:>6.0f}% | {_cell(r['server_batch_mean'], 6, 2)} "
            f"{_cell(r['server_queue_p99_ms'], 9, 2)} {_cell(r['server_compute_p99_ms'], 11, 2)} "
            f"| {slo}{mark}"
        )
    return "\n".join(lines)


MODEL_CSV_COLUMNS = (
    "step", "model", "sent", "share", "ok", "errors", "error_rate", "p50_ms", "p95_ms", "p99_ms", "max_ms"
)


def model_table(step: StepResult) -> str:
    """Per-model lines of a mixed step: share of requests sent, outcome, latency."""
    head = (
        f"{'model':<20} {'sent':>8} {'share %':>8} {'ok':>8} {'err %':>6} "
        f"{'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}"
    )
    lines = [head, "-" * len(head)]
    for m in step.per_model:
        lines.append(
            f"{m.model:<20} {m.sent:>8d} {100 * m.share:>8.2f} {m.ok:>8d} {100 * m.error_rate:>6.2f} "
            f"{m.latency.p50_ms:>8.2f} {m.latency.p95_ms:>8.2f} {m.latency.p99_ms:>8.2f} {m.latency.max_ms:>8.2f}"
        )
    return "\n".join(lines)


def write_models_csv(path: Path, steps: Sequence[StepResult]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=MODEL_CSV_COLUMNS)
        writer.writeheader()
        for i, step in enumerate(steps):
            for m in step.per_model:
                writer.writerow({
                    "step": i, "model": m.model, "sent": m.sent, "share": round(m.share, 5), "ok": m.ok,
                    "errors": sum(m.errors.values()), "error_rate": round(m.error_rate, 6),
                    "p50_ms": m.latency.p50_ms, "p95_ms": m.latency.p95_ms, "p99_ms": m.latency.p99_ms,
                    "max_ms": m.latency.max_ms,
                })


def write_csv(path: Path, steps: Sequence[StepResult], verdicts: Sequence[tuple[bool, str]] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for i, step in enumerate(steps):
            writer.writerow(row(step, verdicts[i] if verdicts else None))


def write_json(
    path: Path,
    steps: Sequence[StepResult],
    *,
    sweep: SweepResult | None = None,
    plan: CapacityPlan | None = None,
    meta: dict[str, Any] | None = None,
) -> None:
    """Every step (histogram encoding included), the SLO verdicts, the best step and the plan."""
    data: dict[str, Any] = {"meta": meta or {}, "steps": [s.to_dict() for s in steps]}
    if sweep is not None:
        data["verdicts"] = [list(v) for v in sweep.verdicts]
        data["best_index"] = sweep.best_index
    if plan is not None:
        data["plan"] = asdict(plan) | {"summary": plan.describe()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, allow_nan=False, default=_json_default) + "\n")


def load_steps(path: Path) -> tuple[list[StepResult], list[tuple[bool, str]] | None]:
    """Steps (and verdicts, if any) back from a file written by write_json."""
    data = json.loads(path.read_text())
    verdicts = [(bool(m), str(r)) for m, r in data["verdicts"]] if "verdicts" in data else None
    return [StepResult.from_dict(s) for s in data["steps"]], verdicts


def _num(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 3)


def _cell(value: float | None, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
