"""The `tessera serve` process: logs where it listens and what is READY; SIGTERM drains and exits 0."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from ..polling import wait_until
from ..sample_models import make_models

LISTENING = re.compile(r"listening: gRPC [\d.]+:(\d+), HTTP [\d.]+:(\d+); READY: (.*)")


def _start(repository: Path, *extra: str) -> tuple[subprocess.Popen[str], int, int, str, threading.Thread]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "serve", "--model-repository", str(repository), "--host", "127.0.0.1",
         "--http-port", "0", "--grpc-port", "0", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 60
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        match = LISTENING.search(line)
        if match:
            drain = threading.Thread(target=proc.stdout.read, daemon=True)  # keep the pipe from filling
            drain.start()
            return proc, int(match.group(1)), int(match.group(2)), match.group(3), drain
        if not line and proc.poll() is not None:
            break
    proc.kill()
    proc.stdout.close()
    raise AssertionError("server did not start")


def test_serve_logs_ports_and_ready_models_then_drains_on_sigterm(tmp_path):
    make_models.make_mlp(tmp_path, "heavy", [512, 2048, 2048, 512], max_batch_size=64, config_extra="")
    make_models.make_tabular(tmp_path)
    proc, grpc_port, _, ready, drain = _start(tmp_path, "--drain-timeout-s", "20")
    assert "heavy/1" in ready and "tabular/1" in ready
    results: list[object] = []

    def call() -> None:
        with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
            item = grpcclient.InferInput("input", [64, 512], "FP32")
            item.set_data_from_numpy(np.ones((64, 512), np.float32))
            try:
                results.append(client.infer("heavy", [item]).as_numpy("output").shape)
            except Exception as exc:
                results.append(exc)

    callers = [threading.Thread(target=call) for _ in range(12)]
    for t in callers:
        t.start()
    # One instance, no batching: once the first answer is back the others are queued or running.
    wait_until(lambda: results, timeout_s=30, interval_s=0.002, message="a first answer")
    proc.send_signal(signal.SIGTERM)
    in_flight_at_signal = 12 - len(results)
    for t in callers:
        t.join(60)
    assert proc.wait(60) == 0
    drain.join(10)
    assert proc.stdout is not None
    proc.stdout.close()
    assert in_flight_at_signal > 0
    assert results == [(64, 512)] * 12, results
