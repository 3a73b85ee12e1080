"""Big bodies vs small requests (issue 11): while one client sends a ~60 MB HTTP body of small BYTES
elements, another client's single-row requests are timed; the server's peak RSS (VmHWM) is read.

    python benchmarks/big_body.py --rounds 5 --server-cpu 0 --load-cpu 1
    python benchmarks/big_body.py --rounds 5 --rows 8 --server-arg=--max-strings-per-row=0   # cap off

Each round starts a fresh server (`python -m server serve`, pinned with taskset) over a repository
built here: `strings` (CategoryMapper, BYTES[-1,-1] -> INT64, max_batch_size 8) and `mlp`
(FP32[-1,64] -> [-1,10]). The small client sends one `mlp` row every `--interval-ms` (open loop:
latency counts from the scheduled send, so a stalled server is not hidden by a waiting client);
the big client sends one binary-extension request of `--elements` two-byte BYTES elements in
`--rows` rows. `--server-path` runs another checkout's server (e.g. the code before the change).
Not a test: it prints one line per round (with the 1-minute load average when it began: on a shared
machine, rounds under load are not comparable) and the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "model_repository"))
import make_models  # noqa: E402


def build_repository(root: Path, max_batch_size: int = 8) -> Path:
    node = helper.make_node("CategoryMapper", ["INPUT0"], ["OUTPUT0"], domain="ai.onnx.ml",
                            cats_strings=["aa", "ab", "ba"], cats_int64s=[1, 2, 3], default_int64=0)
    graph = helper.make_graph(
        [node], "strings", [helper.make_tensor_value_info("INPUT0", TensorProto.STRING, ["batch", "n"])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.INT64, ["batch", "n"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("ai.onnx.ml", 3)])
    model.ir_version = 8
    (root / "strings" / "1").mkdir(parents=True)
    onnx.save(model, str(root / "strings" / "1" / "model.onnx"))
    (root / "strings" / "config.pbtxt").write_text(
        f'name: "strings"\nmax_batch_size: {max_batch_size}\ndynamic_batching {{ }}\n')
    make_models.make_mlp(root, "mlp", [64, 256, 256, 10])
    return root


def http_request(path: str, body: bytes, header_length: int | None = None, close: bool = False) -> bytes:
    extra = b"" if header_length is None else b"inference-header-content-length: %d\r\n" % header_length
    conn = b"connection: close\r\n" if close else b""
    return (b"POST %s HTTP/1.1\r\nhost: bench\r\n%s%scontent-length: %d\r\n\r\n"
            % (path.encode(), extra, conn, len(body))) + body


def big_body(elements: int, rows: int = 8) -> tuple[bytes, int]:
    blob = (struct.pack("<I", 2) + b"ab") * elements
    header = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [rows, elements // rows],
                                     "parameters": {"binary_data_size": len(blob)}}],
                         "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}]}).encode()
    return header + blob, len(header)


def small_body() -> tuple[bytes, int]:
    row = np.random.default_rng(1).random((1, 64), dtype=np.float32).tobytes()
    header = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                                     "parameters": {"binary_data_size": len(row)}}],
                         "outputs": [{"name": "output", "parameters": {"binary_data": True}}]}).encode()
    return header + row, len(header)


def read_response(sock: socket.socket, buffer: bytearray) -> int:
    """Read one HTTP/1.1 response with a content-length; return its status."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    match = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
    length = int(match.group(1)) if match else 0
    body = bytearray(rest)
    while len(body) < length:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("server closed the connection")
        body += chunk
    buffer[:] = body[length:]
    return int(head.split()[1])


def vm(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


class Server:
    def __init__(self, repository: Path, cpu: int, server_path: Path, extra: list[str]) -> None:
        env = {**os.environ, "PYTHONPATH": str(server_path)}
        command = ["taskset", "-c", str(cpu), sys.executable, "-m", "server", "serve",
                   "--model-repository", str(repository), "--host", "127.0.0.1", "--http-port", "0",
                   "--grpc-port", "0", "--log-level", "INFO", *extra]
        self.process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, cwd=server_path)
        assert self.process.stderr is not None
        for line in self.process.stderr:
            match = re.search(r"HTTP [\d.]+:(\d+)", line)
            if match:
                self.port = int(match.group(1))
                break
        else:
            raise RuntimeError("server did not start")
        threading.Thread(target=lambda: [None for _ in self.process.stderr or ()], daemon=True).start()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(60)


def one_round(args: argparse.Namespace, repository: Path) -> dict[str, Any]:
    load = os.getloadavg()[0]
    server = Server(repository, args.server_cpu, args.server_path, args.server_arg or [])
    try:
        return {**measure(args, server), "load1": load}
    finally:
        server.stop()


def measure(args: argparse.Namespace, server: Server) -> dict[str, Any]:
    small, small_header = small_body()
    small_request = http_request("/v2/models/mlp/infer", small, small_header)
    big, big_header = big_body(args.elements, args.rows)
    big_request = http_request("/v2/models/strings/infer", big, big_header, close=True)
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buffer = bytearray()
    for _ in range(200):  # warm up the small path
        sock.sendall(small_request)
        assert read_response(sock, buffer) == 200
    rss_idle = vm(server.process.pid, "VmRSS")
    window: dict[str, float] = {}
    big_status: list[int] = []

    def send_big() -> None:
        with socket.create_connection(("127.0.0.1", server.port)) as big_sock:
            window["start"] = time.perf_counter()
            big_sock.sendall(big_request)
            big_status.append(read_response(big_sock, bytearray()))
            window["end"] = time.perf_counter()

    interval = args.interval_ms / 1000
    samples: list[tuple[float, float, float]] = []  # (scheduled, sent, done)
    thread = threading.Thread(target=send_big)
    begin = time.perf_counter()
    next_send = begin
    started = False
    while True:
        now = time.perf_counter()
        if not started and now - begin >= args.lead_s:
            thread.start()
            started = True
        if started and "end" in window and now - window["end"] >= args.tail_s:
            break
        if now < next_send:
            time.sleep(next_send - now)
        sent = time.perf_counter()
        sock.sendall(small_request)
        assert read_response(sock, buffer) == 200
        samples.append((next_send, sent, time.perf_counter()))
        next_send += interval
    thread.join()
    sock.close()
    during = [s for s in samples if window["start"] <= s[1] <= window["end"]]
    service = sorted((done - sent) * 1000 for _, sent, done in during)
    corrected = sorted((done - scheduled) * 1000 for scheduled, _, done in during)
    return {
        "big_status": big_status[0], "big_s": window["end"] - window["start"], "small_during": len(during),
        "p50_ms": pct(service, 50), "p99_ms": pct(service, 99), "max_ms": service[-1] if service else 0.0,
        "p99_corrected_ms": pct(corrected, 99), "rss_idle_mb": rss_idle / 2**20,
        "vmhwm_mb": vm(server.process.pid, "VmHWM") / 2**20,
    }


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--elements", type=int, default=10_000_000, help="two-byte BYTES elements (6 B each)")
    parser.add_argument("--rows", type=int, default=40,
                        help="rows of the big request (the model's max_batch_size); 40 rows of 250,000 strings "
                             "is the fewest the default --max-strings-per-row accepts for 10 M elements")
    parser.add_argument("--interval-ms", type=float, default=5.0, help="small-request schedule (open loop)")
    parser.add_argument("--lead-s", type=float, default=1.0)
    parser.add_argument("--tail-s", type=float, default=0.5)
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    parser.add_argument("--server-path", type=Path, default=ROOT, help="checkout whose `server` package runs")
    parser.add_argument("--server-arg", action="append", help="extra `tessera serve` flag; repeatable")
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.load_cpu})
    with tempfile.TemporaryDirectory() as tmp:
        repository = build_repository(Path(tmp) / "repository", max(8, args.rows))
        rows = []
        for index in range(args.rounds):
            row = one_round(args, repository)
            rows.append(row)
            print(f"round {index + 1}: " + ", ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                                                     for k, v in row.items()), flush=True)
    print("median: " + ", ".join(f"{key}={statistics.median(r[key] for r in rows):.1f}" for key in rows[0]))


if __name__ == "__main__":
    main()
