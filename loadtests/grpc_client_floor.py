"""How much of the harness's gRPC gap to perf_analyzer at concurrency 1 is the Python client itself.

Starts Tessera on the sample repository (pinned to --server-cpus) and alternates, on --client-cpus,
perf_analyzer at concurrency 1 with the smallest possible Python client: a grpc.aio loop sending one
ModelInfer after another, nothing else. Prints each round's bare-loop / perf_analyzer ratios and
their medians.

    python -m loadtests.grpc_client_floor [--rounds 5] [--seconds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc
import uvloop

from .compare_perf_analyzer import ROOT, run_perf_analyzer, tessera_argv
from .encoding import encode_payloads
from .inputs import fetch_model_info, random_samples
from .server_process import ServerProcess, free_port, http_ready
from .spec import Target
from .transports import INFER_PATH


async def _bare_loop(port: int, payloads: list[bytes], seconds: float) -> tuple[float, float]:
    """(requests per second, p50 ms) of sequential unary calls on one grpc.aio channel."""
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    call = channel.unary_unary(INFER_PATH)
    for i in range(200):  # warm the channel
        await call(payloads[i % len(payloads)], timeout=10)
    latencies: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        sent = time.perf_counter()
        await call(payloads[len(latencies) % len(payloads)], timeout=10)
        latencies.append(time.perf_counter() - sent)
    elapsed = time.perf_counter() - start
    await channel.close()
    return len(latencies) / elapsed, statistics.median(latencies) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=6.0, help="bare loop per round (perf_analyzer: 3 x 2 s)")
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
        ratios: list[tuple[float, float]] = []
        for _ in range(args.rounds):
            row = run_perf_analyzer(pa_args, out / "pa.csv", args.client_cpus)[0]
            pa_rps, pa_p50 = float(row["Inferences/Second"]), float(row["p50 latency"]) / 1000
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:  # as the harness runs
                rps, p50 = runner.run(_bare_loop(port, payloads, args.seconds))
            ratios.append((rps / pa_rps, p50 / pa_p50))
            print(f"perf_analyzer {pa_rps:7.0f} req/s p50 {pa_p50:.3f} ms | bare grpc.aio loop {rps:7.0f} req/s "
                  f"p50 {p50:.3f} ms | ratios {ratios[-1][0]:.2f} / {ratios[-1][1]:.2f}", flush=True)
    print(f"median ratios (bare loop / perf_analyzer): req/s {statistics.median(r[0] for r in ratios):.2f}, "
          f"p50 {statistics.median(r[1] for r in ratios):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
