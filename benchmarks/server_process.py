"""Servers under test as child processes: pinned to cores with taskset, ready-checked, stopped cleanly.

Only loopback ports are used; each server is stopped by its own process group id, never by name.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

__all__ = ["ServerProcess", "free_port", "http_ready", "tcp_ready"]


def source_tree(rev: str, workdir: Path) -> Path:
    """The server package as it was at git revision `rev`, extracted under `workdir` (run it with that cwd,
    and this checkout's environment): a `before` to measure a change against, in the same run."""
    tree = workdir / f"before-{rev}"
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    root = Path(__file__).resolve().parents[1]
    archive = subprocess.run(["git", "-C", str(root), "archive", rev, "server"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def free_port() -> int:
    """A port free on 127.0.0.1 right now (the server binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_ready(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    return check


def tcp_ready(port: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return True
        except OSError:
            return False

    return check


class ServerProcess:
    """`with ServerProcess(argv, cpus="0", ready=..., log=path) as server:` runs the server for the block."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        ready: Callable[[], bool],
        log: Path,
        cpus: str = "",
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        startup_timeout_s: float = 120.0,
    ) -> None:
        self.argv = ["taskset", "-c", cpus, *argv] if cpus and shutil.which("taskset") else list(argv)
        self.ready, self.log, self.env, self.cwd = ready, log, env, cwd
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ServerProcess:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env={**os.environ, **(self.env or {})},
                start_new_session=True,
            )
        deadline = time.monotonic() + self.startup_timeout_s
        while not self.ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"server {' '.join(self.argv)} did not become ready:\n{tail}")
            time.sleep(0.2)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM to the server's own process group, SIGKILL after `grace_s`."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=grace_s)
