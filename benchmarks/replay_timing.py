"""How close to schedule a replay sends: a recorded arrival log replayed against Tessera, the send-time
error as the generator itself records it (actual send minus scheduled send), with and without polling
the last stretch before each send.

Tessera runs in its own process pinned to --server-cpus; the generator (one process) to --client-cpus.
Each round replays a fresh Poisson log of --lines arrivals at --rate (two models, 3:1) once per spin
setting, in alternating order; the load average is recorded before every replay.

    python -m benchmarks.replay_timing --rounds 3 --out .bench/replay
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import numpy as np

from loadtests.replay import build_replay, read_arrival_log
from loadtests.runner import run_step
from loadtests.spec import LoadSpec, Target

from .compare_perf_analyzer import tessera_argv
from .server_process import ServerProcess, free_port, http_ready

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[1]


def write_log(path: Path, lines: int, rate_rps: float, seed: int) -> Path:
    gaps = np.random.default_rng(seed).exponential(1.0 / rate_rps, size=lines)
    offsets = np.cumsum(gaps) - gaps[0]
    models = np.where(np.arange(lines) % 4 == 3, "two_input", "tabular")
    path.write_text("offset,model\n" + "".join(f"{o:.6f},{m}\n" for o, m in zip(offsets, models, strict=True)))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--lines", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--spins", default="1.5,0", help="send_spin_ms settings to compare")
    parser.add_argument("--server-cpus", default="0")
    parser.add_argument("--client-cpus", default="1")
    parser.add_argument("--out", type=Path, default=ROOT / ".bench" / "replay")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    ports = {"grpc": free_port(), "http": free_port()}
    spins = [float(s) for s in args.spins.split(",")]
    rows: list[dict[str, object]] = []
    with ServerProcess(
        tessera_argv(args.model_repository, ports["http"], ports["grpc"]),
        cpus=args.server_cpus,
        log=args.out / "tessera.log",
        ready=http_ready(f"http://127.0.0.1:{ports['http']}/v2/health/ready"),
    ):
        target = Target(port=ports["grpc"], model="tabular", request_timeout_s=5.0, metrics_url=None)
        for round_ in range(args.rounds):
            log = read_arrival_log(write_log(args.out / f"arrivals-{round_}.csv", args.lines, args.rate, round_))
            payloads, mix, arrivals = build_replay(log, target, base=args.out)
            for spin in spins if round_ % 2 == 0 else spins[::-1]:
                spec = LoadSpec(mode="open", rate_rps=args.rate, arrival="constant", warmup_s=0.0,
                                duration_s=arrivals.span_s + 1e-3, send_spin_ms=spin,
                                cpus=tuple(int(c) for c in args.client_cpus.split(",") if c))
                load = os.getloadavg()[0]
                step = run_step(target, spec, payloads, mix=mix, arrivals=arrivals)
                row = {
                    "round": round_, "send_spin_ms": spin, "load1": round(load, 2),
                    "sent": step.ok + step.error_count, "errors": step.error_count,
                    "lag_p99_ms": step.send_lag_p99_ms, "late_over_2ms": step.missed_send_fraction,
                    "generator_cpu": round(step.generator_cpu, 3), "latency_p99_ms": step.latency.p99_ms,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    (args.out / "replay_timing.json").write_text(json.dumps(rows, indent=2) + "\n")
    for spin in spins:
        lags = [float(r["lag_p99_ms"]) for r in rows if r["send_spin_ms"] == spin]  # type: ignore[arg-type]
        print(f"send_spin_ms {spin:g}: send-time error p99 median {statistics.median(lags):.3f} ms "
              f"(rounds: {', '.join(f'{x:.3f}' for x in lags)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
