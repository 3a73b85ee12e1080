"""Two generator actors on a local Ray cluster against one local generator process, same total rate:
do their merged HDR histograms give the same latency distribution?

Tessera runs in its own process pinned to --server-cpus; the local generator and both actors are
pinned to --client-cpus (the same core budget). Each round runs local, Ray, local again (ABA): the
two local runs give the noise floor (how far one generator differs from itself minutes apart), the
Ray run is compared with their mean. Distances: p50/p90/p99 and the Kolmogorov-Smirnov statistic
(largest gap between the two cumulative distributions, from the histograms' recorded values).

    python -m benchmarks.ray_vs_local --rounds 3 --rate 300 --duration 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from hdrh.histogram import HdrHistogram

from loadtests import histograms
from loadtests.encoding import encode_payloads
from loadtests.inputs import fetch_model_info, random_samples
from loadtests.results import StepResult
from loadtests.runner import run_step
from loadtests.spec import LoadSpec, Target

from .compare_perf_analyzer import tessera_argv
from .server_process import ServerProcess, free_port, http_ready

__all__ = ["ks_distance", "main"]

ROOT = Path(__file__).resolve().parents[1]


def _cdf(histogram: HdrHistogram) -> dict[int, float]:
    total, seen, points = histogram.get_total_count(), 0, {}
    for item in histogram.get_recorded_iterator():
        seen += item.count_added_in_this_iter_step
        points[int(item.value_iterated_to)] = seen / total
    return points


def ks_distance(a: HdrHistogram, b: HdrHistogram) -> float:
    """max |F_a(x) - F_b(x)| over the recorded values of both histograms."""
    fa, fb = _cdf(a), _cdf(b)
    distance, last_a, last_b = 0.0, 0.0, 0.0
    for value in sorted(set(fa) | set(fb)):
        last_a, last_b = fa.get(value, last_a), fb.get(value, last_b)
        distance = max(distance, abs(last_a - last_b))
    return distance


def _figures(step: StepResult) -> dict[str, float]:
    return {"ok": step.ok, "p50_ms": step.latency.p50_ms, "p90_ms": step.latency.p90_ms, "p99_ms": step.latency.p99_ms}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--server-cpus", default="0")
    parser.add_argument("--client-cpus", default="1")
    parser.add_argument("--out", type=Path, default=ROOT / ".bench" / "ray")
    args = parser.parse_args(argv)
    import ray

    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False)
    print(f"ray started in {time.monotonic() - started:.1f} s", flush=True)
    cpus = tuple(int(c) for c in args.client_cpus.split(","))
    ports = {"grpc": free_port(), "http": free_port()}
    rows = []
    try:
        with ServerProcess(
            tessera_argv(args.model_repository, ports["http"], ports["grpc"]),
            cpus=args.server_cpus,
            log=args.out / "tessera.log",
            ready=http_ready(f"http://127.0.0.1:{ports['http']}/v2/health/ready"),
        ):
            target = Target(port=ports["grpc"], model="tabular", request_timeout_s=5.0,
                            metrics_url=f"http://127.0.0.1:{ports['http']}/metrics")
            payloads = encode_payloads(target, random_samples(fetch_model_info(target), count=16))

            def step(processes: int, seed: int, ray_address: str | None) -> StepResult:
                spec = LoadSpec(mode="open", rate_rps=args.rate, duration_s=args.duration, warmup_s=1.0,
                                processes=processes, cpus=cpus, seed=seed)
                return run_step(target, spec, payloads, ray_address=ray_address)

            for round_ in range(args.rounds):
                load = os.getloadavg()[0]
                first = step(1, 3 * round_, None)
                actors = step(2, 3 * round_ + 1, "local")
                second = step(1, 3 * round_ + 2, None)
                h = {k: histograms.decode(s.latency_hdr.encode()) for k, s in
                     (("first", first), ("actors", actors), ("second", second))}
                local = histograms.new_histogram()
                local.add(h["first"])
                local.add(h["second"])
                row = {
                    "round": round_, "load1": round(load, 2),
                    "local_first": _figures(first), "ray_2_actors": _figures(actors), "local_second": _figures(second),
                    "ks_local_vs_local": round(ks_distance(h["first"], h["second"]), 4),
                    "ks_ray_vs_local": round(ks_distance(h["actors"], local), 4),
                    "errors": first.error_count + actors.error_count + second.error_count,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        ray.shutdown()
    (args.out / "ray_vs_local.json").write_text(json.dumps(rows, indent=2) + "\n")
    for key in ("ks_local_vs_local", "ks_ray_vs_local"):
        print(f"{key}: median {statistics.median(float(r[key]) for r in rows):.4f}")  # type: ignore[arg-type]
    for q in ("p50_ms", "p90_ms", "p99_ms"):
        ray_q = [r["ray_2_actors"][q] for r in rows]  # type: ignore[index]
        loc_q = [(r["local_first"][q] + r["local_second"][q]) / 2 for r in rows]  # type: ignore[index]
        spread = [abs(r["local_first"][q] - r["local_second"][q]) for r in rows]  # type: ignore[index]
        print(f"{q}: ray {statistics.median(ray_q):.3f} vs local {statistics.median(loc_q):.3f} "
              f"(local-vs-local spread median {statistics.median(spread):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
