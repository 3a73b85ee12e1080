"""Replicas as real `tessera serve` processes on ephemeral loopback ports, and a small HTTP client for them."""

from __future__ import annotations

import http.client
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from ..sample_models import make_models

ROOT = Path(__file__).resolve().parents[2]
LISTENING = re.compile(r"listening: gRPC [\d.]+:(\d+), HTTP [\d.]+:(\d+)")
FEATURES = [0.1, -0.2, 0.3, 0.5, -1.0, 0.7, 0.0, 0.25]


def tabular(root: Path, name: str, candidate_seed: int) -> None:
    """A copy of the sample classifier named `name`, versions 1 (seed 7) and 2 (`candidate_seed`), both served."""
    scratch = root.parent / f".{name}-build"
    make_models.make_tabular(scratch, version=1, seed=7)
    make_models.make_tabular(scratch, version=2, seed=candidate_seed)
    shutil.copytree(scratch / "tabular", root / name)
    shutil.rmtree(scratch)
    config = root / name / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "tabular"', f'name: "{name}"')
                      + "version_policy { all { } }\n")


class Replica:
    """One `tessera serve` process; `call` and `infer` speak HTTP to it over one kept-alive connection."""

    def __init__(self, name: str, proc: subprocess.Popen[str], log: list[str]) -> None:
        self.name, self.proc, self.log = name, proc, log
        self.grpc_port, self.http_port = _ports(proc, time.monotonic() + 90, log)
        self._local = threading.local()
        self._connections: list[http.client.HTTPConnection] = []

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=30)
            self._connections.append(conn)
        return conn

    def _roundtrip(self, method: str, path: str, body: bytes | None, headers: dict[str, str]
                   ) -> tuple[int, bytes]:
        """One request on this thread's kept-alive connection. The server closes idle connections
        (uvicorn's keep-alive timeout), so a reused one that turns out closed is reopened once."""
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                return response.status, response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt == 2 or not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError,
                                                                        http.client.RemoteDisconnected)):
                    raise
        raise AssertionError("unreachable")

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        status, data = self._roundtrip(method, path, None if body is None else orjson.dumps(body),
                                       {"Content-Type": "application/json"})
        return status, orjson.loads(data) if data else None

    def infer(self, model: str, key: str | None = None, features: list[float] = FEATURES) -> str:
        """The version that answered an unversioned request; raises on any error."""
        body = {"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32", "data": features}]}
        headers = {"tessera-routing-key": key} if key is not None else {}
        status, data = self._roundtrip("POST", f"/v2/models/{model}/infer", orjson.dumps(body), headers)
        if status != 200:
            raise AssertionError(f"{self.name}: HTTP {status} {data[:200]!r}")
        return str(orjson.loads(data)["model_version"])

    def rollout(self, model: str) -> dict[str, Any]:
        status, body = self.call("GET", f"/v2/models/{model}/rollout")
        assert status == 200, body
        return dict(body)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> None:
        """Close this test's connections and send SIGTERM (the drain starts); `stop` waits for the exit."""
        for conn in self._connections:
            conn.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        self.terminate()
        if self.proc.poll() is None:
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _launch(repository: Path, redis_url: str, state_dir: Path, name: str, *flags: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "server", "serve", "--model-repository", str(repository), "--host", "127.0.0.1",
         "--http-port", "0", "--grpc-port", "0", "--redis-url", redis_url, "--state-dir", str(state_dir),
         "--replica-id", name, "--drift", "false", "--allow-repository-admin", "true",
         "--rollout-tick-s", "0.1", "--drain-timeout-s", "5", *flags],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)},
    )


def _ports(proc: subprocess.Popen[str], deadline: float, log: list[str]) -> tuple[int, int]:
    assert proc.stdout is not None
    stdout = proc.stdout
    while time.monotonic() < deadline:
        line = stdout.readline()
        log.append(line)
        match = LISTENING.search(line)
        if match:  # keep the pipe from filling, and the log for a failing test's report
            threading.Thread(target=lambda: log.extend(stdout), daemon=True).start()
            return int(match.group(1)), int(match.group(2))
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError("replica did not start")


def start_replicas(repository: Path, redis_url: str, tmp: Path, first: int, count: int, *flags: str
                   ) -> list[Replica]:
    """Start replicas `first`.. `first + count - 1` at once (in parallel) and wait until each listens."""
    names = [f"replica-{first + i}" for i in range(count)]
    procs = [_launch(repository, redis_url, tmp / f"state-{n}", n, *flags) for n in names]
    return [Replica(n, p, []) for n, p in zip(names, procs, strict=True)]


class Traffic:
    """Unversioned requests spread over replicas (round robin) on a thread; records errors and answers."""

    def __init__(self, replicas: list[Replica], models: list[str]) -> None:
        self.replicas = list(replicas)
        self.models = models
        self.errors: list[str] = []
        self.answers: list[tuple[str, str]] = []  # (model, version)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def remove(self, replica: Replica) -> None:
        """Send nothing more to `replica` (returns once a request to it can no longer be in flight)."""
        with self._lock:
            self.replicas = [r for r in self.replicas if r is not replica]

    def _run(self) -> None:
        i = 0
        rng = random.Random(0)
        while not self._stop.is_set():
            with self._lock:
                replica, model = self.replicas[i % len(self.replicas)], self.models[i % len(self.models)]
                i += 1
                try:
                    features = [rng.gauss(0.0, 1.0) for _ in range(8)]
                    self.answers.append((model, replica.infer(model, key=f"k{i}", features=features)))
                except Exception as exc:
                    self.errors.append(f"{replica.name} {model}: {exc}")
            time.sleep(0.002)
