"""The peer benchmark, one command: Tessera, MLServer, a naive FastAPI server, a bare grpc.aio server
and in-process ONNX Runtime serve the same ONNX models on one machine; the harness drives each in
closed loops, in interleaved rounds (the order reverses each round), and the medians become ratios.

    python -m benchmarks.peers.bench                      # both models, c = 1, 8, 32, two rounds
    python -m benchmarks.peers.bench --models mlp --levels 8,32 --rounds 1 --duration 3

Servers are pinned to --server-cpus and the generator to --client-cpus. Output: results.json and
peers.md (the BENCHMARKS.md section) under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from loadtests.encoding import encode_payloads
from loadtests.inputs import fetch_model_info, random_samples
from loadtests.runner import run_step
from loadtests.spec import LoadSpec, Target

from .markdown import render
from .models import build_repository
from .servers import PEERS, ROOT, Launch, Peer, Transport

__all__ = ["Point", "main"]


@dataclass(frozen=True, slots=True)
class Point:
    """One measurement: a server, a transport, a model and a concurrency, in one round."""

    peer: str
    transport: str
    model: str
    concurrency: int
    round: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    server_batch_mean: float | None = None


def _measure(
    args: argparse.Namespace, peer: Peer, launch: Launch, transport: Transport, model: str, round_: int
) -> list[Point]:
    target = Target(
        port=launch.ports[transport.protocol],
        protocol=transport.protocol,
        http_encoding=transport.http_encoding,
        model=model,
        metrics_url=launch.metrics_url,
    )
    payloads = encode_payloads(target, random_samples(fetch_model_info(target), count=64))
    points = []
    for level in args.levels:
        spec = LoadSpec(
            mode="closed", concurrency=level, duration_s=args.duration, warmup_s=args.warmup, cpus=args.client_cpu_set
        )
        step = run_step(target, spec, payloads)
        batch = step.server.batch_mean if step.server is not None else None
        points.append(
            Point(
                peer.name,
                transport.label,
                model,
                level,
                round_,
                step.throughput_rps,
                step.latency.p50_ms,
                step.latency.p99_ms,
                step.error_count,
                batch,
            )
        )
        print(
            f"  {peer.name:<26} {transport.label:<12} {model:<8} c={level:<3} {step.throughput_rps:8.1f} req/s "
            f"p50 {step.latency.p50_ms:7.2f} p99 {step.latency.p99_ms:7.2f} ms errors {step.error_count}",
            flush=True,
        )
    return points


def _in_process(args: argparse.Namespace, repository: Path, model: str, round_: int) -> Point:
    """benchmarks/ort_inprocess.py on the server cores: one thread, batch 1, sessions built as Tessera's."""
    command = [
        "taskset",
        "-c",
        args.server_cpus,
        sys.executable,
        "-m",
        "benchmarks.ort_inprocess",
        str(repository / model / "1" / "model.onnx"),
        "--concurrency",
        "1",
        "--seconds",
        str(args.duration),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT, timeout=120)
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  {'in-process ORT':<26} {'-':<12} {model:<8} c=1   {figures['throughput']:8.1f} runs/s", flush=True)
    return Point(
        "in-process ONNX Runtime",
        "none",
        model,
        1,
        round_,
        figures["throughput"],
        figures["p50_us"] / 1000,
        figures["p99_us"] / 1000,
        0,
    )


def _round(args: argparse.Namespace, repository: Path, order: list[str], round_: int) -> list[Point]:
    points: list[Point] = []
    for key in order:
        if key == "ort":
            points += [_in_process(args, repository, model, round_) for model in args.models]
            continue
        peer = PEERS[key]
        launch = peer.launch(repository, args.peers_venv, args.server_cpus, args.out)
        with launch.server:
            for transport in peer.transports:
                for model in args.models:
                    points += _measure(args, peer, launch, transport, model, round_)
    return points


def _medians(points: list[Point]) -> list[dict[str, object]]:
    groups: dict[tuple[str, str, str, int], list[Point]] = {}
    for p in points:
        groups.setdefault((p.peer, p.transport, p.model, p.concurrency), []).append(p)
    return [
        {
            "peer": k[0],
            "transport": k[1],
            "model": k[2],
            "concurrency": k[3],
            "rps": statistics.median(p.rps for p in g),
            "p50_ms": statistics.median(p.p50_ms for p in g),
            "p99_ms": statistics.median(p.p99_ms for p in g),
            "errors": sum(p.errors for p in g),
            "rounds": len(g),
        }
        for k, g in groups.items()
    ]


def _machine(args: argparse.Namespace) -> dict[str, str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    versions = subprocess.run(
        [
            str(args.peers_venv / "bin" / "python"),
            "-c",
            "import mlserver, onnxruntime, uvloop; print(mlserver.__version__, "
            "onnxruntime.__version__, uvloop.__version__)",
        ],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    import grpc
    import onnxruntime

    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": sys.version.split()[0],
        "onnxruntime": onnxruntime.__version__,
        "grpcio": grpc.__version__,
        "mlserver": versions[0] if versions else "?",
        "peers_uvloop": versions[2] if versions else "?",
        "server_cpus": args.server_cpus,
        "client_cpus": args.client_cpus,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mlp,tabular")
    parser.add_argument("--peers", default="tessera,mlserver,naive,bare,ort")
    parser.add_argument("--levels", default="1,8,32", help="closed-loop concurrencies")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--server-cpus", default="0")
    parser.add_argument("--client-cpus", default="1")
    parser.add_argument("--peers-venv", type=Path, default=ROOT / ".bench" / "peers-venv")
    parser.add_argument("--out", type=Path, default=ROOT / ".bench" / "peers")
    parser.add_argument("--skip-install", action="store_true")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out
    args.models = [m for m in args.models.split(",") if m]
    args.levels = [int(c) for c in args.levels.split(",") if c]
    args.client_cpu_set = tuple(int(c) for c in args.client_cpus.split(","))
    order = [p for p in args.peers.split(",") if p]
    args.out.mkdir(parents=True, exist_ok=True)
    if (not args.skip_install and "mlserver" in order) or "naive" in order:
        subprocess.run(
            ["bash", str(ROOT / "benchmarks" / "peers" / "install_peers.sh"), str(args.peers_venv)], check=True
        )
    os.sched_setaffinity(0, set(args.client_cpu_set))
    repository = args.out / "models"
    build_repository(repository, ROOT / "model_repository")
    points: list[Point] = []
    for round_ in range(args.rounds):
        print(f"round {round_ + 1}/{args.rounds}: {' -> '.join(order)}", flush=True)
        points += _round(args, repository, order, round_)
        order.reverse()  # ABBA: slow drift of the machine falls on every peer alike
    medians = _medians(points)
    machine = _machine(args)
    command = "python -m benchmarks.peers.bench " + " ".join(argv if argv is not None else sys.argv[1:])
    (args.out / "results.json").write_text(
        json.dumps(
            {"machine": machine, "command": command, "points": [asdict(p) for p in points], "medians": medians},
            indent=2,
        )
        + "\n"
    )
    (args.out / "peers.md").write_text(render(medians, machine, command, args))
    print((args.out / "peers.md").read_text())
    return 0 if all(m["errors"] == 0 for m in medians) else 1


if __name__ == "__main__":
    sys.exit(main())
