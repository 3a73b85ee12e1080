"""Structured request logs: one JSON line per (sampled) inference request, errors always, no tensor contents.

The request path appends a tuple of the request's figures to a bounded deque (when full the line is
dropped and counted); a writer thread formats the lines with orjson and writes them to stdout,
stderr or a file a batch at a time, so neither formatting nor I/O runs on the event loop.
"""

from __future__ import annotations

import itertools
import logging
import random
import sys
import threading
import uuid
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson
from prometheus_client import CollectorRegistry, Counter

from .observation import RequestObservation

__all__ = ["FIELDS", "RequestLog"]

logger = logging.getLogger(__name__)

FIELDS = ("time", "request_id", "trace_id", "model", "version", "routing", "protocol", "status", "error",
          "reason", "e2e_ms", "queue_ms", "compute_ms", "rows", "batch_size", "batch_requests", "caller")
"""The keys of every line, in order (README "Request logs" says what each holds)."""

_Line = tuple[Any, ...]


class RequestLog:
    """Sampled JSON request lines, written off the event loop. `start` the writer, `stop` to flush."""

    def __init__(self, destination: str, *, sample_ratio: float = 1.0, queue_size: int = 10_000,
                 registry: CollectorRegistry | None = None, flush_interval_s: float = 0.1) -> None:
        self.destination = destination
        self._ratio = sample_ratio
        self._limit = queue_size
        self._interval = flush_interval_s
        self._lines: deque[_Line] = deque()
        self._random = random.Random()
        self._prefix = uuid.uuid4().hex[:8]
        self._seq = itertools.count(1)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._out: IO[bytes] | None = None
        self.written = Counter("tessera_request_log_lines", "Request log lines written.", registry=registry)
        self.dropped = Counter("tessera_request_log_dropped", "Request log lines dropped: the writer was behind.",
                               registry=registry)

    # -- request path (event loop) ---------------------------------------------------------------
    def record(self, obs: RequestObservation, now_ns: int) -> None:
        """Queue the request's line if sampled (errors always); never blocks or raises."""
        if obs.status < 400 and self._ratio < 1.0 and self._random.random() >= self._ratio:
            return
        if len(self._lines) >= self._limit:
            self.dropped.inc()
            return
        self._lines.append((
            obs.start_wall_ns, obs.request_id or f"{self._prefix}-{next(self._seq)}", obs.trace_id_hex, obs.model,
            obs.version, obs.routing, obs.protocol, obs.status, obs.error, obs.reason, now_ns - obs.start_ns,
            obs.queue_ns, obs.compute_ns, obs.rows, obs.batch_rows, obs.batch_requests, obs.caller))

    # -- writer thread ---------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._out = _open(self.destination)
        self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Write what is queued and close the file (blocking: call it off the event loop)."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        if self._out is not None and self.destination not in ("-", "stdout", "stderr"):
            self._out.close()
        self._out = None

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._drain()
        self._drain()

    def _drain(self) -> None:
        out = self._out
        if out is None or not self._lines:
            return
        chunk = bytearray()
        count = 0
        while self._lines:
            chunk += format_line(self._lines.popleft())
            count += 1
        try:
            out.write(chunk)
            out.flush()
        except OSError as exc:
            logger.warning("request log: could not write %d lines: %s", count, exc)
            self.dropped.inc(count)
            return
        self.written.inc(count)


def format_line(line: _Line) -> bytes:
    """One JSON line from a queued tuple (times in milliseconds, `time` in ISO 8601 UTC)."""
    (start_ns, request_id, trace_id, model, version, routing, protocol, status, error, reason, e2e_ns, queue_ns,
     compute_ns, rows, batch_rows, batch_requests, caller) = line
    when = datetime.fromtimestamp(start_ns / 1e9, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    return orjson.dumps({
        "time": when, "request_id": request_id, "trace_id": trace_id, "model": model, "version": version,
        "routing": routing, "protocol": protocol, "status": status, "error": error, "reason": reason,
        "e2e_ms": round(e2e_ns / 1e6, 3), "queue_ms": round(queue_ns / 1e6, 3),
        "compute_ms": round(compute_ns / 1e6, 3), "rows": rows, "batch_size": batch_rows,
        "batch_requests": batch_requests, "caller": caller,
    }, option=orjson.OPT_APPEND_NEWLINE)


def _open(destination: str) -> IO[bytes]:
    if destination in ("-", "stdout"):
        return sys.stdout.buffer
    if destination == "stderr":
        return sys.stderr.buffer
    path = Path(destination)
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "ab", buffering=0)
