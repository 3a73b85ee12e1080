"""The BENCHMARKS.md section: per model, each server's throughput and latency, and the ratios that
matter (Tessera over MLServer on the same transport; everyone as a share of in-process ORT)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["render"]

TESSERA = "Tessera"
MLSERVER = "MLServer 1.7.1"
ORT = "in-process ONNX Runtime"


def render(medians: list[dict[str, Any]], machine: dict[str, str], command: str, args: argparse.Namespace) -> str:
    lines = [
        "## Tessera against Python peers (benchmarks/peers/bench.py)",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores; servers pinned to CPU {machine['server_cpus']}, "
        f"the load generator to CPU {machine['client_cpus']}. Python {machine['python']}, onnxruntime "
        f"{machine['onnxruntime']}, grpcio {machine['grpcio']}; MLServer {machine['mlserver']} "
        f"(parallel_workers 0, adaptive batching max_batch_size 64 / max_batch_time 0.5 ms, uvloop "
        f"{machine['peers_uvloop']}). Every session uses 1 intra-op thread.",
        "",
        f"Command: `{command}`. Closed loop, {args.duration:g} s measured after {args.warmup:g} s warmup per "
        f"point, {args.rounds} interleaved round(s) (order reversed each round), medians shown.",
        "",
    ]
    for model in dict.fromkeys(m["model"] for m in medians):
        rows = [m for m in medians if m["model"] == model]
        lines += _model_table(model, rows)
    return "\n".join(lines) + "\n"


def _model_table(model: str, rows: list[dict[str, Any]]) -> list[str]:
    ort = next((r["rps"] for r in rows if r["peer"] == ORT), None)
    tessera = {(r["transport"], r["concurrency"]): r["rps"] for r in rows if r["peer"] == TESSERA}
    mlserver = {(r["transport"], r["concurrency"]): r["rps"] for r in rows if r["peer"] == MLSERVER}
    out = [
        f"### Model `{model}`",
        "",
        "| server | transport | concurrency | req/s | p50 ms | p99 ms | errors | Tessera / this "
        "| this / in-process ORT |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r["peer"] != TESSERA, r["peer"], r["transport"], r["concurrency"])):
        mine = tessera.get((r["transport"], r["concurrency"]))
        versus = f"{mine / r['rps']:.2f}x" if mine and r["peer"] != TESSERA and r["rps"] else ""
        share = f"{r['rps'] / ort:.0%}" if ort and r["peer"] != ORT else ""
        out.append(
            f"| {r['peer']} | {r['transport']} | {r['concurrency']} | {r['rps']:.0f} | {r['p50_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r['errors']} | {versus} | {share} |"
        )
    out.append("")
    for (transport, level), rps in sorted(mlserver.items()):
        if (transport, level) in tessera and rps:
            out.append(f"- {transport}, concurrency {level}: Tessera {tessera[transport, level] / rps:.2f}x MLServer.")
    out.append("")
    return out
