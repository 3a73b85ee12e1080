"""In-process ONNX Runtime figures for serving_benchmark: N threads calling `session.run` on one session,
no server and no network in between: what the model itself allows on this CPU.

    python -m benchmarks.ort_inprocess MODEL.onnx --concurrency 8 --seconds 3 [--batch 1]

Sessions are built as Tessera builds them by default (one intra-op thread, no spinning), so on the same
pinned core the gap to Tessera is the serving overhead. Prints one JSON object: infer/s (requests, not
rows), rows/s, p50/p99 latency in microseconds.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import numpy as np
import onnxruntime as ort

__all__ = ["measure", "session"]


def session(path: str, intra_op_threads: int = 1) -> ort.InferenceSession:
    """A CPU session configured like Tessera's default (see server/executor/session.py)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


def measure(sess: ort.InferenceSession, concurrency: int, seconds: float, batch: int) -> dict[str, float]:
    """Run `concurrency` closed-loop threads for `seconds` after a warm-up; latencies per call."""
    arg = sess.get_inputs()[0]
    width = [d if isinstance(d, int) else 1 for d in arg.shape[1:]]
    rng = np.random.default_rng(0)
    feeds = [{arg.name: rng.random((batch, *width), dtype=np.float32)} for _ in range(concurrency)]
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    start_line = threading.Barrier(concurrency + 1)
    deadline = [0.0]

    def worker(i: int) -> None:
        for _ in range(3):  # warm-up: arena growth, first-run kernels
            sess.run(None, feeds[i])
        start_line.wait()
        own = latencies[i]
        while (t0 := time.perf_counter()) < deadline[0]:
            sess.run(None, feeds[i])
            own.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    deadline[0] = time.perf_counter() + 1e9
    start_line.wait()
    began = time.perf_counter()
    deadline[0] = began + seconds
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    flat = np.array([x for own in latencies for x in own]) * 1e6
    calls = len(flat)
    return {
        "throughput": calls / elapsed,
        "rows_per_s": calls * batch / elapsed,
        "p50_us": float(np.percentile(flat, 50)) if calls else 0.0,
        "p99_us": float(np.percentile(flat, 99)) if calls else 0.0,
        "calls": calls,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="path of an ONNX model with one batched FP32 input")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--batch", type=int, default=1, help="rows per call")
    parser.add_argument("--intra-op-threads", type=int, default=1)
    args = parser.parse_args(argv)
    sess = session(args.model, args.intra_op_threads)
    print(json.dumps(measure(sess, args.concurrency, args.seconds, args.batch)))


if __name__ == "__main__":
    main()
