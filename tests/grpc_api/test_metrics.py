"""The gRPC transport's tallies on /metrics: limits crossed by peers, and open connections."""

from __future__ import annotations

import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

from server.grpc_api.h2 import frames as f

from ..conftest import make_models


def _scrape(http_url: str) -> str:
    with urllib.request.urlopen(f"http://{http_url}/metrics", timeout=10) as answer:
        return str(answer.read().decode())


def _sample(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def test_an_idle_connection_closed_by_the_server_is_on_metrics(tmp_path: Path, server_factory: Any) -> None:
    make_models.make_samples(tmp_path / "repo")
    server = server_factory(tmp_path / "repo", grpc_max_connection_idle_s=0.4, drift_enabled=False)
    crossed = 'tessera_grpc_limits_crossed_total{limit="idle_timeout_s"}'
    assert _sample(_scrape(server.http_url), crossed) is None
    with socket.create_connection(("127.0.0.1", server.app.grpc_port), timeout=10) as sock:
        sock.sendall(f.PREFACE + f.settings_frame([]))
        deadline = time.monotonic() + 3
        while _sample(_scrape(server.http_url), "tessera_grpc_connections") != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _sample(_scrape(server.http_url), "tessera_grpc_connections") == 1
        sock.settimeout(5)
        while sock.recv(1 << 16):  # SETTINGS, its ACK, then GOAWAY and the close
            pass
    deadline = time.monotonic() + 3
    text = _scrape(server.http_url)
    while (_sample(text, crossed), _sample(text, "tessera_grpc_connections")) != (1, 0) and (
            time.monotonic() < deadline):
        time.sleep(0.05)
        text = _scrape(server.http_url)
    assert _sample(text, crossed) == 1
    assert _sample(text, "tessera_grpc_connections") == 0
