"""Structured request logs: one JSON line per (sampled) inference request, errors always, no tensor contents.

The transport ends each request with `served` (the response's `served` record holds what the dataplane
knows) or `failed` (the error's `route` names the version it was routed to), which append the finished
request's figures, one tuple, to a bounded deque (when full the line is dropped and counted). Nothing
else of the request path is involved: no observation object, no context variable (the loop's share was
about half the log's cost while it went through them; BENCHMARKS.md, "Ninth session").

A writer thread formats the lines and writes them to stdout, stderr or a file a batch at a time, so
neither formatting nor I/O runs on the event loop; it formats a slice of lines at a time and hands the
GIL back to the loop in between (server.writer_thread says why). Whatever can wait for it does: the
caller's `traceparent` is parsed by the writer, and a refused caller's credentials are described by it.
A server pinned to one core pays for the writer's CPU all the same, so a line is one f-string over
pre-escaped pieces (the model/version/routing/protocol/caller fragment and the batch's fragment are
cached, the time's date part is made once a second) rather than a dict per request through a JSON
encoder.
"""

from __future__ import annotations

import itertools
import logging
import random
import sys
import time
import uuid
from collections import deque
from datetime import UTC, datetime
from json.encoder import encode_basestring
from pathlib import Path
from typing import IO, Any

from prometheus_client import CollectorRegistry, Counter

from .auth import Credentials
from .observation import LoggedTrace, failure_fields, parse_traceparent
from .tensors import BatchRun, InferResponse
from .writer_thread import WriterThread, slice_sizes

__all__ = ["FIELDS", "LineFormatter", "RequestLog"]

logger = logging.getLogger(__name__)

FIELDS = ("time", "request_id", "trace_id", "model", "version", "routing", "protocol", "status", "error",
          "reason", "e2e_ms", "queue_ms", "compute_ms", "rows", "batch_size", "batch_requests", "caller")
"""The keys of every line, in order (README "Request logs" says what each holds)."""

_CACHE_LIMIT = 4096  # distinct (model, version, routing, protocol, caller) kept pre-escaped
_LINES_PER_SLICE = 160  # ~0.3 ms of formatting between two hand-overs of the GIL
_NO_BATCH: BatchRun = (0, 0, 0, 0)  # a request that never reached a batch

Line = tuple[int, int, str, LoggedTrace, str, str, str, str, int, str, str, int, int, "BatchRun | None",
             "str | None", Any]
"""A finished request's figures, as `served` and `failed` queue them: start and end (perf_counter ns),
request id, trace id (or the caller's traceparent), model, version, routing, protocol, status,
error, reason, queue ns, rows, the batch run, the caller's name, and the credentials presented when there
is no name (described by the writer: hashing a token is not the loop's work)."""


class RequestLog:
    """Sampled JSON request lines, written off the event loop. `start` the writer, `stop` to flush."""

    def __init__(self, destination: str, *, sample_ratio: float = 1.0, queue_size: int = 10_000,
                 registry: CollectorRegistry | None = None, flush_interval_s: float = 0.1) -> None:
        self.destination = destination
        self._ratio = sample_ratio
        self._limit = queue_size
        self._lines: deque[Line] = deque()
        self._random = random.Random()
        self._formatter = LineFormatter()
        self._writer = WriterThread("request-log", self._drain, flush_interval_s)
        self._out: IO[bytes] | None = None
        self.written = Counter("tessera_request_log_lines", "Request log lines written.", registry=registry)
        self.dropped = Counter("tessera_request_log_dropped", "Request log lines dropped: the writer was behind.",
                               registry=registry)

    # -- request path (event loop) ---------------------------------------------------------------
    def served(self, start_ns: int, request_id: str, trace: LoggedTrace, response: InferResponse,
               protocol: str) -> None:
        """Queue the line of a request answered now that started at `start_ns` (perf_counter), if sampled.
        Never blocks or raises."""
        if self._ratio < 1.0 and self._random.random() >= self._ratio:
            return
        if len(self._lines) >= self._limit:
            self.dropped.inc()
            return
        rows, queue_ns, routing, caller, run = response.served or _NOT_SERVED
        self._lines.append((start_ns, time.perf_counter_ns(), request_id, trace, response.model_name,
                            response.model_version, routing, protocol, 200, "", "", queue_ns, rows, run, caller,
                            None))

    def failed(self, start_ns: int, request_id: str, trace: LoggedTrace, model: str, error: BaseException,
               caller: str | None, creds: Credentials | None, protocol: str) -> None:
        """Queue the line of a request that failed now with `error` (always: errors are not sampled).
        `caller` is the authorized principal's name, None when it failed before it was authorized;
        `creds` what it presented (then described off the loop, never a token)."""
        if len(self._lines) >= self._limit:
            self.dropped.inc()
            return
        status, name, reason = failure_fields(error)
        version, routing = getattr(error, "route", None) or ("", "")
        self._lines.append((start_ns, time.perf_counter_ns(), request_id, trace, model, version, routing, protocol,
                            status, name, reason, 0, 0, None, caller, creds if caller is None else None))

    # -- writer thread ---------------------------------------------------------------------------
    def start(self) -> None:
        if self._writer.running:
            return
        self._out = _open(self.destination)
        self._writer.start()

    def stop(self) -> None:
        """Write what is queued and close the file (blocking: call it off the event loop)."""
        if not self._writer.running:
            return
        self._writer.stop()
        if self._out is not None and self.destination not in ("-", "stdout", "stderr"):
            self._out.close()
        self._out = None

    def _drain(self) -> None:
        out = self._out
        if out is None or not self._lines:
            return
        lines = self._lines
        # The wall clock of a perf_counter time, taken once a drain (every flush interval).
        offset_ns = time.time_ns() - time.perf_counter_ns()
        line, take = self._formatter.line, lines.popleft
        parts: list[str] = []
        # What is queued now, a slice at a time: lines queued meanwhile wait for the next drain.
        for count in slice_sizes(len(lines), _LINES_PER_SLICE):
            parts += [line(take(), offset_ns) for _ in range(count)]
        try:
            out.write("".join(parts).encode())
            out.flush()
        except OSError as exc:
            logger.warning("request log: could not write %d lines: %s", len(parts), exc)
            self.dropped.inc(len(parts))
            return
        self.written.inc(len(parts))


class LineFormatter:
    """Formats request lines (the writer thread's; not thread-safe). Times in milliseconds, `time` in
    ISO 8601 UTC with microseconds; strings escaped as JSON."""

    def __init__(self) -> None:
        self._id_prefix = uuid.uuid4().hex[:8]
        self._seq = itertools.count(1)
        self._second = -1
        self._date = ""
        self._served: dict[tuple[str, str, str, str, str | None], tuple[str, str]] = {}
        self._run = _NO_BATCH
        self._compute, self._batch = _batch_fields(_NO_BATCH)

    def line(self, line: Line, offset_ns: int) -> str:
        """One JSON line (with its newline) of a finished request; `offset_ns` turns perf_counter into Unix ns."""
        (start, end, request_id, trace_id, model, version, routing, protocol, status, error, reason, queue_ns, rows,
         run, caller, creds) = line
        if trace_id is None:  # neither observed nor sent by the caller
            trace_id = 0
        elif not isinstance(trace_id, int):  # the caller's traceparent
            trace_id = _caller_trace_id(trace_id)
        second, micros = divmod((start + offset_ns) // 1000, 1_000_000)
        if second != self._second:
            self._second = second
            self._date = datetime.fromtimestamp(second, UTC).strftime('{"time":"%Y-%m-%dT%H:%M:%S.')
        if caller is None and creds is not None:
            caller = str(creds.describe())  # failed before it had a name: what it presented, never a token
        key = (model, version, routing, protocol, caller)
        served = self._served.get(key) or self._fragments(key)
        if run is None:
            run = _NO_BATCH
        if run is not self._run:  # a batch's members are queued together: its fields are made once
            self._run = run
            self._compute, self._batch = _batch_fields(run)
        # A generated id is hex and digits: nothing to escape.
        request_id = encode_basestring(request_id) if request_id else f'"{self._id_prefix}-{next(self._seq)}"'
        failure = _NO_FAILURE if not error and not reason else \
            f'"error":{encode_basestring(error)},"reason":{encode_basestring(reason)}'
        return (f'{self._date}{micros:06d}Z","request_id":{request_id},'
                f'"trace_id":"{f"{trace_id:032x}" if trace_id else ""}",{served[0]},"status":{status},{failure},'
                f'"e2e_ms":{(end - start) / 1e6:.3f},"queue_ms":{queue_ns / 1e6:.3f},'
                f'{self._compute},"rows":{rows},{self._batch},{served[1]}}}\n')

    def _fragments(self, key: tuple[str, str, str, str, str | None]) -> tuple[str, str]:
        """The pre-escaped model/version/routing/protocol fragment and caller fragment of `key`, cached."""
        if len(self._served) >= _CACHE_LIMIT:
            self._served.clear()
        caller = key[4]
        fragments = self._served[key] = (
            ",".join(f'"{name}":{encode_basestring(value)}'
                     for name, value in zip(("model", "version", "routing", "protocol"), key[:4], strict=True)),
            f'"caller":{"null" if caller is None else encode_basestring(caller)}')
        return fragments


_NO_FAILURE = '"error":"","reason":""'
_NOT_SERVED = (0, 0, "", None, None)  # a response not made by the dataplane


def _caller_trace_id(traceparent: str | bytes) -> int:
    parent = parse_traceparent(traceparent.decode("latin-1") if isinstance(traceparent, bytes) else traceparent)
    return parent.trace_id if parent is not None else 0


def _batch_fields(run: BatchRun) -> tuple[str, str]:
    _, compute_ns, rows, requests = run
    return f'"compute_ms":{compute_ns / 1e6:.3f}', f'"batch_size":{rows},"batch_requests":{requests}'


def _open(destination: str) -> IO[bytes]:
    if destination in ("-", "stdout"):
        return sys.stdout.buffer
    if destination == "stderr":
        return sys.stderr.buffer
    path = Path(destination)
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "ab", buffering=0)
