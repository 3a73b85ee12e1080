"""Figures of the serving benchmark (benchmarks/serving_benchmark.py): medians, target ratios, markdown.

Ratios are taken between systems measured side by side within one round, then the median over rounds.
"""

from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BATCH_CEILING_ROWS", "HEAVY", "SMALL", "Cell", "Figure", "machine", "markdown", "summarize"]

SMALL = (64, 256, 256, 10)
HEAVY = (512, 2048, 2048, 512)
BATCH_CEILING_ROWS = 64
TARGET_TRANSPORT = 0.80  # Tessera gRPC / bare gRPC, small model, concurrency 8..64
TARGET_BATCHING = 2.0  # heavy (dynamic batching) / heavy_single, gRPC, concurrency 32
# Tessera as users start it (drift statistics on), and the same with `--drift false`.
TESSERA_GRPC = ("tessera-grpc", "tessera-nodrift-grpc")


@dataclass(frozen=True, slots=True)
class Cell:
    """One measured point: a system serving one model at one concurrency."""

    system: str  # tessera-grpc | tessera-http | bare-grpc | ort-inprocess | ort-batch64
    model: str  # small | heavy | heavy_single
    concurrency: int


@dataclass(slots=True)
class Figure:
    throughput: float  # requests per second
    p50_us: float
    p99_us: float
    rows_per_batch: float | None = None  # from Tessera's statistics (perf_analyzer's server side)
    loadavg: float = 0.0  # 1-minute load average when the cell started: the machine's noise
    extra: dict[str, Any] = field(default_factory=dict)


# -- summary --------------------------------------------------------------------------------------
def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _ratios(results: dict[Cell, list[Figure | None]], top: Cell, bottom: Cell) -> list[float]:
    """top / bottom throughput within each repeat (measured side by side), failed repeats left out."""
    pairs = zip(results.get(top, []), results.get(bottom, []), strict=False)
    return [a.throughput / b.throughput for a, b in pairs if a and b and b.throughput]


def summarize(results: dict[Cell, list[Figure | None]], levels: list[int]) -> dict[str, Any]:
    cells = []
    for cell, figures in results.items():
        ok = [f for f in figures if f]
        tput = [f.throughput for f in ok]
        rpb = [f.rows_per_batch for f in ok if f.rows_per_batch]
        cells.append({
            **asdict(cell), "repeats": len(figures), "failed": len(figures) - len(ok),
            "throughput": _median(tput), "throughput_min": min(tput, default=None),
            "throughput_max": max(tput, default=None),
            "p50_us": _median([f.p50_us for f in ok]), "p99_us": _median([f.p99_us for f in ok]),
            "rows_per_batch": _median(rpb),
            "rows_per_s": _median([f.extra["rows_per_s"] for f in ok if "rows_per_s" in f.extra]),
            "runs": [asdict(f) if f else None for f in figures],
        })
    versus_ort = {f"{s}/{m}/c{c}": _median(_ratios(results, Cell(s, m, c), Cell("ort-inprocess", m, c)))
                  for s in ("tessera-grpc", "tessera-http") for m in ("small", "heavy") for c in levels}
    return {
        "cells": cells,
        "targets": {system: _targets(results, levels, system) for system in TESSERA_GRPC},
        "versus_in_process_ort": versus_ort,
    }


def _targets(results: dict[Cell, list[Figure | None]], levels: list[int], system: str) -> dict[str, Any]:
    """Both targets for one Tessera gRPC server: ratios within each repeat, then medians."""
    transport = {c: _ratios(results, Cell(system, "small", c), Cell("bare-grpc", "small", c))
                 for c in levels if c >= 8}
    medians = {c: _median(r) for c, r in transport.items()}
    batching = _ratios(results, Cell(system, "heavy", 32), Cell(system, "heavy_single", 32))
    median = _median(batching)
    return {
        "transport": {"goal": f"{system} / bare-grpc >= {TARGET_TRANSPORT} on small, c in 8..64",
                      "by_concurrency": {str(c): {"median": medians[c], "per_repeat": r}
                                         for c, r in transport.items()},
                      "met": bool(medians) and all(m is not None and m >= TARGET_TRANSPORT
                                                   for m in medians.values())},
        "batching": {"goal": f"heavy / heavy_single ({system}, c=32) >= {TARGET_BATCHING}",
                     "median": median, "per_repeat": batching,
                     "met": median is not None and median >= TARGET_BATCHING},
    }


def machine() -> dict[str, Any]:
    import grpc
    import numpy
    import onnxruntime

    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    model = re.search(r"Model name:\s*(.+)", lscpu)
    mem = re.search(r"MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text())
    return {
        "cpu": model.group(1).strip() if model else platform.processor(),
        "cores": os.cpu_count(), "memory_gib": round(int(mem.group(1)) / 2**20, 1) if mem else None,
        "kernel": platform.release(), "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__, "grpcio": grpc.__version__, "numpy": numpy.__version__,
        "perf_analyzer": "from the tritonclient 2.51.0 wheel (loadtests/install_perf_analyzer.sh)",
    }


SYSTEM_ROWS = [("small", "tessera-grpc"), ("small", "tessera-http"), ("small", "tessera-nodrift-grpc"),
               ("small", "bare-grpc"), ("small", "ort-inprocess"), ("heavy", "tessera-grpc"),
               ("heavy", "tessera-http"), ("heavy", "tessera-nodrift-grpc"), ("heavy_single", "tessera-grpc"),
               ("heavy_single", "tessera-nodrift-grpc"), ("heavy", "bare-grpc"), ("heavy", "ort-inprocess")]


def _fmt(cell: dict[str, Any] | None) -> str:
    if not cell or cell["throughput"] is None:
        return "failed"
    return (f"{cell['throughput']:,.0f} · {cell['p50_us'] / 1000:.2f} / {cell['p99_us'] / 1000:.2f}")


def markdown(summary: dict[str, Any], meta: dict[str, Any], levels: list[int]) -> str:
    by = {(c["model"], c["system"], c["concurrency"]): c for c in summary["cells"]}
    m = meta["machine"]
    lines = [
        f"Command: `{meta['command']}`  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; Linux {m['kernel']}; Python "
        f"{m['python']}, onnxruntime {m['onnxruntime']}, grpcio {m['grpcio']}; perf_analyzer {m['perf_analyzer']}.  ",
        f"Run: {meta['started']}, {meta['duration_s']:.0f} s; {meta['repeats']} interleaved repeats of "
        f"3 x {meta['window_ms']} ms windows; servers on CPU {meta['server_cpu']}, perf_analyzer on CPU "
        f"{meta['client_cpu']}; 1-min load average {meta['loadavg_start']:.1f} at start, "
        f"{meta['loadavg_end']:.1f} at end, median {meta['loadavg_median']:.1f} over the cells.  ",
        f"Models: small {'-'.join(map(str, SMALL))} (max_batch_size 64, max_queue_delay {meta['small_delay_us']} us), "
        f"heavy {'-'.join(map(str, HEAVY))} (max_batch_size {meta['heavy_max_batch']}, max_queue_delay "
        f"{meta['heavy_delay_us']} us), heavy_single = heavy without dynamic_batching.",
        "",
        "Each cell: infer/s · p50 / p99 latency in ms (medians over repeats; perf_analyzer's client-side "
        "latency; for in-process ORT, the latency of one `session.run`).",
        "",
        "| model | system | " + " | ".join(f"c={c}" for c in levels) + " |",
        "|---|---|" + "---:|" * len(levels),
    ]
    for model, system in SYSTEM_ROWS:
        row = [by.get((model, system, c)) for c in levels]
        if any(row):
            lines.append(f"| {model} | {system} | " + " | ".join(_fmt(cell) if cell else "-" for cell in row) + " |")
    for model in ("small", "heavy"):
        cell = by.get((model, "ort-batch64", 1))
        if cell and cell["rows_per_s"]:
            lines.append(f"| {model} | ort, one thread, batches of {BATCH_CEILING_ROWS} rows | "
                         f"{cell['rows_per_s']:,.0f} rows/s (compute ceiling) |" + " |" * (len(levels) - 1))
    lines += ["", "Rows per batch Tessera formed (its statistics, via perf_analyzer):", "",
              "| model | system | " + " | ".join(f"c={c}" for c in levels) + " |",
              "|---|---|" + "---:|" * len(levels)]
    for model, system in SYSTEM_ROWS:
        if system.startswith("tessera"):
            vals = [by.get((model, system, c), {}).get("rows_per_batch") for c in levels]
            shown = " | ".join(f"{v:.1f}" if v else "-" for v in vals)
            lines.append(f"| {model} | {system} | {shown} |")
    lines += ["", "Targets (ratios taken within each repeat, then the median):", ""]
    for system, t in summary["targets"].items():
        t1, t2 = t["transport"]["by_concurrency"], t["batching"]
        lines += [
            f"- {system}: small model, >= {TARGET_TRANSPORT:.0%} of the bare grpc.aio server at concurrency "
            "8-64: " + ", ".join(f"c={c} {v['median']:.0%}" if v["median"] is not None else f"c={c} n/a"
                                  for c, v in t1.items())
            + f" -> **{'met' if t['transport']['met'] else 'not met'}**",
            f"- {system}: heavy model at concurrency 32, dynamic batching >= {TARGET_BATCHING:.0f}x "
            "each-request-alone: " + (f"{t2['median']:.2f}x" if t2["median"] is not None else "n/a")
            + f" -> **{'met' if t2['met'] else 'not met'}**",
        ]
    spreads = [c["throughput_max"] / c["throughput_min"] - 1 for c in summary["cells"]
               if c["throughput_min"] and c["repeats"] > 1]
    if spreads:
        lines.append("- Noise: throughput spread across repeats (max/min - 1) median "
                     f"{statistics.median(spreads):.0%}, worst {max(spreads):.0%}.")
    return "\n".join(lines) + "\n"


