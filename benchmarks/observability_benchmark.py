"""What traces and request logs cost the request path (issue 17), measured side by side in one run.

    python -m benchmarks.observability_benchmark [--rounds 5] [--duration 5] [--out .bench/observability]

Servers, all started together, each pinned to CPU 0 (`taskset -c 0`), drift statistics off so that only
what is measured differs; the load generator (loadtests' closed loop) runs on CPU 1, as does this script's
OTLP/HTTP receiver, which takes the exported spans and discards them:

- `before`: the code before issue 17 (`git archive <rev>`, default main as it was when merged into this
  branch): what "tracing off costs nothing measurable" is judged against;
- `off`: this code with nothing configured (no OTEL_* variables, no request log);
- `off2`: a second `off`, the A/A control: how much two identical servers differ in this run;
- `trace_0.01`: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT set, OTEL_TRACES_SAMPLER_ARG=0.01;
- `trace_1`: the same, every request traced (request, queue, batch, model run, encode spans);
- `logs`: a JSON request line for every request, written to a file.

Optional: `logs_before` and `trace_1_before`, `logs` and `trace_1` on the code at --before, to compare
a change to their cost side by side; `trace_0`, tracing on with nothing sampled.

Each round visits the servers in turn (the order reversed every other round) over gRPC and HTTP; the
figures are medians over rounds of within-round ratios to `off` (and of `off` to `before`): throughput,
and the server process's CPU time per request (from /proc: all its threads, the span exporter's too),
which the neighbours of a shared machine disturb far less than throughput; and the median over rounds
of each step's p99 and p99.9 latency (what a side path's thread holding the GIL shows first).

Then, in this process, the hooks alone: the CPU time per request of the observation calls a request
makes (transport begin, dataplane, batch, finish) with each configuration, spans made and sent as a
server sends them (the standard OTLP/HTTP exporter, posting to an OTLP sink in this process: the
sink's CPU is counted too), lines formatted and written to /dev/null by the request log's thread;
divided by `off`'s CPU per request, that is the throughput share each configuration costs, free of
the machine's noise.
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
import threading
import time
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from loadtests.encoding import encode_payloads
from loadtests.inputs import fetch_model_info, random_samples
from loadtests.runner import run_step
from loadtests.spec import LoadSpec, Target
from server import observation
from server.observation import Observability
from server.tensors import InferResponse

from .server_process import ServerProcess, free_port, http_ready, source_tree

ROOT = Path(__file__).resolve().parents[1]

SERVERS = ("before", "off", "off2", "trace_0.01", "trace_1", "logs")
OPTIONAL_SERVERS = ("trace_0", "logs_before", "trace_1_before")
"""`trace_0`: tracing on, nothing sampled (the unsampled path alone); `logs_before`, `trace_1_before`:
`logs` and `trace_1` on the code at --before (a change to their cost, side by side)."""
PROTOCOLS = ("grpc", "http")


class OtlpSink(BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that accepts every export (and counts the bytes)."""

    received = 0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        OtlpSink.received += len(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def _serve(name: str, repo: Path, workdir: Path, cwd: Path, env: dict[str, str], extra: list[str]
           ) -> tuple[ServerProcess, int, int]:
    http, grpc = free_port(), free_port()
    argv = [sys.executable, "-m", "server", "serve", "--model-repository", str(repo), "--host", "127.0.0.1",
            "--http-port", str(http), "--grpc-port", str(grpc), "--state-dir", str(workdir / name),
            "--drift", "false", *extra]
    clean = {k: "" for k in os.environ if k.startswith("OTEL_")}
    server = ServerProcess(argv, ready=http_ready(f"http://127.0.0.1:{http}/v2/health/ready"),
                           log=workdir / f"{name}.log", cpus="0", cwd=cwd,
                           env={**clean, "PYTHONPATH": str(cwd), **env})
    return server, http, grpc


def _cpu_seconds(server: ServerProcess) -> float:
    """User + system CPU time of the server process (all its threads), from /proc."""
    assert server.proc is not None
    # ServerProcess runs `taskset -c 0 python ...`: taskset execs, so the pid is the server's.
    fields = Path(f"/proc/{server.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Member:
    def __init__(self, obs: Any) -> None:
        self.observation, self.enqueued_ns = obs, time.perf_counter_ns()


class _Request:
    id, model_name = "", "tabular"


def _one_request(headers: list[tuple[bytes, bytes]], response: InferResponse) -> None:
    """The observation and request-log calls one request makes, in order, as the transports, dataplane and
    batcher make them."""
    log = observation.REQUEST_LOG
    start = time.perf_counter_ns() if log is not None else 0
    obs = observation.begin_http(headers) if observation.ACTIVE is not None else None
    observed = obs  # the transport hands it to the dataplane, which notes the request's id and model
    if observed is not None:
        observed.request_id, observed.model = _Request.id, _Request.model_name
    if observation.ACTIVE is not None:
        now = time.perf_counter_ns()
        observation.batch_executed([_Member(observed)], (now, 1000, 1, 1), now, now + 1000, now + 2000, "tabular",
                                   "1")
    if observed is not None:
        observed.served(1, "1", "pinned")
    if obs is not None:
        obs.finish()
    if log is not None:
        log.served(start, "", observation.http_traceparent(headers) if obs is None else obs.trace_id, response,
                   "http")


def hook_cost_us(requests: int = 20_000) -> dict[str, float]:
    """CPU microseconds per request of the observation hooks alone, per configuration (this process)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    from server.request_log import RequestLog
    from server.tracing import Tracing

    sink = ThreadingHTTPServer(("127.0.0.1", 0), OtlpSink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{sink.server_address[1]}/v1/traces"
    costs: dict[str, float] = {}
    configs: dict[str, Any] = {
        "off": lambda: None,
        "trace_0.01": lambda: Observability(tracing=Tracing.create(ratio=0.01, exporter=OTLPSpanExporter(endpoint))),
        "trace_1": lambda: Observability(tracing=Tracing.create(ratio=1.0, exporter=OTLPSpanExporter(endpoint))),
        "logs": lambda: Observability(request_log=RequestLog(os.devnull)),
    }
    headers = [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/octet-stream"),
               (b"inference-header-content-length", b"120"), (b"content-length", b"152")]
    now = time.perf_counter_ns()
    response = InferResponse("tabular", "1", {}, {}, served=(1, 1000, "pinned", "anonymous", (now, 1000, 1, 1)))
    for name, build in configs.items():
        active = build()
        if active is not None:
            if active.request_log is not None:
                active.request_log.start()
            observation.install(active)
        for _ in range(2000):
            _one_request(headers, response)
        start = time.process_time()
        for _ in range(requests):
            _one_request(headers, response)
        if active is not None and active.tracing is not None:
            active.tracing.force_flush()
        if active is not None and active.request_log is not None:
            active.request_log.stop()
        costs[name] = (time.process_time() - start) / requests * 1e6
        observation.uninstall()
        if active is not None and active.tracing is not None:
            active.tracing.shutdown()
    sink.shutdown()
    return costs


def run(rounds: int, duration_s: float, concurrency: int, out: Path, before_rev: str,
        servers: tuple[str, ...] = SERVERS, fresh: bool = False) -> dict[str, Any]:
    os.sched_setaffinity(0, {1})  # this process (the OTLP sink) and the load generator: CPU 1
    if "off" not in servers:
        raise ValueError("`off` is what the others are compared with")
    workdir = Path(tempfile.mkdtemp(prefix="tessera-observability-"))
    sink = ThreadingHTTPServer(("127.0.0.1", 0), OtlpSink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{sink.server_address[1]}/v1/traces"
    loads: list[float] = []
    results: dict[str, dict[str, list[float]]] = {p: {s: [] for s in servers} for p in PROTOCOLS}
    cpu: dict[str, dict[str, list[float]]] = {p: {s: [] for s in servers} for p in PROTOCOLS}
    tails: dict[str, dict[str, list[tuple[float, float]]]] = {p: {s: [] for s in servers} for p in PROTOCOLS}
    started = time.time()
    try:
        from .sample_models import make_models

        repo = workdir / "repo"
        make_models.make_tabular(repo)
        before = source_tree(before_rev, workdir)
        trace = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint, "OTEL_TRACES_SAMPLER": "parentbased_traceidratio"}
        setups: dict[str, tuple[Path, dict[str, str], list[str]]] = {
            "before": (before, {}, []), "off": (ROOT, {}, []), "off2": (ROOT, {}, []),
            "trace_0.01": (ROOT, {**trace, "OTEL_TRACES_SAMPLER_ARG": "0.01"}, []),
            "trace_1": (ROOT, {**trace, "OTEL_TRACES_SAMPLER_ARG": "1"}, []),
            "trace_0": (ROOT, {**trace, "OTEL_TRACES_SAMPLER_ARG": "0"}, []),
            "logs": (ROOT, {}, ["--request-log", str(workdir / "requests.jsonl")]),
            "logs_before": (before, {}, ["--request-log", str(workdir / "requests-before.jsonl")]),
            "trace_1_before": (before, {**trace, "OTEL_TRACES_SAMPLER_ARG": "1"}, []),
        }
        spec = LoadSpec(mode="closed", concurrency=concurrency, duration_s=duration_s, warmup_s=1.0, cpus=(1,))
        stack = ExitStack()
        ports: dict[str, tuple[int, int]] = {}
        processes: dict[str, ServerProcess] = {}
        try:
            for round_index in range(rounds):
                if not processes or fresh:  # fresh: new processes every round (a process keeps its own bias)
                    stack.close()
                    stack = ExitStack()
                    for name in servers:
                        cwd, env, extra = setups[name]
                        server, http, grpc = _serve(f"{name}-{round_index}", repo, workdir, cwd, env, extra)
                        stack.enter_context(server)
                        ports[name], processes[name] = (http, grpc), server
                order = servers if round_index % 2 == 0 else tuple(reversed(servers))
                for protocol in PROTOCOLS:
                    targets = {n: Target(port=(h if protocol == "http" else g), protocol=protocol, model="tabular")
                               for n, (h, g) in ports.items()}
                    samples = random_samples(fetch_model_info(targets["off"]), count=256, seed=1)
                    for name in order:
                        payloads = encode_payloads(targets[name], samples)
                        loads.append(os.getloadavg()[0])
                        cpu_before = _cpu_seconds(processes[name])
                        step = run_step(targets[name], spec, payloads)
                        if step.error_count:
                            raise RuntimeError(f"{name} over {protocol}: {step.error_count} errors")
                        served = step.throughput_rps * (spec.duration_s + spec.warmup_s)
                        cpu_us = (_cpu_seconds(processes[name]) - cpu_before) / served * 1e6
                        results[protocol][name].append(step.throughput_rps)
                        cpu[protocol][name].append(cpu_us)
                        tails[protocol][name].append((step.latency.p99_ms, step.latency.p999_ms))
                        print(f"round {round_index + 1} {protocol:4} {name:10} {step.throughput_rps:8.0f} infer/s "
                              f"{cpu_us:7.0f} us CPU/request (load {loads[-1]:.2f})", flush=True)
        finally:
            stack.close()
        log_lines = sum(1 for _ in (workdir / "requests.jsonl").open()) if (workdir / "requests.jsonl").exists() \
            else 0
    finally:
        sink.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)

    def ratio(protocol: str, name: str, reference: str, table: dict[str, dict[str, list[float]]] = results
              ) -> float:
        pairs = zip(table[protocol][name], table[protocol][reference], strict=True)
        return statistics.median(mine / base for mine, base in pairs)

    hooks = hook_cost_us()
    off_cpu = {p: statistics.median(cpu[p]["off"]) for p in PROTOCOLS}

    report = {
        "started_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)), "wall_s": time.time() - started,
        "rounds": rounds, "duration_s": duration_s, "concurrency": concurrency, "before_rev": before_rev,
        "load_1min": {"min": min(loads), "median": statistics.median(loads), "max": max(loads)},
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "otlp_bytes_received": OtlpSink.received, "request_log_lines": log_lines,
        "throughput_median": {p: {n: statistics.median(v) for n, v in by.items()} for p, by in results.items()},
        "ratio_to_off": {p: {n: ratio(p, n, "off") for n in servers if n != "off"} for p in PROTOCOLS},
        "servers": list(servers), "fresh_servers": fresh,
        "off_to_before": {p: ratio(p, "off", "before") if "before" in servers else 1.0 for p in PROTOCOLS},
        "cpu_us_per_request_median": {p: {n: statistics.median(v) for n, v in by.items()} for p, by in cpu.items()},
        "cpu_ratio_to_off": {p: {n: ratio(p, n, "off", cpu) for n in servers if n != "off"} for p in PROTOCOLS},
        "cpu_off_to_before": {p: ratio(p, "off", "before", cpu) if "before" in servers else 1.0 for p in PROTOCOLS},
        "hook_cpu_us": hooks,
        "hook_share_of_off_cpu": {p: {n: (hooks[n] - hooks["off"]) / off_cpu[p] for n in hooks if n != "off"}
                                  for p in PROTOCOLS},
        "latency_ms_median": {p: {n: {"p99": statistics.median(t[0] for t in v),
                                      "p999": statistics.median(t[1] for t in v)} for n, v in by.items()}
                              for p, by in tails.items()},
        "raw": results, "raw_cpu_us": cpu, "raw_latency_ms": tails,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2))
    (out / "observability.md").write_text(markdown(report))
    return report


def markdown(report: dict[str, Any]) -> str:
    rows = ["| server | gRPC infer/s | ratio | gRPC CPU us/req | ratio "
            "| HTTP infer/s | ratio | HTTP CPU us/req | ratio |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in report["servers"]:
        cells = []
        for protocol in PROTOCOLS:
            cells.append(f"{report['throughput_median'][protocol][name]:,.0f}")
            cells.append("1" if name == "off" else f"{report['ratio_to_off'][protocol][name]:.3f}")
            cells.append(f"{report['cpu_us_per_request_median'][protocol][name]:,.0f}")
            cells.append("1" if name == "off" else f"{report['cpu_ratio_to_off'][protocol][name]:.3f}")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    rows += ["", "Latency, ms (the median over rounds of each step's p99 and p99.9):", "",
             "| server | gRPC p99 | gRPC p99.9 | HTTP p99 | HTTP p99.9 |", "|---|---:|---:|---:|---:|"]
    for name in report["servers"]:
        tail = [report["latency_ms_median"][p][name] for p in PROTOCOLS]
        rows.append(f"| {name} | " + " | ".join(f"{t['p99']:.3f} | {t['p999']:.3f}" for t in tail) + " |")
    hooks = report["hook_cpu_us"]
    rows += ["", "Hooks alone (this process, CPU us per request; share = (config - off) / `off` server's CPU per "
             "request):", "", "| config | CPU us/request | share of a gRPC request | share of an HTTP request |",
             "|---|---:|---:|---:|"]
    for name, us in hooks.items():
        shares = ["-" if name == "off" else f"{report['hook_share_of_off_cpu'][p][name]:.2%}" for p in PROTOCOLS]
        rows.append(f"| {name} | {us:.2f} | " + " | ".join(shares) + " |")
    load = report["load_1min"]
    return "\n".join([
        f"Run {report['started_utc']}, {report['wall_s']:.0f} s, {report['rounds']} rounds of "
        f"{report['duration_s']:.0f} s per server and protocol, closed loop at concurrency {report['concurrency']}"
        f"{', fresh server processes every round' if report['fresh_servers'] else ''}.",
        f"1-minute load average over the steps: min {load['min']:.2f}, median {load['median']:.2f}, "
        f"max {load['max']:.2f} (2 cores); `uptime` at the end: {report['uptime']}.",
        f"`off` / `before`: throughput gRPC {report['off_to_before']['grpc']:.3f}, HTTP "
        f"{report['off_to_before']['http']:.3f}; CPU per request gRPC {report['cpu_off_to_before']['grpc']:.3f}, "
        f"HTTP {report['cpu_off_to_before']['http']:.3f}.",
        "", *rows, ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per step")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--before", default="dda49d7", help="revision before issue 17 (main at the merge)")
    parser.add_argument("--out", type=Path, default=Path(".bench/observability"))
    parser.add_argument("--hooks-only", action="store_true", help="only the in-process hook costs")
    parser.add_argument("--fresh-servers", action="store_true",
                        help="new server processes every round: two identical processes can differ by 10%% "
                             "for as long as they live")
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help=f"comma-separated, from {', '.join(SERVERS + OPTIONAL_SERVERS)}")
    args = parser.parse_args(argv)
    if args.hooks_only:
        print(json.dumps(hook_cost_us(), indent=2))
        return 0
    report = run(args.rounds, args.duration, args.concurrency, args.out, args.before,
                 tuple(n for n in args.servers.split(",") if n), args.fresh_servers)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
