"""The harness against perf_analyzer: same server, same closed-loop load, interleaved, within 15%.

Starts Tessera on the sample repository (server pinned to --server-cpus, both load generators to
--client-cpus), then for each protocol and concurrency runs perf_analyzer and `loadtests` in turns
and compares throughput, p50 and p99. --acceptance also runs perf_analyzer with
--concurrency-range 1:32 on gRPC and HTTP and checks that it reports no error.

Same load means the same requests on the wire: the harness names every output, as perf_analyzer
does, and over HTTP sends each request's headers and body in two writes, as perf_analyzer's libcurl
does (seen with strace). A request arriving in two TCP segments costs the server a second wake-up
and parse; sent in one write (the harness's default) the same server answered 8-17% more requests
at concurrency 8 and 32. --http-one-write compares with the default instead.

    python -m benchmarks.compare_perf_analyzer                     # Tessera, tabular, c = 1, 8, 32
    python -m benchmarks.compare_perf_analyzer --acceptance --out .bench/compare
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from loadtests.encoding import encode_payloads
from loadtests.inputs import fetch_model_info, random_samples
from loadtests.runner import run_step
from loadtests.spec import LoadSpec, Target

from .server_process import ServerProcess, free_port, http_ready

__all__ = ["Comparison", "main", "run_perf_analyzer", "run_workers_lowered", "tessera_argv"]

ROOT = Path(__file__).resolve().parents[1]
PROTOCOLS: tuple[Literal["grpc", "http"], ...] = ("grpc", "http")
PERF_ANALYZER = ROOT / "loadtests" / "perf_analyzer.sh"


@dataclass(frozen=True, slots=True)
class Figures:
    rps: float
    p50_ms: float
    p99_ms: float


@dataclass(frozen=True, slots=True)
class Comparison:
    """Medians over the rounds, and the median over rounds of each round's harness / perf_analyzer ratio.

    The machine's speed drifts by tens of percent within a minute (a shared VM), so each ratio is
    taken within one round, between two back-to-back measurements, and the ratios are what is judged.
    """

    protocol: str
    concurrency: int
    perf_analyzer: Figures
    harness: Figures
    round_ratios: tuple[dict[str, float], ...] = ()

    def ratios(self) -> dict[str, float]:
        if self.round_ratios:
            return {key: statistics.median(r[key] for r in self.round_ratios) for key in ("rps", "p50", "p99")}
        return _ratio(self.perf_analyzer, self.harness)

    def agrees(self, tolerance: float) -> bool:
        return all(abs(r - 1.0) <= tolerance for r in self.ratios().values())


def _ratio(pa: Figures, h: Figures) -> dict[str, float]:
    return {"rps": h.rps / pa.rps, "p50": h.p50_ms / pa.p50_ms, "p99": h.p99_ms / pa.p99_ms}


def tessera_argv(repository: Path, http_port: int, grpc_port: int) -> list[str]:
    """`tessera serve` from this interpreter's environment, on loopback only."""
    script = Path(sys.executable).with_name("tessera")
    head = [str(script)] if script.exists() else [sys.executable, "-m", "server"]
    return [
        *head,
        "serve",
        "--model-repository",
        str(repository),
        "--host",
        "127.0.0.1",
        "--http-port",
        str(http_port),
        "--grpc-port",
        str(grpc_port),
    ]


# perf_analyzer's worker threads run at this nice value; its main thread keeps its own (see below).
WORKER_NICE = 15


def run_perf_analyzer(args: list[str], csv_path: Path, cpus: str, timeout_s: float = 600.0) -> list[dict[str, str]]:
    """Run perf_analyzer (pinned), return its CSV rows. Raises RuntimeError on failure.

    perf_analyzer's main thread does the bookkeeping between measurement windows (the server's
    statistics call, then a pass over every request's timestamps that erases the window's from a
    vector one by one, so its cost grows with the window's requests times those carried over), and
    the next window runs from the previous window's end, so it also holds every request completed
    during that pass. Pinned to one core with 64 busy workers, the main thread gets 1/65 of it: at
    ~20k requests/s against a server that answers the statistics call (Tessera; the echo and
    bare-bones servers do not), each pass took longer than the last and perf_analyzer never finished
    (seen at c=64: 8.9 GB after 10 minutes). Its workers therefore run at WORKER_NICE, which leaves
    their share of the core unchanged while the main thread sleeps through a window.
    """
    command = ["taskset", "-c", cpus, str(PERF_ANALYZER), *args, "-f", str(csv_path)]
    log = csv_path.with_suffix(".log")
    try:
        done = run_workers_lowered(command, timeout_s)
    except subprocess.TimeoutExpired as late:
        printed = [o.decode(errors="replace") if isinstance(o, bytes) else o or "" for o in (late.output, late.stderr)]
        log.write_text(f"$ {' '.join(command)}\n(killed at the timeout)\n{printed[0]}\n{printed[1]}")
        raise
    log.write_text(f"$ {' '.join(command)}\n{done.stdout}\n{done.stderr}")
    if done.returncode != 0:
        raise RuntimeError(
            f"perf_analyzer failed ({done.returncode}): {' '.join(command)}\n"
            f"{done.stdout[-1500:]}\n{done.stderr[-1500:]}"
        )
    with csv_path.open() as f:
        return list(csv.DictReader(f))


def run_workers_lowered(command: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    """Run a perf_analyzer command line (taskset, the wrapper, perf_analyzer: each execs the next) with
    its workers at WORKER_NICE; its output captured. At the timeout, or if the caller is interrupted,
    perf_analyzer is killed first; TimeoutExpired then carries what it had printed."""
    # The child's pid is perf_analyzer's, so its main thread's.
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          stdin=subprocess.DEVNULL) as child:
        stop = threading.Event()
        watcher = threading.Thread(target=_lower_workers, args=(child.pid, stop), daemon=True)
        watcher.start()
        try:
            stdout, stderr = child.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            child.kill()
            stdout, stderr = child.communicate()
            raise subprocess.TimeoutExpired(command, timeout_s, output=stdout, stderr=stderr) from None
        except BaseException:
            child.kill()
            raise
        finally:
            stop.set()
            watcher.join()
    return subprocess.CompletedProcess(command, child.returncode, stdout, stderr)


def _lower_workers(pid: int, stop: threading.Event) -> None:
    """Every thread of `pid` but its main one goes to WORKER_NICE, as threads appear, until `stop` or
    the process is gone (a pid taken by another process is told apart by its start time)."""
    started = _start_time(pid)
    lowered = {pid}
    while started is not None and not stop.wait(0.1):
        try:
            threads = {int(tid) for tid in os.listdir(f"/proc/{pid}/task")}
        except OSError:
            return
        if _start_time(pid) != started:
            return
        for tid in threads - lowered:
            # A thread's nice is its own on Linux (PRIO_PROCESS on a thread id); raising it needs no privilege.
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, tid, WORKER_NICE)
            lowered.add(tid)


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _pa_figures(args: argparse.Namespace, protocol: str, port: int, concurrency: int, out: Path) -> Figures:
    window_ms = int(args.window_s * 1000)
    # No stability search to speak of (-s 999): three windows, merged, as long as the harness measures.
    pa_args = (
        f"-m {args.model} -i {protocol} -u 127.0.0.1:{port} --concurrency-range {concurrency}:{concurrency} "
        f"-p {window_ms} -s 999"
    ).split()
    for _ in range(3):  # a window with no completion (a stalled machine) ends perf_analyzer without a row
        rows = run_perf_analyzer(pa_args, out / f"pa-{protocol}-c{concurrency}.csv", args.client_cpus)
        if rows:
            break
    else:
        raise RuntimeError(f"perf_analyzer found no stable measurement: {' '.join(pa_args)}")
    row = rows[0]
    return Figures(float(row["Inferences/Second"]), float(row["p50 latency"]) / 1000, float(row["p99 latency"]) / 1000)


def _harness_figures(args: argparse.Namespace, target: Target, payloads: list[bytes], concurrency: int) -> Figures:
    cpus = tuple(int(c) for c in args.client_cpus.split(","))
    # perf_analyzer reports the last three stable windows merged: measure as long.
    spec = LoadSpec(mode="closed", concurrency=concurrency, duration_s=3 * args.window_s, warmup_s=2.0, cpus=cpus)
    step = run_step(target, spec, payloads)
    if step.error_count:
        raise RuntimeError(f"harness saw errors: {step.errors} ({step.first_error})")
    return Figures(step.throughput_rps, step.latency.p50_ms, step.latency.p99_ms)


def _compare(args: argparse.Namespace, ports: dict[str, int], out: Path) -> list[Comparison]:
    results = []
    for concurrency in (int(c) for c in args.concurrency.split(",")):
        for protocol in PROTOCOLS:
            target = Target(port=ports[protocol], protocol=protocol, model=args.model,
                            http_split_writes=not args.http_one_write)
            info = fetch_model_info(target)
            outputs = [o.name for o in info.outputs]
            payloads = encode_payloads(target, random_samples(info, count=64), outputs)
            pa: list[Figures] = []
            ours: list[Figures] = []
            for turn in range(args.rounds):  # ABBA order cancels slow drift of the machine
                first_pa = turn % 2 == 0
                for tool in ("pa", "h") if first_pa else ("h", "pa"):
                    if tool == "pa":
                        pa.append(_pa_figures(args, protocol, ports[protocol], concurrency, out))
                    else:
                        ours.append(_harness_figures(args, target, payloads, concurrency))
            rounds = tuple(_ratio(p, h) for p, h in zip(pa, ours, strict=True))
            result = Comparison(protocol, concurrency, _median(pa), _median(ours), rounds)
            results.append(result)
            _print_row(result, args.tolerance)
    return results


def _median(figures: list[Figures]) -> Figures:
    return Figures(
        statistics.median(f.rps for f in figures),
        statistics.median(f.p50_ms for f in figures),
        statistics.median(f.p99_ms for f in figures),
    )


def _print_row(c: Comparison, tolerance: float) -> None:
    r = c.ratios()
    pa, h = c.perf_analyzer, c.harness
    print(
        f"{c.protocol:>5} c={c.concurrency:<3} req/s {pa.rps:8.1f} vs {h.rps:8.1f} ({r['rps']:.2f})  "
        f"p50 {pa.p50_ms:6.2f} vs {h.p50_ms:6.2f} ms ({r['p50']:.2f})  p99 {pa.p99_ms:6.2f} vs "
        f"{h.p99_ms:6.2f} ms ({r['p99']:.2f})  {'agree' if c.agrees(tolerance) else 'DIFFER'}",
        flush=True,
    )


def _acceptance(args: argparse.Namespace, ports: dict[str, int], out: Path) -> bool:
    passed = True
    for protocol in ("grpc", "http"):
        pa_args = (
            f"-m {args.model} -i {protocol} -u 127.0.0.1:{ports[protocol]} --concurrency-range 1:32 "
            "--measurement-mode count_windows --measurement-request-count 200 -s 999"
        ).split()
        print(f"perf_analyzer {' '.join(pa_args)}", flush=True)
        try:
            rows = run_perf_analyzer(pa_args, out / f"pa-acceptance-{protocol}.csv", args.client_cpus)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"  FAILED: {exc}")
            passed = False
            continue
        best = max(rows, key=lambda row: float(row["Inferences/Second"]))
        print(
            f"  {len(rows)} concurrency levels, no errors; peak {float(best['Inferences/Second']):.0f} "
            f"infer/s at concurrency {best['Concurrency']}"
        )
        passed = passed and len(rows) == 32
    return passed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tabular")
    parser.add_argument("--model-repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--grpc-port", type=int, help="use a running server instead of starting Tessera")
    parser.add_argument("--http-port", type=int)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--window-s", type=float, default=2.0, help="perf_analyzer measurement window")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--tolerance", type=float, default=0.15)
    parser.add_argument("--server-cpus", default="0")
    parser.add_argument("--client-cpus", default="1")
    parser.add_argument("--acceptance", action="store_true", help="also perf_analyzer --concurrency-range 1:32")
    parser.add_argument("--http-one-write", action="store_true",
                        help="harness HTTP requests in one write (its default), not split as perf_analyzer sends them")
    parser.add_argument("--out", type=Path, default=ROOT / ".bench" / "compare")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out
    args.out.mkdir(parents=True, exist_ok=True)
    if not (ROOT / ".bench" / "perf_analyzer" / "bin" / "perf_analyzer").exists():
        subprocess.run(["bash", str(ROOT / "loadtests" / "install_perf_analyzer.sh")], check=True)
    os.sched_setaffinity(0, {int(c) for c in args.client_cpus.split(",")})
    if args.grpc_port and args.http_port:
        return _run(args, {"grpc": args.grpc_port, "http": args.http_port})
    ports = {"grpc": free_port(), "http": free_port()}
    argv_server = tessera_argv(args.model_repository, ports["http"], ports["grpc"])
    with ServerProcess(
        argv_server,
        cpus=args.server_cpus,
        log=args.out / "tessera.log",
        ready=http_ready(f"http://127.0.0.1:{ports['http']}/v2/health/ready"),
    ):
        return _run(args, ports)


def _run(args: argparse.Namespace, ports: dict[str, int]) -> int:
    ok = _acceptance(args, ports, args.out) if args.acceptance else True
    results = _compare(args, ports, args.out) if args.concurrency else []
    agree = all(r.agrees(args.tolerance) for r in results)
    (args.out / "compare.json").write_text(
        json.dumps(
            {
                "tolerance": args.tolerance,
                "results": [asdict(r) | {"ratios": r.ratios()} for r in results],
                "acceptance_passed": ok if args.acceptance else None,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out / 'compare.json'}; " + ("all within tolerance" if agree else "some DIFFER"))
    return 0 if agree and ok else 1


if __name__ == "__main__":
    sys.exit(main())
