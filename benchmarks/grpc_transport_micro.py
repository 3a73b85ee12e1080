"""The cost of our gRPC transport alone: CPU per unary call, in process, with no socket and no model.

A GrpcProtocol on a fake transport is fed reads of 8 calls each (HEADERS as a grpc client's HPACK
encoder makes them, a 300-byte message, a WINDOW_UPDATE), answering through an echo handler; the
loop runs the handlers between reads. Process CPU time over the run / calls.

    taskset -c 0 python -m benchmarks.grpc_transport_micro [--reads 4000] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time
from typing import Any

import hpack
import uvloop

from server.grpc_api.context import CallContext
from server.grpc_api.h2 import frames as f
from server.grpc_api.rpc import Rpc, route_table
from server.grpc_api.server import GrpcProtocol, GrpcServer

CALLS_PER_READ = 8


class _Raw:
    def __init__(self, data: bytes) -> None:
        self.data = data

    @classmethod
    def FromString(cls, data: bytes) -> _Raw:
        return cls(data)

    def SerializeToString(self) -> bytes:
        return self.data


class _Transport:
    """Takes writes and counts them; never closes, never pushes back."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def writelines(self, chunks: list[bytes]) -> None:
        self.written += sum(len(c) for c in chunks)

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 5555) if name == "peername" else default

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...


async def _echo(request: _Raw, context: CallContext) -> _Raw:
    return request


def _reads(count: int) -> list[bytes]:
    encoder = hpack.Encoder()
    message = b"\x00" + (300).to_bytes(4, "big") + b"x" * 300
    reads, stream_id = [], 1
    for _ in range(count):
        read = b""
        for _ in range(CALLS_PER_READ):
            block = encoder.encode([(":method", "POST"), (":scheme", "http"), (":path", "/bench.Echo/Call"),
                                    (":authority", "localhost"), ("content-type", "application/grpc"),
                                    ("te", "trailers"), ("user-agent", "grpc-c++/1.x")])
            read += (f.frame_header(len(block), f.HEADERS, f.END_HEADERS, stream_id) + block
                     + f.frame_header(len(message), f.DATA, f.END_STREAM, stream_id) + message
                     + f.window_update_frame(0, len(message)))
            stream_id += 2
        reads.append(read)
    return reads


async def measure(reads: int, profile: bool) -> float:
    """Microseconds of process CPU per call."""
    server = GrpcServer(route_table({"bench.Echo": {"Call": Rpc("unary_unary", _echo, _Raw)}}),
                        max_message_bytes=1 << 20)
    protocol = GrpcProtocol(server)
    protocol.connection_made(_Transport())  # type: ignore[arg-type]
    protocol.data_received(f.PREFACE + f.settings_frame([]))
    chunks = _reads(reads)
    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        profiler.enable()
    start = time.process_time()
    for chunk in chunks:
        protocol.data_received(chunk)
        for _ in range(3):  # handlers run, answers are queued, the turn's write goes out
            await asyncio.sleep(0)
    elapsed = time.process_time() - start
    if profiler is not None:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(20)
    return elapsed / (reads * CALLS_PER_READ) * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reads", type=int, default=4000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    print(f"{uvloop.run(measure(args.reads, args.profile)):.1f} us of CPU per call")


if __name__ == "__main__":
    main()
