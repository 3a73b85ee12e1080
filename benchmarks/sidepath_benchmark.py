"""What the side paths cost the request path: drift statistics on vs off, and shadowing at 100% vs no
rollout, measured side by side in one run (issues 4 and 5).

    python -m benchmarks.sidepath_benchmark [--rounds 3] [--duration 5] [--out .bench/sidepath]

Three Tessera servers run at once on CPU 0 over two models, each with versions 1 and 2 identical: the
sample classifier (`tabular`, 8 features) and a wide MLP (`wide`, 512 features -> 256 -> 10, the case
where per-feature statistics cost most): `baseline` (drift off, no rollout), `drift` (drift statistics
on with the default settings, published to a real redis-server started here), `shadow` (drift off, a
rollout of version 2 held in its shadow phase with 100% of requests copied). The load generator runs
on CPU 1. Each round visits the servers in turn (interleaved, the order reversed every other round),
with a closed loop (throughput, p99) and an open loop at a fixed rate (p50/p99 at the same offered
load); the figures are medians over rounds of within-round ratios to the baseline.

Two identical server processes on this machine can differ by 10% for as long as they live (seen as
ratios of one sign across a whole run, a different sign in the next run), so `--fresh-servers`
starts new processes every round, and `--servers baseline,drift,control` adds `control`, a second
baseline, whose ratios show the noise floor of the run.
"""

from __future__ import annotations

import argparse
import json
import os
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

from loadtests.encoding import encode_payloads
from loadtests.inputs import fetch_model_info, random_samples
from loadtests.runner import run_step
from loadtests.spec import LoadSpec, Target

from .sample_models import make_models
from .server_process import ServerProcess, free_port, http_ready, tcp_ready

ROOT = Path(__file__).resolve().parents[1]
SERVERS = ("baseline", "drift", "shadow")
OPTIONAL_SERVERS = ("control",)  # a second baseline: what two identical servers differ by (the noise floor)
MODELS = ("tabular", "wide")
SHADOW_SPEC = {"candidate_version": 2, "shadow": {"percent": 100, "duration_seconds": 86400, "min_requests": 1},
               "canary": {"steps": [100]}}


def _repository(root: Path) -> Path:
    make_models.make_tabular(root, version=1, seed=7)
    make_models.make_tabular(root, version=2, seed=7)
    make_models.make_mlp(root, "wide", [512, 256, 10])
    (root / "wide" / "2").mkdir()
    shutil.copy(root / "wide" / "1" / "model.onnx", root / "wide" / "2" / "model.onnx")
    for model in MODELS:
        config = root / model / "config.pbtxt"
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


def _start_shadow(http_port: int, model: str) -> None:
    request = urllib.request.Request(f"http://127.0.0.1:{http_port}/v2/models/{model}/rollout",
                                     data=json.dumps(SHADOW_SPEC).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read())["phase"] == "SHADOW"


def _figures(step: Any) -> dict[str, float]:
    return {"throughput_rps": step.throughput_rps, "p50_ms": step.latency.p50_ms, "p99_ms": step.latency.p99_ms,
            "errors": float(step.error_count)}


def _cpu_seconds(server: ServerProcess) -> float:
    """User + system CPU time of the server process (all its threads), from /proc."""
    assert server.proc is not None
    fields = Path(f"/proc/{server.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _drift_loop_cpu(http_port: int) -> float:
    """The drift server's own account of the loop CPU its statistics took (folding and encoding)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith("tessera_drift_loop_cpu_seconds_total "):
                return float(line.split()[1])
    raise RuntimeError("the drift server exports no tessera_drift_loop_cpu_seconds_total")


def observe_cost_us(calls: int = 200_000) -> float:
    """CPU per request of the hand-over on the request path (DriftTap.observe), in process.

    The queue is emptied as it fills, so every call takes the accepted path (a put, not a drop).
    """
    import numpy as np
    from prometheus_client import CollectorRegistry

    from server.drift import DriftTap, TapConfig, TapMetrics

    class NoWindows:  # observe() never closes a window; the tap only needs somewhere to send them
        def publish(self, window: Any) -> None:
            raise AssertionError("no window closes while observe() is measured")

        async def start(self) -> None: ...

        async def stop(self) -> None: ...

    tap = DriftTap(NoWindows(), TapMetrics(CollectorRegistry()), TapConfig(queue_size=256))
    inputs = {"features": np.zeros((1, 8), np.float32)}
    outputs: dict[str, Any] = {}
    queue = tap._queue  # emptied here in place of the folding task
    started = time.thread_time()
    for i in range(calls):
        tap.observe("m", "1", inputs, outputs)
        if i % 256 == 255:
            while not queue.empty():
                queue.get_nowait()
    return (time.thread_time() - started) / calls * 1e6


def _median(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in rows) for key in rows[0]}


def run(rounds: int, duration_s: float, concurrency: int, out: Path, models: tuple[str, ...] = MODELS,
        servers: tuple[str, ...] = SERVERS, fresh: bool = False) -> dict[str, Any]:
    if "baseline" not in servers:
        raise ValueError("the baseline server is what the others are compared with")
    workdir = Path(tempfile.mkdtemp(prefix="tessera-sidepath-"))
    results: dict[str, dict[str, dict[str, list[dict[str, float]]]]] = {
        m: {s: {"closed": [], "open": []} for s in servers} for m in models}
    rates: dict[str, float] = {}
    closed = LoadSpec(mode="closed", concurrency=concurrency, duration_s=duration_s, warmup_s=1.0, cpus=(1,))
    try:
        repo = _repository(workdir / "repo")
        with ExitStack() as stack:
            redis_url = stack.enter_context(_redis(workdir))
            flags = {"baseline": ["--drift", "false"], "control": ["--drift", "false"],
                     "drift": ["--drift", "true", "--redis-url", redis_url, "--drift-window-s", "5"],
                     "shadow": ["--drift", "false"]}
            fleet: _Fleet | None = None
            for round_index in range(rounds):
                if fleet is None or fresh:
                    if fleet is not None:
                        fleet.close()
                    # Its own state and logs: a restarted server would resume the last fleet's rollout.
                    fleet_dir = workdir / f"fleet-{round_index}"
                    fleet_dir.mkdir()
                    fleet = stack.enter_context(_Fleet(servers, repo, fleet_dir, flags, models))
                # Visit order alternates (ABBA) so a machine slowing down within a round favours no one.
                order = servers if round_index % 2 == 0 else tuple(reversed(servers))
                for model in models:
                    targets = {n: Target(port=g, model=model, metrics_url=f"http://127.0.0.1:{h}/metrics")
                               for n, (h, g) in fleet.ports.items()}
                    samples = random_samples(fetch_model_info(targets["baseline"]), count=256, seed=1)
                    payloads = {n: encode_payloads(t, samples) for n, t in targets.items()}
                    if model not in rates:  # open loop at half the baseline's closed-loop throughput, for all
                        calibration = run_step(targets["baseline"], closed, payloads["baseline"])
                        rates[model] = round(calibration.throughput_rps * 0.5, -1)
                    open_spec = LoadSpec(mode="open", rate_rps=rates[model], duration_s=duration_s, warmup_s=1.0,
                                         cpus=(1,))
                    for name in order:
                        results[model][name]["closed"].append(_closed_step(fleet, name, targets[name], closed,
                                                                           payloads[name]))
                        results[model][name]["open"].append(_figures(run_step(targets[name], open_spec,
                                                                              payloads[name])))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    summary = {m: {n: {kind: _median(rows) for kind, rows in r.items()} for n, r in by_server.items()}
               for m, by_server in results.items()}
    report = {"rounds": rounds, "duration_s": duration_s, "concurrency": concurrency, "open_rate_rps": rates,
              "fresh_servers": fresh, "observe_us": observe_cost_us(),
              "median": summary, "ratios": _ratios(results), "raw": results}
    if "control" in servers:  # the A/A control: the same ratios against a server that is not the baseline
        report["ratios_to_control"] = _ratios(results, "control")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2))
    (out / "sidepath.md").write_text(markdown(report))
    return report


class _Fleet:
    """One server process per configuration, started together (a shadow rollout set up on `shadow`)."""

    def __init__(self, servers: tuple[str, ...], repo: Path, workdir: Path, flags: dict[str, list[str]],
                 models: tuple[str, ...]) -> None:
        self._stack = ExitStack()
        self.ports: dict[str, tuple[int, int]] = {}
        self.processes: dict[str, ServerProcess] = {}
        with self._stack.pop_all() as started:  # a server that fails to start stops the ones before it
            for name in servers:
                server, http, grpc = _serve(name, repo, workdir, flags[name])
                started.enter_context(server)
                self.ports[name] = (http, grpc)
                self.processes[name] = server
            for model in models if "shadow" in servers else ():
                _start_shadow(self.ports["shadow"][0], model)
            self._stack = started.pop_all()

    def __enter__(self) -> _Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()


def _closed_step(fleet: _Fleet, name: str, target: Target, spec: LoadSpec, payloads: list[bytes]) -> dict[str, float]:
    """Closed-loop figures plus the server's CPU per request (and, for `drift`, drift's own share)."""
    http_port = fleet.ports[name][0]
    cpu_before = _cpu_seconds(fleet.processes[name])
    drift_before = _drift_loop_cpu(http_port) if name == "drift" else 0.0
    step = run_step(target, spec, payloads)
    served = step.throughput_rps * (spec.duration_s + spec.warmup_s)
    figures = _figures(step)
    cpu = _cpu_seconds(fleet.processes[name]) - cpu_before
    figures["cpu_us_per_request"] = cpu / served * 1e6
    drift_cpu = _drift_loop_cpu(http_port) - drift_before if name == "drift" else 0.0
    figures["drift_cpu_share"] = drift_cpu / cpu if cpu > 0 else 0.0
    return figures


def _ratios(results: dict[str, dict[str, dict[str, list[dict[str, float]]]]],
            reference: str = "baseline") -> dict[str, Any]:
    """Each server against the reference within a round (side by side), then the median over rounds."""
    def median_ratio(model: str, name: str, kind: str, key: str) -> float:
        pairs = zip(results[model][name][kind], results[model][reference][kind], strict=True)
        return statistics.median(mine[key] / base[key] for mine, base in pairs)

    return {m: {n: {"closed_rps": median_ratio(m, n, "closed", "throughput_rps"),
                    "closed_p99": median_ratio(m, n, "closed", "p99_ms"),
                    "cpu_per_request": median_ratio(m, n, "closed", "cpu_us_per_request"),
                    "open_p50": median_ratio(m, n, "open", "p50_ms"),
                    "open_p99": median_ratio(m, n, "open", "p99_ms")} for n in results[m]} for m in results}


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Closed loop at concurrency {report['concurrency']} and open loop (Poisson) at half the baseline's "
        f"closed-loop throughput; medians of {report['rounds']} interleaved rounds of "
        f"{report['duration_s']:.0f} s each.",
        "",
        "Ratios (x baseline) are taken within each round, server against baseline, then the median over rounds.",
        "",
        "| model | server | closed req/s | x baseline | closed p50 / p99 ms | p99 x baseline "
        "| server CPU us/request | x baseline | open rate | open p50 / p99 ms | p50 x baseline | p99 x baseline "
        "| errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model, med in report["median"].items():
        for name in med:
            c, o, r = med[name]["closed"], med[name]["open"], report["ratios"][model][name]
            rate = report["open_rate_rps"][model]
            lines.append(
                f"| {model} | {name} | {c['throughput_rps']:.0f} | {r['closed_rps']:.3f} | "
                f"{c['p50_ms']:.2f} / {c['p99_ms']:.2f} | {r['closed_p99']:.3f} | "
                f"{c['cpu_us_per_request']:.0f} | {r['cpu_per_request']:.3f} | {rate:.0f} | "
                f"{o['p50_ms']:.2f} / {o['p99_ms']:.2f} | {r['open_p50']:.3f} | {r['open_p99']:.3f} | "
                f"{c['errors'] + o['errors']:.0f} |")
    if "ratios_to_control" in report:
        lines += ["", "Against the control instead of the baseline (within-round ratios, medians): " + "; ".join(
            f"{model} {name}: throughput {r['closed_rps']:.3f}, CPU/request {r['cpu_per_request']:.3f}, "
            f"closed p99 {r['closed_p99']:.3f}, open p99 {r['open_p99']:.3f}"
            for model, by_server in report["ratios_to_control"].items()
            for name, r in by_server.items() if name not in ("baseline", "control"))]
    if all("drift" in med for med in report["median"].values()):
        lines += ["", "Drift statistics by their own account (closed loop, medians over rounds): the serving "
                  "loop's CPU spent folding and encoding (`tessera_drift_loop_cpu_seconds_total`) as a share "
                  "of the drift server's CPU: " + ", ".join(f"{m} {med['drift']['closed']['drift_cpu_share']:.2%}"
                                               for m, med in report["median"].items())
                  + f"; plus the hand-over on the request path (`DriftTap.observe`, in process): "
                  f"{report['observe_us']:.2f} us CPU per request."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per step")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / ".bench" / "sidepath")
    parser.add_argument("--models", default=",".join(MODELS), help=f"a subset of {', '.join(MODELS)}")
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help=f"baseline and any of {', '.join(SERVERS[1:] + OPTIONAL_SERVERS)}")
    parser.add_argument("--fresh-servers", action="store_true",
                        help="new server processes every round (two identical processes can differ by 10%%)")
    args = parser.parse_args(argv)
    report = run(args.rounds, args.duration, args.concurrency, args.out, tuple(args.models.split(",")),
                 tuple(args.servers.split(",")), args.fresh_servers)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
