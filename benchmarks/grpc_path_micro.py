"""Server CPU per ModelInfer call over our gRPC transport, in process: the whole request path, no socket.

A real App (the `mlp` model, defaults: drift statistics on; the collector tuned as `tessera serve`
tunes it) serves a GrpcProtocol on a fake transport,
fed reads of --calls-per-read ModelInfer calls of one row each (HEADERS as a grpc client's HPACK
encoder makes them, the protobuf request perf_analyzer sends, a WINDOW_UPDATE); each read's answers
are awaited before the next. Figure: process CPU time (every thread: ONNX Runtime's included) / calls.
This is the part of the benchmark's "server CPU per request" that code changes here can move.

    taskset -c 0 python -m benchmarks.grpc_path_micro [--calls-per-read 32] [--reads 300] [--profile]
        [--request-log /dev/null] [--trace-ratio 0.01] [--profile-out FILE]

With --trace-ratio, tracing is on (the real OTLP/HTTP exporter, posting to a sink in a child process
on CPU 1 that discards what it receives), so the figure includes the span exporter's thread.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import logging
import os
import pstats
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hpack
import numpy as np
import uvloop

from server._generated import grpc_service_pb2 as pb
from server.app import App
from server.cli import settle_heap
from server.grpc_api.h2 import frames as f
from server.grpc_api.server import GrpcProtocol
from server.settings import ServerSettings

from .grpc_transport_micro import _Transport

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model_repository"))
import make_models  # the sample models' builder lives beside them

PATH = "/inference.GRPCInferenceService/ModelInfer"


def _message(sizes: list[int], rows: int = 1) -> bytes:
    request = pb.ModelInferRequest(model_name="mlp")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[rows, sizes[0]])
    del tensor  # perf_analyzer sends raw_input_contents, no contents in the tensor
    request.raw_input_contents.append(np.random.default_rng(0).random(rows * sizes[0], dtype=np.float32).tobytes())
    body = request.SerializeToString()
    return b"\x00" + len(body).to_bytes(4, "big") + body


def _reads(count: int, per_read: int, message: bytes) -> list[bytes]:
    encoder = hpack.Encoder()
    reads, stream_id = [], 1
    for _ in range(count):
        parts = []
        for _ in range(per_read):
            block = encoder.encode([(":method", "POST"), (":scheme", "http"), (":path", PATH),
                                    (":authority", "127.0.0.1:8001"), ("te", "trailers"),
                                    ("content-type", "application/grpc"), ("user-agent", "grpc-c++/1.62"),
                                    ("grpc-accept-encoding", "identity, deflate, gzip")])
            parts += [f.frame_header(len(block), f.HEADERS, f.END_HEADERS, stream_id), block,
                      f.frame_header(len(message), f.DATA, f.END_STREAM, stream_id), message,
                      f.window_update_frame(0, len(message))]
            stream_id += 2
        reads.append(b"".join(parts))
    return reads


async def measure(app: App, reads: list[bytes], per_read: int, profile: bool, sort: str = "tottime",
                  profile_out: str = "") -> tuple[float, float, float]:
    """(us of process CPU per call, of which the event loop's thread, us of wall time per call)."""
    assert app.grpc_server is not None
    protocol = GrpcProtocol(app.grpc_server)
    protocol.connection_made(_Transport())  # type: ignore[arg-type]
    protocol.data_received(f.PREFACE + f.settings_frame([]))
    finished = 0
    done: asyncio.Future[None] | None = None
    call_finished = protocol.call_finished

    def counting(call: Any) -> None:
        nonlocal finished
        call_finished(call)
        finished += 1
        if finished == per_read and done is not None and not done.done():
            done.set_result(None)

    protocol.call_finished = counting  # type: ignore[method-assign]
    stats = app.manager.get("mlp").stats
    served_before = stats.success.count
    loop = asyncio.get_running_loop()
    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        profiler.enable()
    cpu0, loop0, wall0 = time.process_time(), time.thread_time(), time.perf_counter()
    for chunk in reads:
        finished, done = 0, loop.create_future()
        protocol.data_received(chunk)
        await done
        await asyncio.sleep(0)  # the turn's write goes out
    cpu, loop_cpu, wall = time.process_time() - cpu0, time.thread_time() - loop0, time.perf_counter() - wall0
    if stats.success.count - served_before != len(reads) * per_read:  # an error path is not the path measured
        raise RuntimeError(f"{len(reads) * per_read - (stats.success.count - served_before)} calls failed")
    if profiler is not None:
        profiler.disable()
        if profile_out:
            profiler.dump_stats(profile_out)
        pstats.Stats(profiler).sort_stats(sort).print_stats(70)
    calls = len(reads) * per_read
    return cpu / calls * 1e6, loop_cpu / calls * 1e6, wall / calls * 1e6


# The observability benchmark's OTLP sink, served from a child process pinned to CPU 1.
_SINK = ("import os; from http.server import ThreadingHTTPServer; "
         "from benchmarks.observability_benchmark import OtlpSink; os.sched_setaffinity(0, {1}); "
         "server = ThreadingHTTPServer(('127.0.0.1', 0), OtlpSink); "
         "print(server.server_address[1], flush=True); server.serve_forever()")


@contextlib.contextmanager
def _otlp_sink() -> Iterator[str]:
    """An OTLP/HTTP endpoint in a child process (on CPU 1, away from the measured one)."""
    sink = subprocess.Popen([sys.executable, "-c", _SINK], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    try:
        assert sink.stdout is not None
        yield f"http://127.0.0.1:{sink.stdout.readline().strip()}/v1/traces"
    finally:
        sink.kill()
        sink.wait()


async def run(args: argparse.Namespace) -> None:
    sizes = [int(s) for s in args.mlp.split(",")]
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        tracing = args.trace_ratio is not None
        if tracing:
            os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = stack.enter_context(_otlp_sink())
        make_models.make_mlp(Path(tmp) / "repo", "mlp", sizes)
        settings = ServerSettings(model_repository=str(Path(tmp) / "repo"), http_port=0, grpc_port=0,
                                  state_dir=Path(tmp) / "state", drift_enabled=not args.no_drift,
                                  request_log=args.request_log, inline_run_us=args.inline_run_us,
                                  tracing_enabled=tracing, trace_sample_ratio=args.trace_ratio or 0.0)
        app = App(settings)
        await app.start()
        settle_heap()  # as `tessera serve` does after start-up
        try:
            message = _message(sizes, args.rows)
            await measure(app, _reads(50, args.calls_per_read, message), args.calls_per_read, False)  # warm up
            figures = []
            for _ in range(args.repeat):
                figures.append(await measure(app, _reads(args.reads, args.calls_per_read, message),
                                             args.calls_per_read, args.profile, args.sort, args.profile_out))
            for cpu, loop_cpu, wall in figures:
                print(f"{cpu:.1f} us of CPU per call ({loop_cpu:.1f} on the event loop's thread; {wall:.1f} us "
                      f"wall), {args.calls_per_read} calls per read")
            print(f"median {sorted(c for c, _, _ in figures)[len(figures) // 2]:.1f} us of CPU per call")
        finally:
            gc.unfreeze()
            await app.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls-per-read", type=int, default=32)
    parser.add_argument("--reads", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--mlp", default="64,256,256,10")
    parser.add_argument("--rows", type=int, default=1, help="rows per call (perf_analyzer -b)")
    parser.add_argument("--no-drift", action="store_true")
    parser.add_argument("--request-log", default="", help="request log destination (e.g. /dev/null): what the "
                        "lines cost, the writer thread's formatting included")
    parser.add_argument("--inline-run-us", type=int, default=ServerSettings(model_repository="").inline_run_us,
                        help="as `tessera serve --inline-run-us` (0: every run through the pool)")
    parser.add_argument("--trace-ratio", type=float, default=None, help="tracing on with this sampling ratio")
    parser.add_argument("--profile", action="store_true", help="cProfile the measured runs (slows them ~3x; "
                        "disable the collector in the process to see functions' own costs)")
    parser.add_argument("--sort", default="tottime", help="profile order: tottime or cumulative")
    parser.add_argument("--profile-out", default="", help="also write the profile here (pstats), to diff two runs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    uvloop.run(run(args))


if __name__ == "__main__":
    main()
