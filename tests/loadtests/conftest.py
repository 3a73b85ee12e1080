"""The stall server, started once per session in its own process on an ephemeral loopback port."""

from __future__ import annotations

import ipaddress
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


_GUARD = {"on": False}


def _refuse_non_loopback(event: str, args: tuple[object, ...]) -> None:
    if not _GUARD["on"] or event != "socket.connect":
        return
    address = args[1]
    if isinstance(address, tuple) and address and isinstance(address[0], str):
        try:
            loopback = ipaddress.ip_address(address[0].split("%")[0]).is_loopback
        except ValueError:
            return  # a name: resolved to an address before it is connected, and checked then
        if not loopback:
            raise RuntimeError(f"a load test tried to connect to {address[0]}: tests send traffic to loopback only")


sys.addaudithook(_refuse_non_loopback)


@pytest.fixture(autouse=True)
def loopback_only() -> Iterator[None]:
    """While a load test runs, a Python-level connect to a non-loopback address raises (the audit
    hook sees this process's sockets; the generator processes and C clients get loopback targets
    from the tests themselves)."""
    _GUARD["on"] = True
    yield
    _GUARD["on"] = False
