"""Tessera's own gRPC transport against grpcio's, a bare grpc.aio server (no model) and Tessera's HTTP path.

perf_analyzer (closed loop, one row per request) drives each target in turn (ours-stream: ModelStreamInfer
on our transport, perf_analyzer --streaming), rotating the order every
round so the machine's drift falls on all of them alike; servers are pinned to --server-cpus and
perf_analyzer to --client-cpus. Per run: throughput, p50/p99, server CPU per request (the server
process's CPU time over the run divided by the requests it answered), and rows per batch (from
tessera_batch_size on /metrics). Ratios are taken within a round, then the median over rounds.

    PERF_ANALYZER_HOME=/tmp/pa python -m benchmarks.grpc_transport --rounds 3 --concurrency 1,8,32,64
    # the heavy model: --mlp 512,2048,2048,512 --concurrency 32 --targets ours,grpcio,http
    # ... against in-process ONNX Runtime at batch 32, measured on the servers' CPUs in every round:
    #     --inprocess-batch 32 (and a config that forms such batches: --batching "preferred_batch_size: [ 32 ]
    #     max_queue_delay_microseconds: 3000")
    # requests of 64 rows each (figures then per row): --rows 64 --targets ours,http,grpcio; with
    #     --max-batch-size 256 a batch can hold four of them (at the default 64 each is its own batch)
    # against the bare-bones HTTP/2 server with the model inline: --targets ours,bare,h2-inline
    # a change against its base, both transports' paths: --before REV --targets ours,before,ours-stream,before-stream
    # --workers 2 against 1 on both cores (servers and load unpinned):
    PERF_ANALYZER_HOME=/tmp/pa python -m benchmarks.grpc_transport --targets ours,ours-w2 \
        --server-cpus 0,1 --client-cpus 0,1 --concurrency 32,64
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.compare_perf_analyzer import run_perf_analyzer
from benchmarks.server_process import ServerProcess, free_port, http_ready, source_tree, tcp_ready

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "model_repository"))
import make_models  # noqa: E402 - the sample models' builder lives beside them

TARGETS = ("ours", "grpcio", "http", "bare", "ours-stream")
OPTIONAL_TARGETS = ("ours-w2", "ours-pool", "ours-nowait", "before", "before-stream", "h2-inline")
"""before, before-stream: our transport as it was at --before REV, unary and ModelStreamInfer.
h2-inline: benchmarks.h2_inline_server, the bare-bones HTTP/2 server running the model inline per
request, which issue 13 states its 3x-echo and 64-row targets against."""
"""Name them in --targets: `--workers 2` over our transport; ours with every model run handed to the
executor's pool (`--inline-run-us 0`, as before short runs were made on the event loop); ours serving
the model with `adaptive_batching: false` (no queue delay while the loop is saturated: Triton's
semantics for a config without one)."""
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
NO_ADAPTIVE_BATCHING = 'parameters { key: "adaptive_batching" value: { string_value: "false" } }\n'


@dataclass(frozen=True, slots=True)
class Run:
    target: str
    concurrency: int
    round: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float
    rows_per_batch: float | None


def _cpu_seconds(pid: int) -> float:
    """CPU time of the process and its children (the workers of `--workers N`), every thread."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):  # fields[1]: the parent's pid
            total += (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime + stime
    return total


def _batch_counters(http_port: int, model: str) -> tuple[float, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    total = count = 0.0
    for name, value in re.findall(rf'^(tessera_batch_size_(?:sum|count))\{{[^}}]*model="{model}"[^}}]*\}} (\S+)$',
                                  text, re.MULTILINE):
        if name.endswith("sum"):
            total += float(value)
        else:
            count += float(value)
    return total, count


def _tessera(repository: Path, grpc_server: str, cpus: str, out: Path, workers: int = 1, name: str = "",
             extra: tuple[str, ...] = (), cwd: Path = ROOT) -> tuple[ServerProcess, int, int]:
    http_port, grpc_port = free_port(), free_port()
    name = name or f"{grpc_server}-w{workers}"
    argv = [sys.executable, "-m", "server", "serve", "--model-repository", str(repository), "--host", "127.0.0.1",
            "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--grpc-server", grpc_server,
            "--state-dir", str(out / f"state-{name}"), "--workers", str(workers), *extra]
    server = ServerProcess(argv, ready=http_ready(f"http://127.0.0.1:{http_port}/v2/health/ready"),
                           log=out / f"tessera-{name}.log", cpus=cpus, cwd=cwd)
    return server, http_port, grpc_port


def _measure(target: str, port: int, pid: int, metrics_port: int | None, model: str, concurrency: int,
             args: argparse.Namespace, out: Path, round_: int) -> Run:
    protocol = "http" if target == "http" else "grpc"
    pa_args = (f"-m {model} -i {protocol} -u 127.0.0.1:{port} --concurrency-range {concurrency}:{concurrency} "
               f"-p {args.window_ms} -s 999 -b {args.rows}").split() + (["--streaming"] if target.endswith("-stream")
                                                                         else [])
    before = _batch_counters(metrics_port, model) if metrics_port else None
    cpu0, wall0 = _cpu_seconds(pid), time.monotonic()
    rows = run_perf_analyzer(pa_args, out / f"pa-{target}-c{concurrency}-r{round_}.csv", args.client_cpus)
    cpu, wall = _cpu_seconds(pid) - cpu0, time.monotonic() - wall0
    row = rows[0]
    rps = float(row["Inferences/Second"])
    # perf_analyzer keeps the load on for the whole run (warm-up windows included): CPU share / rate.
    cpu_per_request = (cpu / wall) / rps * 1e6 if rps else float("nan")
    batch = None
    if before is not None and metrics_port:
        after = _batch_counters(metrics_port, model)
        batch = (after[0] - before[0]) / max(1.0, after[1] - before[1])
    return Run(target, concurrency, round_, rps, float(row["p50 latency"]) / 1000, float(row["p99 latency"]) / 1000,
               cpu_per_request, batch)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--window-ms", type=int, default=1500)
    parser.add_argument("--server-cpus", default="0")
    parser.add_argument("--client-cpus", default="1")
    parser.add_argument("--mlp", default="64,256,256,10", help="layer sizes of the `mlp` model served")
    parser.add_argument("--rows", type=int, default=1, help="rows per request (perf_analyzer -b); its "
                        "Inferences/Second, and so req/s and CPU per request here, then count rows")
    parser.add_argument("--max-batch-size", type=int, default=64, help="the served model's max_batch_size: "
                        "the most rows one batch (and one request) may hold")
    parser.add_argument("--batching", default="", help="dynamic_batching fields of the served model's config, "
                        "e.g. 'preferred_batch_size: [ 32 ] max_queue_delay_microseconds: 2000'")
    parser.add_argument("--inprocess-batch", type=int, default=0, help="after each round's targets, run the "
                        "model in process with ONNX Runtime at this batch size on --server-cpus "
                        "(benchmarks.ort_inprocess; target `ort-inprocess`, its figures in rows/s)")
    parser.add_argument("--before", default="", help="git revision the `before` targets serve (a change's "
                        "base, measured in the same run), or a directory holding a built `server/` package "
                        "to serve, such as a compiled build of that revision (a revision's sources run "
                        "interpreted)")
    parser.add_argument("--out", type=Path, default=ROOT / ".bench" / "grpc_transport")
    args = parser.parse_args(argv)
    if args.rows > args.max_batch_size:
        parser.error(f"--rows {args.rows} exceeds --max-batch-size {args.max_batch_size}: "
                     "every request would be refused")
    args.out.mkdir(parents=True, exist_ok=True)
    model = "mlp"
    repository = Path(tempfile.mkdtemp(prefix="tessera-bench-"))
    sizes = [int(size) for size in args.mlp.split(",")]
    batching = f"dynamic_batching {{ {args.batching} }}\n"
    make_models.make_mlp(repository, model, sizes, max_batch_size=args.max_batch_size, config_extra=batching)
    nowait_repository = Path(tempfile.mkdtemp(prefix="tessera-bench-nowait-"))
    make_models.make_mlp(nowait_repository, model, sizes, max_batch_size=args.max_batch_size,
                         config_extra=batching + NO_ADAPTIVE_BATCHING)
    targets = args.targets.split(",")
    ours, ours_http, ours_grpc = _tessera(repository, "ours", args.server_cpus, args.out)
    grpcio, grpcio_http, grpcio_grpc = _tessera(repository, "grpcio", args.server_cpus, args.out)
    bare_port = free_port()
    bare = ServerProcess([sys.executable, "-m", "benchmarks.bare_server", "--model-repository", str(repository),
                          "--port", str(bare_port)], ready=tcp_ready(bare_port), log=args.out / "bare.log",
                         cpus=args.server_cpus, cwd=ROOT)
    inline_port = free_port()
    inline = ServerProcess([sys.executable, "-m", "benchmarks.h2_inline_server", "--model-repository",
                            str(repository), "--port", str(inline_port)], ready=tcp_ready(inline_port),
                           log=args.out / "h2-inline.log", cpus=args.server_cpus, cwd=ROOT)
    w2, w2_http, w2_grpc = _tessera(repository, "ours", args.server_cpus, args.out, workers=2)
    pool, pool_http, pool_grpc = _tessera(repository, "ours", args.server_cpus, args.out, name="ours-pool",
                                          extra=("--inline-run-us", "0"))
    nowait, nowait_http, nowait_grpc = _tessera(nowait_repository, "ours", args.server_cpus, args.out,
                                                name="ours-nowait")
    wants_before = any(t.startswith("before") for t in targets)
    if wants_before and not args.before:
        parser.error("the before targets need --before REV")
    old, old_http, old_grpc = _tessera(repository, "ours", args.server_cpus, args.out, name="before",
                                       cwd=_before_tree(args) if wants_before else ROOT)
    runs: list[Run] = []
    with ours, grpcio, bare, (w2 if "ours-w2" in targets else contextlib.nullcontext()), \
            (pool if "ours-pool" in targets else contextlib.nullcontext()), \
            (nowait if "ours-nowait" in targets else contextlib.nullcontext()), \
            (old if wants_before else contextlib.nullcontext()), \
            (inline if "h2-inline" in targets else contextlib.nullcontext()):
        where = {"ours": (ours_grpc, ours.pid, ours_http), "grpcio": (grpcio_grpc, grpcio.pid, grpcio_http),
                 "ours-stream": (ours_grpc, ours.pid, ours_http),
                 "ours-w2": (w2_grpc, w2.pid if w2.proc else 0, w2_http),
                 "ours-pool": (pool_grpc, pool.pid if pool.proc else 0, pool_http),
                 "ours-nowait": (nowait_grpc, nowait.pid if nowait.proc else 0, nowait_http),
                 "before": (old_grpc, old.pid if old.proc else 0, old_http),
                 "before-stream": (old_grpc, old.pid if old.proc else 0, old_http),
                 "http": (ours_http, ours.pid, ours_http), "bare": (bare_port, bare.pid, None),
                 "h2-inline": (inline_port, inline.pid if inline.proc else 0, None)}
        for round_ in range(args.rounds):
            for concurrency in (int(c) for c in args.concurrency.split(",")):
                order = targets[round_ % len(targets):] + targets[:round_ % len(targets)]
                for target in order:
                    port, pid, metrics_port = where[target]
                    run = _measure(target, port, pid, metrics_port, model, concurrency, args, args.out, round_)
                    runs.append(run)
                    print(json.dumps(asdict(run)), flush=True)
                if args.inprocess_batch:
                    run = _inprocess(repository / model / "1" / "model.onnx", concurrency, round_, args)
                    runs.append(run)
                    print(json.dumps(asdict(run)), flush=True)
    (args.out / "runs.json").write_text(json.dumps([asdict(r) for r in runs], indent=1))
    _report(runs, [*targets, "ort-inprocess"] if args.inprocess_batch else targets)


def _before_tree(args: argparse.Namespace) -> Path:
    built = Path(args.before)
    if (built / "server" / "__main__.py").is_file():
        return built.resolve()
    return source_tree(args.before, args.out / "trees")


def _inprocess(model: Path, concurrency: int, round_: int, args: argparse.Namespace) -> Run:
    """ONNX Runtime alone, one closed-loop caller at --inprocess-batch, on the servers' CPUs (they idle)."""
    done = subprocess.run(["taskset", "-c", args.server_cpus, sys.executable, "-m", "benchmarks.ort_inprocess",
                           str(model), "--concurrency", "1", "--batch", str(args.inprocess_batch), "--seconds", "3"],
                          capture_output=True, text=True, check=True, cwd=ROOT)
    figures = json.loads(done.stdout)
    return Run("ort-inprocess", concurrency, round_, figures["rows_per_s"], figures["p50_us"] / 1000,
               figures["p99_us"] / 1000, float("nan"), float(args.inprocess_batch))


def _report(runs: list[Run], targets: list[str]) -> None:
    by = {(r.target, r.concurrency, r.round): r for r in runs}
    for concurrency in sorted({r.concurrency for r in runs}):
        rounds = sorted({r.round for r in runs if r.concurrency == concurrency})
        print(f"\nc={concurrency}")
        for target in targets:
            mine = [by[(target, concurrency, n)] for n in rounds if (target, concurrency, n) in by]
            batch = [r.rows_per_batch for r in mine if r.rows_per_batch is not None]
            if not mine:
                continue
            print(f"  {target:11} req/s {statistics.median(r.rps for r in mine):8.0f}  "
                  f"p50 {statistics.median(r.p50_ms for r in mine):6.2f} ms  "
                  f"p99 {statistics.median(r.p99_ms for r in mine):6.2f} ms  "
                  f"cpu/req {statistics.median(r.cpu_us_per_request for r in mine):6.0f} us  "
                  f"rows/batch {statistics.median(batch) if batch else float('nan'):5.1f}")
        for a, b in (("ours", "bare"), ("ours", "h2-inline"), ("h2-inline", "bare"), ("ours", "grpcio"),
                     ("ours", "http"), ("ours-stream", "ours"),
                     ("ours-w2", "ours"), ("ours", "ours-pool"), ("ours", "ours-nowait"), ("ours", "before"),
                     ("ours-stream", "before-stream"), ("ours", "ort-inprocess"), ("http", "ort-inprocess")):
            if a in targets and b in targets:
                ratios = [by[(a, concurrency, n)].rps / by[(b, concurrency, n)].rps for n in rounds]
                if b == "ort-inprocess":  # rows/s against rows/s; its latency is one run's, not a request's
                    print(f"  {a}/{b}: rows/s {', '.join(f'{x:.3f}' for x in ratios)} (median "
                          f"{statistics.median(ratios):.3f})")
                    continue
                p99 = [by[(a, concurrency, n)].p99_ms / by[(b, concurrency, n)].p99_ms for n in rounds]
                cpu = [by[(a, concurrency, n)].cpu_us_per_request / by[(b, concurrency, n)].cpu_us_per_request
                       for n in rounds]
                print(f"  {a}/{b}: rps {', '.join(f'{x:.2f}' for x in ratios)} (median "
                      f"{statistics.median(ratios):.2f}); p99 median {statistics.median(p99):.2f}; "
                      f"cpu/req median {statistics.median(cpu):.2f}")


if __name__ == "__main__":
    main()
