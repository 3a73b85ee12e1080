"""`--workers N`: one scrape of the shared port shows the whole process group, counters adding up."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import port_for
from prometheus_client.mmap_dict import MmapedDict

from ..sample_models import make_models
from .replicas import FEATURES, LISTENING, ROOT


def _scrape(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def _total(text: str, name: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE))


def _served_by(path: Path) -> float:
    """Successful requests one worker recorded in its own file."""
    return sum(value for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path))
               if json.loads(key)[1] == "tessera_request_success_total")


def test_one_scrape_of_any_worker_counts_every_workers_requests(tmp_path):
    make_models.make_tabular(tmp_path / "repo")
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_999999.db").write_bytes(b"left by an earlier run")  # must not count
    http_port, grpc_port = port_for.select_random(), port_for.select_random()
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "serve", "--model-repository", str(tmp_path / "repo"), "--host",
         "127.0.0.1", "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--workers", "2",
         "--drift", "false", "--state-dir", str(tmp_path / "state"), "--drain-timeout-s", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT),
             "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
    assert proc.stdout is not None
    started, deadline = 0, time.monotonic() + 90
    while started < 2 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        started += bool(LISTENING.search(line))
        assert line or proc.poll() is None, "server exited"
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    try:
        assert started == 2
        body = orjson.dumps({"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32",
                                         "data": FEATURES}]})
        sent = 300
        for _ in range(sent):  # a new connection each time: SO_REUSEPORT spreads them over the workers
            conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
            conn.request("POST", "/v2/models/tabular/infer", body=body)
            assert conn.getresponse().status == 200
            conn.close()
        # Each worker moves its request figures into its file once a second (METRICS_FLUSH_INTERVAL_S).
        deadline = time.monotonic() + 5
        while True:
            per_worker = [_served_by(path) for path in metrics_dir.glob("counter_*.db")]
            if sum(per_worker) == sent or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert len(per_worker) == 2 and all(per_worker), per_worker  # both served; the stale file went
        assert sum(per_worker) == sent
        for _ in range(6):  # whichever worker answers the scrape
            text = _scrape(http_port)
            assert _total(text, "tessera_request_success_total") == sent
            assert _total(text, "tessera_request_duration_seconds_count") == sent
            assert _total(text, "tessera_model_ready") == 1  # a gauge: min over the live workers
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        proc.stdout.close()
