"""Serving benchmark (issue 2): Tessera over gRPC and HTTP against in-process ONNX Runtime and a bare
grpc.aio server (benchmarks/bare_server.py), on a small and a compute-heavy MLP, all in one run.

    .venv/bin/python -m benchmarks.serving_benchmark --out .bench/serving

Servers run on one core (taskset -c 0), perf_analyzer on the other (taskset -c 1); in-process ORT runs
on the servers' core. Every (repeat, concurrency) round runs all systems back to back in a rotating
order, so slow drifts of a noisy machine hit every system alike; figures are medians over repeats and
targets are medians of ratios taken within a round. Writes serving_benchmark.json and .md under --out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .compare_perf_analyzer import run_workers_lowered
from .sample_models import make_models
from .serving_report import BATCH_CEILING_ROWS, HEAVY, SMALL, Cell, Figure, machine, markdown, summarize

__all__ = ["Bench", "build_repository", "main"]

ROOT = Path(__file__).resolve().parent.parent
PERF_ANALYZER = ROOT / "loadtests" / "perf_analyzer.sh"


# -- repository and processes ---------------------------------------------------------------------
def build_repository(root: Path, small_delay_us: int, heavy_delay_us: int, heavy_max_batch: int) -> None:
    """small, heavy (dynamic batching) and heavy_single (the same graph, each request alone)."""
    if root.exists():
        shutil.rmtree(root)
    make_models.make_mlp(root, "small", SMALL, 64, 11,
                         f"dynamic_batching {{ max_queue_delay_microseconds: {small_delay_us} }}\n")
    make_models.make_mlp(root, "heavy", HEAVY, heavy_max_batch, 12,
                         f"dynamic_batching {{ max_queue_delay_microseconds: {heavy_delay_us} }}\n")
    (root / "heavy_single" / "1").mkdir(parents=True)
    shutil.copyfile(root / "heavy" / "1" / "model.onnx", root / "heavy_single" / "1" / "model.onnx")
    (root / "heavy_single" / "config.pbtxt").write_text(
        f'name: "heavy_single"\nmax_batch_size: {heavy_max_batch}\n')  # no dynamic_batching: one at a time


def write_inputs(folder: Path, rows: int = 16) -> None:
    """perf_analyzer input files: uniform [0, 1) rows, as ort_inprocess feeds. perf_analyzer's own
    `random` fills tensors with random bytes, which as FP32 include NaN, inf and denormals: nothing a
    real client sends, and they push Tessera's drift statistics onto their slow (non-finite) path."""
    import numpy as np

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for model, width in (("small", SMALL[0]), ("heavy", HEAVY[0])):
        data = [{"input": {"content": rng.random(width, dtype=np.float32).round(6).tolist(), "shape": [width]}}
                for _ in range(rows)]
        (folder / f"{model}.json").write_text(json.dumps({"data": data}))


def _free_port() -> int:
    with socket.socket() as sock:  # the servers are separate processes: they must be told a number
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _grpc_ready(port: int) -> bool:
    import grpc

    from server._generated import grpc_service_pb2 as pb

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ServerReady",
                                   request_serializer=pb.ServerReadyRequest.SerializeToString,
                                   response_deserializer=pb.ServerReadyResponse.FromString)
        try:
            return bool(call(pb.ServerReadyRequest(), timeout=1).ready)
        except grpc.RpcError:
            return False


def _http_ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def start(cmd: list[str], log: Path, cpu: str, ready: list[Any], timeout_s: float = 120) -> subprocess.Popen[bytes]:
    """Start a server pinned to `cpu`, wait until every `ready` probe passes."""
    proc = subprocess.Popen(["taskset", "-c", cpu, *cmd], cwd=ROOT, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    while not all(probe() for probe in ready):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"server did not start: {' '.join(cmd)}; see {log}")
        time.sleep(0.3)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- measuring ------------------------------------------------------------------------------------
@dataclass(slots=True)
class Bench:
    out: Path
    repo: Path
    window_ms: int
    server_cpu: str
    client_cpu: str
    urls: dict[str, str]  # system -> host:port

    def perf_analyzer(self, cell: Cell, tag: str, window_ms: int | None = None) -> Figure | None:
        protocol = cell.system.rsplit("-", 1)[1]
        csv_path = self.out / "csv" / f"{tag}.csv"
        log_path = self.out / "logs" / f"{tag}.log"
        # -s 999 -r 3: exactly three windows, no stability search (which never ends on a noisy
        # machine); noise is handled by interleaved repeats and medians instead.
        cmd = ["taskset", "-c", self.client_cpu, str(PERF_ANALYZER), "-m", cell.model, "-i", protocol,
               "-u", self.urls[cell.system], "--concurrency-range", str(cell.concurrency),
               "-p", str(window_ms or self.window_ms), "-s", "999", "-r", "3", "-f", str(csv_path),
               "--input-data", str(self.out / "inputs" / f"{cell.model.removesuffix('_single')}.json")]
        loadavg = os.getloadavg()[0]
        done = run_workers_lowered(cmd, timeout_s=120)  # its main thread ahead of its workers (see there)
        log_path.write_text(done.stdout + done.stderr)
        if done.returncode != 0 or not csv_path.exists():
            print(f"  {tag}: perf_analyzer failed (rc {done.returncode}), see {log_path}", flush=True)
            return None
        header, row = csv_path.read_text().splitlines()[:2]
        values = dict(zip(header.split(","), row.split(","), strict=False))
        text = log_path.read_text(errors="replace")
        counts = [int(m) for m in re.findall(r"(?:Inference|Execution) count: (\d+)", text)]
        rows_per_batch = counts[0] / counts[1] if len(counts) >= 2 and counts[1] else None
        return Figure(float(values["Inferences/Second"]), float(values["p50 latency"]),
                      float(values["p99 latency"]), rows_per_batch, loadavg)

    def in_process(self, cell: Cell, tag: str) -> Figure | None:
        batch = BATCH_CEILING_ROWS if cell.system == "ort-batch64" else 1
        cmd = ["taskset", "-c", self.server_cpu, sys.executable, "-m", "benchmarks.ort_inprocess",
               str(self.repo / cell.model / "1" / "model.onnx"), "--concurrency", str(cell.concurrency),
               "--seconds", str(3 * self.window_ms / 1000), "--batch", str(batch)]
        loadavg = os.getloadavg()[0]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
        (self.out / "logs" / f"{tag}.log").write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            print(f"  {tag}: in-process run failed, see logs/{tag}.log", flush=True)
            return None
        got = json.loads(done.stdout.strip().splitlines()[-1])
        return Figure(got["throughput"], got["p50_us"], got["p99_us"], None, loadavg,
                      {"rows_per_s": got["rows_per_s"]})

    def measure(self, cell: Cell, tag: str) -> Figure | None:
        if cell.system.startswith("ort-"):
            return self.in_process(cell, tag)
        # Slow cells (heavy model, deep queues) get longer windows: perf_analyzer gives up on a window in
        # which some of its threads saw no answer. A failed cell is tried once more with twice the window.
        window = self.window_ms * (2 if cell.model.startswith("heavy") and cell.concurrency >= 32 else 1)
        return self.perf_analyzer(cell, tag, window) or self.perf_analyzer(cell, f"{tag}-retry", 2 * window)


def round_cells(concurrency: int) -> list[Cell]:
    """The cells compared side by side at one concurrency level."""
    cells = [Cell(system, model, concurrency)
             for model in ("small", "heavy")
             for system in ("tessera-grpc", "tessera-http", "bare-grpc", "ort-inprocess")]
    cells.append(Cell("tessera-grpc", "heavy_single", concurrency))
    # The same server without its drift side path (on by default), where the targets are judged:
    # what the serving core costs apart from the statistics folded on the same event loop.
    cells.append(Cell("tessera-nodrift-grpc", "small", concurrency))
    if concurrency == 32:
        cells += [Cell("tessera-nodrift-grpc", "heavy", 32), Cell("tessera-nodrift-grpc", "heavy_single", 32)]
    return cells


def run_rounds(bench: Bench, levels: list[int], repeats: int) -> dict[Cell, list[Figure | None]]:
    results: dict[Cell, list[Figure | None]] = {}
    total = repeats * (sum(len(round_cells(c)) for c in levels) + 2)
    done = 0
    for rep in range(repeats):
        rounds = [round_cells(c) for c in levels] + [[Cell("ort-batch64", m, 1) for m in ("small", "heavy")]]
        for index, cells in enumerate(rounds):
            shift = (rep + index) % len(cells)  # rotate the order: no system always runs first
            for cell in cells[shift:] + cells[:shift]:
                done += 1
                tag = f"r{rep}-{cell.model}-{cell.system}-c{cell.concurrency}"
                figure = bench.measure(cell, tag)
                results.setdefault(cell, []).append(figure)
                shown = f"{figure.throughput:9.1f} infer/s  p50 {figure.p50_us / 1000:7.2f} ms" if figure else "failed"
                print(f"[{done:3d}/{total}] {tag:45s} {shown}", flush=True)
    return results


def warm_up(bench: Bench) -> None:
    """One short run per server, protocol and model: first connections, arenas; fails early if broken."""
    for model in ("small", "heavy", "heavy_single"):
        for system in ("tessera-grpc", "tessera-http", "tessera-nodrift-grpc", "bare-grpc"):
            if system == "bare-grpc" and model == "heavy_single":
                continue
            cell, tag = Cell(system, model, 8), f"warmup-{model}-{system}"
            if bench.perf_analyzer(cell, tag, 500) is None and bench.perf_analyzer(cell, tag, 2000) is None:
                raise SystemExit(f"warm-up failed for {system} {model}")


# -- command --------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / ".bench" / "serving")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds; figures are medians")
    p.add_argument("--window-ms", type=int, default=1000, help="perf_analyzer window; three per cell")
    p.add_argument("--concurrency", default="1,8,32,64")
    p.add_argument("--small-delay-us", type=int, default=0, help="small's max_queue_delay_microseconds")
    p.add_argument("--heavy-delay-us", type=int, default=200, help="heavy's max_queue_delay_microseconds")
    p.add_argument("--heavy-max-batch", type=int, default=64)
    p.add_argument("--server-cpu", default="0")
    p.add_argument("--client-cpu", default="1")
    return p


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    out: Path = args.out.resolve()
    if not (ROOT / ".bench" / "perf_analyzer" / "bin" / "perf_analyzer").exists():
        subprocess.run([str(ROOT / "loadtests" / "install_perf_analyzer.sh")], check=True)
    for sub in ("csv", "logs"):
        shutil.rmtree(out / sub, ignore_errors=True)
        (out / sub).mkdir(parents=True)
    repo = out / "repo"
    build_repository(repo, args.small_delay_us, args.heavy_delay_us, args.heavy_max_batch)
    started, t0, load0 = time.strftime("%Y-%m-%d %H:%M:%S %Z"), time.monotonic(), os.getloadavg()[0]
    write_inputs(out / "inputs")
    ports = {name: _free_port() for name in ("http", "grpc", "nodrift_http", "nodrift_grpc", "bare")}

    def tessera(http: int, grpc: int, name: str, *extra: str) -> list[str]:
        return [sys.executable, "-m", "server", "serve", "--model-repository", str(repo), "--host", "127.0.0.1",
                "--http-port", str(http), "--grpc-port", str(grpc), "--log-level", "WARNING",
                "--state-dir", str(out / "state" / name), *extra]

    with contextlib.ExitStack() as servers:
        for cmd, log, probes in (
            (tessera(ports["http"], ports["grpc"], "tessera"), "tessera.log",
             [lambda: _http_ready(ports["http"]), lambda: _grpc_ready(ports["grpc"])]),
            (tessera(ports["nodrift_http"], ports["nodrift_grpc"], "nodrift", "--drift", "false"),
             "tessera-nodrift.log", [lambda: _grpc_ready(ports["nodrift_grpc"])]),
            ([sys.executable, "-m", "benchmarks.bare_server", "--model-repository", str(repo),
              "--port", str(ports["bare"])], "bare.log", [lambda: _grpc_ready(ports["bare"])]),
        ):
            servers.callback(stop, start(cmd, out / "logs" / log, args.server_cpu, probes))
        urls = {"tessera-grpc": f"127.0.0.1:{ports['grpc']}", "tessera-http": f"127.0.0.1:{ports['http']}",
                "tessera-nodrift-grpc": f"127.0.0.1:{ports['nodrift_grpc']}",
                "bare-grpc": f"127.0.0.1:{ports['bare']}"}
        bench = Bench(out, repo, args.window_ms, args.server_cpu, args.client_cpu, urls)
        warm_up(bench)
        results = run_rounds(bench, levels, args.repeats)
    summary = summarize(results, levels)
    loads = [f.loadavg for figs in results.values() for f in figs if f]
    meta = {
        "command": " ".join([".venv/bin/python -m benchmarks.serving_benchmark", *(argv or sys.argv[1:])]),
        "machine": machine(), "started": started, "duration_s": time.monotonic() - t0,
        "repeats": args.repeats, "window_ms": args.window_ms, "server_cpu": args.server_cpu,
        "client_cpu": args.client_cpu, "small_delay_us": args.small_delay_us,
        "heavy_delay_us": args.heavy_delay_us, "heavy_max_batch": args.heavy_max_batch,
        "loadavg_start": load0, "loadavg_end": os.getloadavg()[0],
        "loadavg_median": statistics.median(loads) if loads else 0.0,
    }
    (out / "serving_benchmark.json").write_text(json.dumps({"meta": meta, **summary}, indent=2))
    text = markdown(summary, meta, levels)
    (out / "serving_benchmark.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
