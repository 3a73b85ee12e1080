"""The stall server, started once per session in its own process on an ephemeral loopback port."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

STALL_SERVER = Path(__file__).with_name("stall_server.py")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def stall_server_port() -> Iterator[int]:
    """Port of a gRPC server that stalls 500 ms once per model name, on that name's 400th request."""
    proc = subprocess.Popen([sys.executable, str(STALL_SERVER), "--stall-at", "400", "--stall-ms", "500"],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the server prints its port once listening
        assert line.startswith("PORT "), f"stall server did not start: {line!r}"
        yield int(line.split()[1])
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
