"""What the side paths cost the request path: drift statistics on vs off, and shadowing at 100% vs no
rollout, measured side by side in one run (issues 4 and 5).

    python -m loadtests.sidepath_benchmark [--rounds 3] [--duration 5] [--out .bench/sidepath]

Three Tessera servers run at once on CPU 0 over the same sample classifier (`tabular`, versions 1 and
2 identical): `baseline` (drift off, no rollout), `drift` (drift statistics on, published to a real
redis-server started here), `shadow` (drift off, a rollout of version 2 held in its shadow phase with
100% of requests copied). The load generator runs on CPU 1. Each round visits the servers in turn
(interleaved), with a closed loop (throughput, p99) and an open loop at a fixed rate (p50/p99 at the
same offered load); the figures are medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from .encoding import encode_payloads
from .inputs import fetch_model_info, random_samples
from .runner import run_step
from .server_process import ServerProcess, free_port, http_ready, tcp_ready
from .spec import LoadSpec, Target

ROOT = Path(__file__).resolve().parents[1]
SERVERS = ("baseline", "drift", "shadow")
SHADOW_SPEC = {"candidate_version": 2, "shadow": {"percent": 100, "duration_seconds": 86400, "min_requests": 1},
               "canary": {"steps": [100]}}


def _repository(root: Path) -> Path:
    sys.path.insert(0, str(ROOT / "model_repository"))
    import make_models

    make_models.make_tabular(root, version=1, seed=7)
    make_models.make_tabular(root, version=2, seed=7)
    config = root / "tabular" / "config.pbtxt"
    config.write_text(config.read_text() + "version_policy { all { } }\n")
    return root


@contextmanager
def _redis(workdir: Path) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not tcp_ready(port)():
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def _serve(name: str, repo: Path, workdir: Path, extra: list[str]) -> tuple[ServerProcess, int, int]:
    http, grpc = free_port(), free_port()
    argv = [sys.executable, "-m", "server", "serve", "--model-repository", str(repo), "--host", "127.0.0.1",
            "--http-port", str(http), "--grpc-port", str(grpc), "--state-dir", str(workdir / name), *extra]
    return ServerProcess(argv, ready=http_ready(f"http://127.0.0.1:{http}/v2/health/ready"),
                         log=workdir / f"{name}.log", cpus="0"), http, grpc


def _start_shadow(http_port: int) -> None:
    request = urllib.request.Request(f"http://127.0.0.1:{http_port}/v2/models/tabular/rollout",
                                     data=json.dumps(SHADOW_SPEC).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read())["phase"] == "SHADOW"


def _figures(step: Any) -> dict[str, float]:
    return {"throughput_rps": step.throughput_rps, "p50_ms": step.latency.p50_ms, "p99_ms": step.latency.p99_ms,
            "errors": float(step.error_count)}


def _median(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in rows) for key in rows[0]}


def run(rounds: int, duration_s: float, concurrency: int, out: Path) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="tessera-sidepath-"))
    results: dict[str, dict[str, list[dict[str, float]]]] = {s: {"closed": [], "open": []} for s in SERVERS}
    try:
        repo = _repository(workdir / "repo")
        with ExitStack() as stack:
            redis_url = stack.enter_context(_redis(workdir))
            flags = {"baseline": ["--drift", "false"],
                     "drift": ["--drift", "true", "--redis-url", redis_url, "--drift-window-s", "5"],
                     "shadow": ["--drift", "false"]}
            ports: dict[str, tuple[int, int]] = {}
            for name in SERVERS:
                server, http, grpc = _serve(name, repo, workdir, flags[name])
                stack.enter_context(server)
                ports[name] = (http, grpc)
            _start_shadow(ports["shadow"][0])
            targets = {n: Target(port=g, model="tabular", metrics_url=f"http://127.0.0.1:{h}/metrics")
                       for n, (h, g) in ports.items()}
            info = fetch_model_info(targets["baseline"])
            samples = random_samples(info, count=256, seed=1)
            payloads = {n: encode_payloads(t, samples) for n, t in targets.items()}
            closed = LoadSpec(mode="closed", concurrency=concurrency, duration_s=duration_s, warmup_s=1.0, cpus=(1,))
            rate = 0.0
            for round_index in range(rounds):
                for name in SERVERS:
                    step = run_step(targets[name], closed, payloads[name])
                    results[name]["closed"].append(_figures(step))
                    if round_index == 0 and name == "baseline":
                        rate = round(step.throughput_rps * 0.5, -1)  # half the baseline's capacity
                for name in SERVERS:
                    open_spec = LoadSpec(mode="open", rate_rps=rate, duration_s=duration_s, warmup_s=1.0, cpus=(1,))
                    results[name]["open"].append(_figures(run_step(targets[name], open_spec, payloads[name])))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    summary = {n: {kind: _median(rows) for kind, rows in r.items()} for n, r in results.items()}
    report = {"rounds": rounds, "duration_s": duration_s, "concurrency": concurrency, "open_rate_rps": rate,
              "median": summary, "raw": results}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2))
    (out / "sidepath.md").write_text(markdown(report))
    return report


def markdown(report: dict[str, Any]) -> str:
    med = report["median"]
    base_c, base_o = med["baseline"]["closed"], med["baseline"]["open"]
    lines = [
        f"Closed loop at concurrency {report['concurrency']} and open loop (Poisson) at "
        f"{report['open_rate_rps']:.0f} req/s; medians of {report['rounds']} interleaved rounds of "
        f"{report['duration_s']:.0f} s each.",
        "",
        "| server | closed: req/s | vs baseline | closed p99 ms | open p50 ms | open p99 ms "
        "| open p99 vs baseline | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in SERVERS:
        c, o = med[name]["closed"], med[name]["open"]
        lines.append(
            f"| {name} | {c['throughput_rps']:.0f} | {c['throughput_rps'] / base_c['throughput_rps']:.3f} | "
            f"{c['p99_ms']:.2f} | {o['p50_ms']:.2f} | {o['p99_ms']:.2f} | {o['p99_ms'] / base_o['p99_ms']:.3f} | "
            f"{c['errors'] + o['errors']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per step")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / ".bench" / "sidepath")
    args = parser.parse_args(argv)
    report = run(args.rounds, args.duration, args.concurrency, args.out)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
