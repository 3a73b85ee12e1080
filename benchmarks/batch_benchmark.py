"""`tessera batch` (local engine) against its compute ceiling, its peak memory as the input grows, and
the Ray engine on this machine.

    python -m benchmarks.batch_benchmark [--rounds 5] [--cpus 0,1] [--workdir /tmp/tessera-batch-bench]

- Throughput: interleaved rounds of (a) the ceiling: one ONNX Runtime session made by the executor code
  from the same spec (same threads, same options), run in a child process over the same rows at the
  same batch size, the rows already decoded in memory; (b) `tessera batch` in a child process, Parquet
  read and write included (its own rows/s: from the first read to the last rename). Small model: mlp
  64-256-256-10; heavy: mlp 512-2048-2048-512.
- Memory: peak RSS (ru_maxrss of the child, from wait4) of `tessera batch` as the input grows from
  ~100 MB to ~2 GB of Parquet (the same 100 MB files, selected by globs).
- Ray: a local cluster (2 CPUs, 1 model actor): a one-row job (fixed costs: actor start, model load,
  pipeline start) and the 100 MB job; the marginal rate is what is left after the fixed costs.

The data is generated once under --workdir and reused. Results: printed, and --workdir/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]

MODELS = {"small": ("mlp_small", [64, 256, 256, 10]), "heavy": ("mlp_heavy", [512, 2048, 2048, 512])}
ROWS = {"small": 1_500_000, "heavy": 40_000}
BATCH_ROWS = 4096
RSS_FILE_ROWS = 400_000  # 64 float32 + an id per row: ~100 MB of Parquet per file
RSS_FILES = 20
RSS_GLOBS = {"~100 MB": "p00.parquet", "~500 MB": "p0[0-4].parquet", "~1 GB": "p0?.parquet", "~2 GB": "p??.parquet"}


def _write(path: Path, rows: int, width: int, seed: int, first_id: int = 0) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    for start in range(0, rows, 100_000):
        n = min(100_000, rows - start)
        x = rng.standard_normal((n, width), dtype=np.float32)
        table = pa.table({"id": np.arange(first_id + start, first_id + start + n),
                          "input": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), width)})
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema, compression="snappy")
        writer.write_table(table, row_group_size=BATCH_ROWS * 16)
    assert writer is not None
    writer.close()


def prepare(workdir: Path) -> None:
    from benchmarks.sample_models import make_models

    repository = workdir / "repository"
    for name, sizes in MODELS.values():
        if not (repository / name).is_dir():
            make_models.make_mlp(repository, name, sizes)
    for kind, (_, sizes) in MODELS.items():
        path = workdir / "data" / kind / "part-0.parquet"
        if not path.exists():
            _write(path, ROWS[kind], sizes[0], seed=1)
    for i in range(RSS_FILES):
        path = workdir / "data" / "rss" / f"p{i:02d}.parquet"
        if not path.exists():
            _write(path, RSS_FILE_ROWS, 64, seed=100 + i, first_id=i * RSS_FILE_ROWS)


def _pinned(command: list[str], cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus, *command] if cpus else command


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _run_child(command: list[str]) -> tuple[str, int, float]:
    """(stdout, peak RSS in KiB, wall seconds) of a child process."""
    started = time.monotonic()
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.monotonic() - started
    out = process.stdout.read() if process.stdout else ""
    err = process.stderr.read() if process.stderr else ""
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{command} failed ({process.returncode}): {err[-2000:]}")
    return out, usage.ru_maxrss, wall


def batch_command(workdir: Path, model: str, data: str, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "server", "batch", "--model-repository", str(workdir / "repository"),
            "--model", model, "--input", data, "--output", str(out), "--keep", "id",
            "--batch-rows", str(BATCH_ROWS), "--progress", "off", *extra]


def run_batch(workdir: Path, model: str, data: str, cpus: str | None, *extra: str) -> dict[str, float]:
    out = workdir / "out" / f"{model}-{time.monotonic_ns()}"
    stdout, rss_kib, wall = _run_child(_pinned(batch_command(workdir, model, data, out, *extra), cpus))
    match = re.search(r"([\d,]+) rows scored.* in ([\d.]+) s \(([\d,]+) rows/s, ([\d.]+) CPU-s\)", stdout)
    assert match is not None, stdout
    subprocess.run(["rm", "-rf", str(out)], check=True)
    rows = float(match[1].replace(",", ""))
    return {"rows": rows, "rows_per_s": float(match[3].replace(",", "")), "job_s": float(match[2]),
            "cpu_us_per_row": float(match[4]) / rows * 1e6 if rows else 0.0,
            "peak_rss_mib": rss_kib / 1024, "process_wall_s": wall}


def ceiling(repository: str, model: str, data: str, batch_rows: int) -> None:
    """Child: time ONNX Runtime alone over the file's rows (decoded before the clock starts)."""
    from server.batch.model import ModelRef, load_spec
    from server.executor.session import create_sessions

    spec, store = load_spec(ModelRef(repository=repository, name=model))
    session = create_sessions(spec)[0]  # the executor's own options: threads, spinning, optimization level
    store.close()
    table = pq.read_table(data, columns=["input"])
    x = table.column("input").combine_chunks().flatten().to_numpy().reshape(table.num_rows, -1)
    batches = [np.ascontiguousarray(x[i:i + batch_rows]) for i in range(0, len(x), batch_rows)]
    session.run(None, {"input": batches[0]})
    started, cpu_started = time.perf_counter(), time.process_time()
    for batch in batches:
        session.run(None, {"input": batch})
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    print(json.dumps({"rows": len(x), "rows_per_s": len(x) / seconds, "cpu_us_per_row": cpu / len(x) * 1e6}))


def run_ceiling(workdir: Path, model: str, data: str, cpus: str | None) -> dict[str, float]:
    command = [sys.executable, "-m", "benchmarks.batch_benchmark", "ceiling", "--repository",
               str(workdir / "repository"), "--model", model, "--data", data]
    stdout, _, _ = _run_child(_pinned(command, cpus))
    return dict(json.loads(stdout.strip().splitlines()[-1]))


def throughput(workdir: Path, rounds: int, cpus: str | None) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for kind, (model, _) in MODELS.items():
        data = str(workdir / "data" / kind / "part-0.parquet")
        per_round = []
        for r in range(rounds):
            load = os.getloadavg()[0]
            top = run_ceiling(workdir, model, data, cpus)
            got = run_batch(workdir, model, data, cpus)
            ratio = got["rows_per_s"] / top["rows_per_s"]
            cpu_ratio = got["cpu_us_per_row"] / top["cpu_us_per_row"]
            per_round.append({"ceiling_rows_per_s": top["rows_per_s"], "batch_rows_per_s": got["rows_per_s"],
                              "ratio": ratio, "ceiling_cpu_us_per_row": top["cpu_us_per_row"],
                              "batch_cpu_us_per_row": got["cpu_us_per_row"], "cpu_ratio": cpu_ratio,
                              "load_1m": load})
            print(f"{kind} round {r + 1}: ceiling {top['rows_per_s']:,.0f} rows/s "
                  f"({top['cpu_us_per_row']:.2f} CPU-us/row), tessera batch {got['rows_per_s']:,.0f} rows/s "
                  f"({got['cpu_us_per_row']:.2f} CPU-us/row), ratio {ratio:.1%}, CPU x{cpu_ratio:.2f} "
                  f"(load {load:.1f})", flush=True)
        results[kind] = {"rounds": per_round,
                         "median_ratio": statistics.median(p["ratio"] for p in per_round),
                         "median_cpu_ratio": statistics.median(p["cpu_ratio"] for p in per_round),
                         "median_ceiling": statistics.median(p["ceiling_rows_per_s"] for p in per_round),
                         "median_batch": statistics.median(p["batch_rows_per_s"] for p in per_round)}
    return results


def memory(workdir: Path, cpus: str | None) -> dict[str, Any]:
    results = {}
    data = workdir / "data" / "rss"
    for label, pattern in RSS_GLOBS.items():
        size = sum(p.stat().st_size for p in data.glob(pattern))
        got = run_batch(workdir, "mlp_small", str(data / pattern), cpus)
        results[label] = {"input_mib": size / 2**20, **got}
        print(f"input {size / 2**20:,.0f} MiB ({got['rows']:,.0f} rows): peak RSS {got['peak_rss_mib']:,.0f} MiB, "
              f"{got['rows_per_s']:,.0f} rows/s", flush=True)
    return results


def ray_engine(workdir: Path) -> dict[str, Any]:
    one = workdir / "data" / "one" / "one.parquet"
    if not one.exists():
        _write(one, 1, 64, seed=7)
    results = {}
    for label, data in (("1 row", str(one)), ("~100 MB", str(workdir / "data" / "rss" / "p00.parquet"))):
        got = run_batch(workdir, "mlp_small", data, None, "--engine", "ray", "--ray-actors", "1")
        results[label] = got
        print(f"ray, {label}: {got['rows']:,.0f} rows in {got['job_s']:.1f} s ({got['rows_per_s']:,.0f} rows/s); "
              f"process {got['process_wall_s']:.1f} s", flush=True)
    local = run_batch(workdir, "mlp_small", str(workdir / "data" / "rss" / "p00.parquet"), None)
    results["local, ~100 MB"] = local
    fixed_s = results["1 row"]["job_s"]
    big = results["~100 MB"]
    marginal = big["rows"] / max(big["job_s"] - fixed_s, 1e-9)
    results["fixed_s"] = fixed_s
    results["marginal_rows_per_s"] = marginal
    print(f"ray: job {big['job_s']:.1f} s for {big['rows']:,.0f} rows, of which ~{fixed_s:.1f} s fixed (the 1-row "
          f"job: actor start, model load, pipeline start); marginal {marginal:,.0f} rows/s; cluster start and "
          f"stop outside the job: {big['process_wall_s'] - big['job_s']:.1f} s; local engine on the same file "
          f"{local['rows_per_s']:,.0f} rows/s", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", default="all", choices=("all", "ceiling"))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tessera-batch-bench"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cpus", default=None, help="taskset CPU list for the children, e.g. 0,1")
    parser.add_argument("--skip", action="append", default=[], choices=("throughput", "memory", "ray"))
    parser.add_argument("--repository")
    parser.add_argument("--model")
    parser.add_argument("--data")
    args = parser.parse_args(argv)
    if args.mode == "ceiling":
        ceiling(args.repository, args.model, args.data, BATCH_ROWS)
        return 0
    started = time.monotonic()
    prepare(args.workdir)
    print(f"data ready in {time.monotonic() - started:.0f} s under {args.workdir}; load {os.getloadavg()}",
          flush=True)
    results: dict[str, Any] = {"cpus": args.cpus, "nproc": os.cpu_count(), "load_at_start": os.getloadavg()}
    if "throughput" not in args.skip:
        results["throughput"] = throughput(args.workdir, args.rounds, args.cpus)
    if "memory" not in args.skip:
        results["memory"] = memory(args.workdir, args.cpus)
    if "ray" not in args.skip:
        results["ray"] = ray_engine(args.workdir)
    results["load_at_end"] = os.getloadavg()
    (args.workdir / "results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps({k: v.get("median_ratio") for k, v in results.get("throughput", {}).items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
