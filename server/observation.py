"""Per-request observation: the hooks the transports, the dataplane and the batcher call for traces and
payload logs, and the request log the transports write a line to.

`ACTIVE` is None unless tracing or payload logging is configured; every observation hook on the request
path sits behind an `if observation.ACTIVE is not None` check, so a server without them pays one global
lookup per hook and imports nothing of OpenTelemetry. The current request's `RequestObservation` lives in
a ContextVar of the request's task (each transport runs a request in its own task).

`REQUEST_LOG` is None unless request logs are on. A line is made from what a request returns (the
response's `served` record, or the error with its `route`), not from an observation: a server logging
every request but tracing none makes no observation at all. That is what keeps the log's cost on the loop
to a timestamp and one tuple (BENCHMARKS.md, "Ninth session").
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

from .auth import Credentials
from .errors import TesseraError, status_for
from .tensors import BatchRun, InferResponse

__all__ = ["ACTIVE", "REQUEST_LOG", "LineLog", "LoggedTrace", "Observability", "RequestObservation", "TraceParent",
           "Tracer", "batch_executed", "begin_grpc", "begin_http", "current", "fail", "failure_fields",
           "grpc_traceparent", "http_traceparent", "install", "parse_traceparent", "shadow_ran",
           "uninstall"]

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
_TRACEPARENT_BYTES, _TRACESTATE_BYTES = TRACEPARENT.encode(), TRACESTATE.encode()


class Tracer(Protocol):
    """server.tracing.Tracing, as the hooks use it (this module sits below it)."""

    def sample(self, parent: TraceParent | None) -> tuple[int, int] | None: ...

    def end_request(self, obs: RequestObservation, now_ns: int) -> None: ...

    def record_batch(self, members: Sequence[RequestObservation], rows: int, requests: int, dispatched_ns: int,
                     run_start_ns: int, run_end_ns: int, end_ns: int, model: str, version: str) -> None: ...

    def record_shadow(self, copied: Sequence[RequestObservation], start_ns: int, end_ns: int, model: str,
                      candidate: int, ok: bool) -> None: ...


LoggedTrace = int | str | bytes | None
"""What a request log line's trace id is made from: the trace id of an observed request, else the
`traceparent` value the caller sent, if any (parsed by the log's writer, off the loop)."""


class LineLog(Protocol):
    """server.request_log.RequestLog, as the transports use it."""

    def served(self, start_ns: int, request_id: str, trace: LoggedTrace, response: InferResponse,
               protocol: str) -> None: ...

    def failed(self, start_ns: int, request_id: str, trace: LoggedTrace, model: str, error: BaseException,
               caller: str | None, creds: Credentials | None, protocol: str) -> None: ...


@dataclass(slots=True)
class Observability:
    """What is switched on in this process: any of tracing, request logs, payload logs."""

    tracing: Tracer | None = None
    request_log: LineLog | None = None
    payload_log: bool = False
    """Payload logging reads the request id and trace id of the current observation: with it on, every
    request is observed; otherwise only the traced ones are."""


ACTIVE: Observability | None = None
"""None unless tracing or payload logging is on: the one check every observation hook makes first."""

REQUEST_LOG: LineLog | None = None
"""The request log, None when off: the check the transports make."""

_INSTALLED: Observability | None = None
"""What `install` switched on last (ACTIVE alone does not say: it is None with request logs alone)."""

_EVERY_REQUEST = False
"""ACTIVE.payload_log, read once per request."""

_current: ContextVar[RequestObservation | None] = ContextVar("tessera_observation", default=None)
_ids = random.Random()


def install(observability: Observability) -> None:
    """Switch the hooks on for this process (App.start); `uninstall` switches them off again."""
    global ACTIVE, _EVERY_REQUEST, REQUEST_LOG, _INSTALLED
    ACTIVE = observability if observability.tracing or observability.payload_log else None
    _EVERY_REQUEST = observability.payload_log
    REQUEST_LOG = observability.request_log
    _INSTALLED = observability


def uninstall(observability: Observability | None = None) -> None:
    """Switch the hooks off; given `observability`, only if it is what is installed (a server stopping
    leaves another's hooks alone)."""
    global ACTIVE, _EVERY_REQUEST, REQUEST_LOG, _INSTALLED
    if observability is not None and observability is not _INSTALLED:
        return
    ACTIVE, _EVERY_REQUEST, REQUEST_LOG, _INSTALLED = None, False, None, None


@dataclass(frozen=True, slots=True)
class TraceParent:
    """A W3C trace context received from a caller."""

    trace_id: int
    span_id: int
    sampled: bool
    tracestate: str | None = None


def parse_traceparent(value: str | None, tracestate: str | None = None) -> TraceParent | None:
    """`00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`; None when absent or malformed (W3C: ignore it)."""
    if not value or len(value) < 55:
        return None
    parts = value.strip().split("-")
    if len(parts) < 4 or len(parts[0]) != 2 or parts[0] == "ff" or len(parts[1]) != 32 or len(parts[2]) != 16 \
            or len(parts[3]) != 2 or (parts[0] == "00" and len(parts) != 4):
        return None
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3], 16)
    except ValueError:
        return None
    if trace_id == 0 or span_id == 0:
        return None
    return TraceParent(trace_id, span_id, bool(flags & 1), tracestate or None)


def format_traceparent(trace_id: int, span_id: int, sampled: bool) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}"


def failure_fields(error: BaseException) -> tuple[int, str, str]:
    """(HTTP status, error class, reason) of a failed request, as spans and log lines name it; an error
    that is not Tessera's is an internal error, its text never shown."""
    if isinstance(error, TesseraError):
        return int(status_for(error)[1]), type(error).__name__, error.message
    return 500, "InternalError", "internal error"


class RequestObservation:
    """What one traced request did (or, with payload logging on, any request), filled in as it goes; its
    spans are made from it, and a payload record takes its request id and trace id.

    Slots, not a dict: the record is written field by field on the request path, and a slotted object is
    one allocation whose fields sit together."""

    __slots__ = ("batch", "batch_run", "done", "enqueued_ns", "error", "model", "parent", "protocol",
                 "reason", "request_id", "routing", "rows", "served_ns", "span_id", "start_ns", "status",
                 "trace_id", "traced", "version")

    request_id: str
    model: str
    version: str
    routing: str
    rows: int
    enqueued_ns: int
    """When it joined the batcher's queue (set for traced requests: their queue span)."""
    served_ns: int
    """When the dataplane had its outputs (set for traced requests: their encode span)."""
    batch_run: BatchRun | None
    """The batch it ran in, shared by the batch's members (set on traced requests: their queue span)."""
    status: int
    error: str
    reason: str
    done: bool
    traced: bool
    """Sampled: the request's spans are emitted when it ends, and the response names its trace."""
    trace_id: int
    """The trace id: the caller's, or the sampled trace's; 0 when there is none."""
    span_id: int
    """The request span's id when traced."""
    batch: tuple[int, int] | None
    """The (trace id, span id) of the batch this traced request joined (its request span links to it)."""

    def __init__(self, protocol: str, parent: TraceParent | None) -> None:
        self.protocol = protocol
        self.parent = parent
        self.start_ns = time.perf_counter_ns()
        self.trace_id = 0 if parent is None else parent.trace_id
        self.request_id = self.model = self.version = self.routing = self.error = self.reason = ""
        self.batch_run = self.batch = None
        self.rows = self.enqueued_ns = self.served_ns = self.span_id = 0
        self.status = 200
        self.done = self.traced = False

    # -- filled in by the dataplane and the batcher --------------------------------------------
    def routed(self, version: str, routing: str) -> None:
        """The dataplane resolved the model version (`routing`: stable, candidate or pinned), and the
        request then failed."""
        self.version, self.routing = version, routing

    def served(self, rows: int, version: str, routing: str) -> None:
        """The dataplane has the outputs (and what `routed` notes); what follows is the transport's encode."""
        self.rows, self.version, self.routing = rows, version, routing
        if self.traced:
            self.served_ns = time.perf_counter_ns()

    @property
    def dispatched_ns(self) -> int:
        return self.batch_run[0] if self.batch_run is not None else 0

    # -- ends ------------------------------------------------------------------------------------
    def finish(self) -> dict[str, str]:
        """The response is encoded: end the spans. Returns the response's trace headers (a `traceparent`
        naming the request span when the request was traced, else none)."""
        if not self.traced:
            return {}
        return self._end(time.perf_counter_ns())

    def failed(self, error: BaseException) -> dict[str, str]:
        """The request failed with `error` (as the transport maps it). Returns the trace headers."""
        self.status, self.error, self.reason = failure_fields(error)
        return self._end(time.perf_counter_ns())

    def _end(self, now_ns: int) -> dict[str, str]:
        if self.done:
            return {}
        self.done = True
        active = ACTIVE
        if not self.traced or active is None or active.tracing is None:  # no trace to point the caller to
            return {}
        active.tracing.end_request(self, now_ns)
        return {TRACEPARENT: format_traceparent(self.trace_id, self.span_id, True)}

    @property
    def trace_id_hex(self) -> str:
        return f"{self.trace_id:032x}" if self.trace_id else ""


def _begin(protocol: str, traceparent: str | None, tracestate: str | None) -> RequestObservation | None:
    active = ACTIVE
    if active is None:
        return None
    parent = parse_traceparent(traceparent, tracestate) if traceparent else None
    ids = active.tracing.sample(parent) if active.tracing is not None else None
    if ids is None and not _EVERY_REQUEST:  # unsampled, and nothing else wants it: not observed
        _current.set(None)  # whatever context this task inherited, its hooks see no observation
        return None
    obs = RequestObservation(protocol, parent)
    if ids is not None:
        obs.traced, obs.trace_id, obs.span_id = True, ids[0], ids[1]
    _current.set(obs)
    return obs


def http_traceparent(raw_headers: Sequence[tuple[bytes, bytes]]) -> bytes | None:
    """The `traceparent` an HTTP request's ASGI headers (lower-case byte names) carry (the last one counts),
    or None. A scan of the raw pairs, one comparison each: a Mapping's `get` of an absent header raises
    and catches a KeyError, which costs more than the rest of an unsampled request."""
    traceparent = None
    for key, value in raw_headers:
        if key == _TRACEPARENT_BYTES:
            traceparent = value
    return traceparent


def grpc_traceparent(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    """The `traceparent` in a gRPC call's invocation metadata (the last one counts), or None."""
    traceparent = None
    for key, value in metadata or ():
        if key == TRACEPARENT:
            traceparent = value
    return None if traceparent is None else str(traceparent)


def begin_http(raw_headers: Sequence[tuple[bytes, bytes]]) -> RequestObservation | None:
    """Start observing an HTTP request from its ASGI headers (call only when ACTIVE is not None); None when
    it is not observed. `tracestate` is looked for only beside a `traceparent`."""
    traceparent = http_traceparent(raw_headers)
    if traceparent is None:
        return _begin("http", None, None)
    # W3C: several tracestate fields are one list, in order.
    state = ",".join(v.decode("latin-1") for k, v in raw_headers if k == _TRACESTATE_BYTES)
    return _begin("http", traceparent.decode("latin-1"), state or None)


def begin_grpc(metadata: Sequence[tuple[str, Any]] | None) -> RequestObservation | None:
    """Start observing a gRPC request from its invocation metadata (call only when ACTIVE is not None);
    None when it is not observed."""
    traceparent = grpc_traceparent(metadata)
    if traceparent is None:
        return _begin("grpc", None, None)
    state = ",".join(str(v) for k, v in metadata or () if k == TRACESTATE)
    return _begin("grpc", traceparent, state or None)


def current() -> RequestObservation | None:
    """The observation of the request this task is serving, if any."""
    return _current.get()


def fail(error: BaseException) -> dict[str, str]:
    """The transport's error mapping: end the current request's observation with `error`, if one is open."""
    obs = _current.get()
    if obs is None or obs.done:
        return {}
    return obs.failed(error)


class BatchMember(Protocol):
    """What the batcher keeps of each request of a batch."""

    @property
    def observation(self) -> RequestObservation | None: ...

    @property
    def enqueued_ns(self) -> int: ...


def batch_executed(members: Sequence[BatchMember], run: BatchRun, run_start_ns: int, run_end_ns: int,
                   end_ns: int, model: str, version: str) -> None:
    """The batcher ran a batch: trace it, and note it on its traced members, if any member is traced."""
    traced: list[RequestObservation] = []
    for member in members:
        obs = member.observation
        if obs is not None and obs.traced:
            obs.batch_run, obs.enqueued_ns = run, member.enqueued_ns
            traced.append(obs)
    active = ACTIVE
    if traced and active is not None and active.tracing is not None:
        dispatched_ns, _, rows, requests = run
        active.tracing.record_batch(traced, rows, requests, dispatched_ns, run_start_ns, run_end_ns, end_ns,
                                    model, version)


def shadow_ran(copied: Sequence[RequestObservation | None], start_ns: int, end_ns: int, model: str,
               candidate: int, ok: bool) -> None:
    """The shadow mirror ran copies of `copied` requests on the candidate: trace the traced ones."""
    active = ACTIVE
    if active is None or active.tracing is None:
        return
    traced = [o for o in copied if o is not None and o.traced]
    if traced:
        active.tracing.record_shadow(traced, start_ns, end_ns, model, candidate, ok)
