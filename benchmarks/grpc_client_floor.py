"""Why the harness has its own gRPC client: grpcio's Python client against ours, at concurrency 1.

Starts Tessera on the sample repository (pinned to --server-cpus) and alternates, on --client-cpus,
perf_analyzer at concurrency 1 with two bare loops sending one ModelInfer after another, nothing
else: one on a grpc.aio channel, one on the harness's HTTP/2 connection (loadtests/grpc_h2.py).
Prints each round's loop / perf_analyzer ratios (throughput, p50), each loop's client CPU per
call, and the medians.

    python -m benchmarks.grpc_client_floor [--rounds 5] [--seconds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NamedTuple

import grpc
import uvloop

from loadtests.encoding import encode_payloads
from loadtests.grpc_h2 import grpc_message, open_connection
from loadtests.inputs import fetch_model_info, random_samples
from loadtests.spec import Target
from loadtests.transports import INFER_PATH

from .compare_perf_analyzer import ROOT, run_perf_analyzer, tessera_argv
from .server_process import ServerProcess, free_port, http_ready


async def _timed(call: Callable[[bytes], Awaitable[object]], payloads: list[bytes], seconds: float) -> Figures:
    for i in range(200):  # warm the connection
        await call(payloads[i % len(payloads)])
    latencies: list[float] = []
    cpu = time.process_time()
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        sent = time.perf_counter()
        await call(payloads[len(latencies) % len(payloads)])
        latencies.append(time.perf_counter() - sent)
    elapsed = time.perf_counter() - start
    cpu_us = (time.process_time() - cpu) / len(latencies) * 1e6
    return Figures(len(latencies) / elapsed, statistics.median(latencies) * 1e3, cpu_us)


async def _grpc_aio_loop(port: int, payloads: list[bytes], seconds: float) -> Figures:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    call = channel.unary_unary(INFER_PATH)
    figures = await _timed(lambda body: call(body, timeout=10), payloads, seconds)
    await channel.close()
    return figures


async def _h2_loop(port: int, payloads: list[bytes], seconds: float) -> Figures:
    connection = await open_connection("127.0.0.1", port, INFER_PATH, timeout_s=10)
    figures = await _timed(connection.call, [grpc_message(p) for p in payloads], seconds)
    connection.close()
    return figures


class Figures(NamedTuple):
    rps: float
    p50_ms: float
    cpu_us: float  # client CPU per call (0 for perf_analyzer: not measured)


LOOPS = {"grpc.aio": _grpc_aio_loop, "harness h2": _h2_loop}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=6.0, help="each loop per round (perf_analyzer: 3 x 2 s)")
    parser.add_argument("--server-cpus", default="0")
    parser.add_argument("--client-cpus", default="1")
    args = parser.parse_args(argv)
    os.sched_setaffinity(0, {int(c) for c in args.client_cpus.split(",")})
    http, port = free_port(), free_port()
    out = Path(tempfile.mkdtemp(prefix="tessera-grpc-floor-"))
    with ServerProcess(tessera_argv(ROOT / "model_repository", http, port), cpus=args.server_cpus,
                       log=out / "tessera.log", ready=http_ready(f"http://127.0.0.1:{http}/v2/health/ready")):
        target = Target(port=port, model="tabular")
        payloads = encode_payloads(target, random_samples(fetch_model_info(target), count=64))
        pa_args = f"-m tabular -i grpc -u 127.0.0.1:{port} --concurrency-range 1:1 -p 2000 -s 999".split()
        rows: dict[str, list[tuple[float, float, float]]] = {name: [] for name in LOOPS}
        for _ in range(args.rounds):
            row = run_perf_analyzer(pa_args, out / "pa.csv", args.client_cpus)[0]
            pa = Figures(float(row["Inferences/Second"]), float(row["p50 latency"]) / 1000, 0.0)
            line = f"perf_analyzer {pa.rps:6.0f} req/s p50 {pa.p50_ms:.3f} ms"
            for name, loop in LOOPS.items():
                with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:  # as the harness runs
                    got = runner.run(loop(port, payloads, args.seconds))
                rows[name].append((got.rps / pa.rps, got.p50_ms / pa.p50_ms, got.cpu_us))
                line += f" | {name} {got.rps:6.0f} req/s p50 {got.p50_ms:.3f} ms cpu {got.cpu_us:4.0f} us"
            print(line, flush=True)
    for name, ratios in rows.items():
        print(f"{name}: median ratios to perf_analyzer: req/s {statistics.median(r[0] for r in ratios):.2f}, "
              f"p50 {statistics.median(r[1] for r in ratios):.2f}; client CPU per call "
              f"{statistics.median(r[2] for r in ratios):.0f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
