"""OpenTelemetry spans (request, queue, batch, model run, encode, shadow), off when nothing is configured.

Only `Tracing.create` imports OpenTelemetry (the `otel` extra), so a server without tracing never
loads it. Sampling is decided here, before anything else: a caller's sampled flag is followed
(parent-based), a request without one is sampled by ratio; an unsampled request costs one random
draw: no ids, no span, no response header. A sampled request gets its ids when it starts; when it
ends, the event loop hands one record of the times it measured to a BatchSpanProcessor (its own
thread, OTEL_BSP_* honoured; each entry of its queue is one traced request, batch or shadow run, i.e.
two or three spans), rather than opening and closing spans through the SDK's Span (~100 us of locks,
context and attribute checks per request). On that thread the records become spans, finished, and
go to the standard OTLP exporter, which reads the standard OTEL_EXPORTER_OTLP_* variables (endpoint,
headers, timeout, compression, certificates): to the OTLP/HTTP exporter's client as the protobuf
payload its own encoder would have made (`otlp_spans`, several times cheaper), to any other
exporter (OTLP over gRPC, or one given) as the SDK's ReadableSpans through its `export`.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from . import otlp_spans
from .observation import RequestObservation, TraceParent
from .writer_thread import in_slices

__all__ = ["Tracing", "otel_configured"]

logger = logging.getLogger(__name__)

# The span processor's thread builds and encodes a batch (up to 512 records, ~1,300 spans) a slice at a
# time and hands the GIL back to the event loop in between, as the request log's writer does: whole
# batches kept the loop waiting for the GIL for milliseconds. With every request traced, the slices took
# gRPC's p99 from 6.3 ms to 2.7 ms (0.8 ms untraced) at the same throughput; slices a quarter of these
# gained little more (2.4 ms) for ~6% more CPU per request (BENCHMARKS.md).
_RECORDS_PER_SLICE = 64
_SPANS_PER_SLICE = 256

_TRACE_ID_LIMIT = (1 << 64) - 1


def otel_configured(env: dict[str, str]) -> bool:
    """Whether the standard OTEL_* variables ask for trace export (the CLI's `--tracing auto`)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return bool(env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


class _Span(NamedTuple):
    """One finished span, as the records below describe it, before either sink turns it into what the
    exporter takes."""

    name: str
    trace_id: int
    span_id: int
    parent_id: int
    """0: a root span."""
    remote_parent: bool
    server: bool
    """SpanKind SERVER (the request), else INTERNAL."""
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    links: tuple[tuple[int, int, dict[str, Any] | None], ...] = ()
    error: str = ""
    """The status description of a failed span; empty: status unset."""
    trace_state: str = ""


class _Traced:
    """What the event loop hands the span processor for one traced request, batch or shadow run: the
    figures the request path measured, made into spans on the processor's thread (building them on
    the loop cost it ~70 us per traced request and left some thirty SDK objects per request waiting
    in the processor's queue; this is one object)."""

    __slots__ = ()
    context: Any = None
    """Read by BatchSpanProcessor.on_end, which queues only sampled spans: set to a sampled SpanContext."""

    def spans(self, offset_ns: int, bits: Callable[[int], int], out: list[_Span]) -> None:
        """Append this record's spans; `offset_ns` turns perf_counter times into Unix ns, `bits` draws ids."""
        raise NotImplementedError


class _TracedRequest(_Traced):
    """The request span (a child of the caller's span, linked to its batch) and its queue and encode spans."""

    __slots__ = ("end_ns", "obs")

    def __init__(self, obs: RequestObservation, end_ns: int) -> None:
        self.obs, self.end_ns = obs, end_ns

    def spans(self, offset_ns: int, bits: Callable[[int], int], out: list[_Span]) -> None:
        obs = self.obs
        parent = obs.parent
        trace, span = obs.trace_id, obs.span_id
        state = _trace_state(parent.tracestate) if parent is not None and parent.tracestate else ""
        if obs.dispatched_ns:  # the wait is the span's duration: no attribute repeats it
            out.append(_Span("queue", trace, bits(64) or 1, span, False, False, obs.enqueued_ns + offset_ns,
                             obs.dispatched_ns + offset_ns, {}, trace_state=state))
        if obs.served_ns and obs.status < 400:
            out.append(_Span("encode", trace, bits(64) or 1, span, False, False, obs.served_ns + offset_ns,
                             self.end_ns + offset_ns, {}, trace_state=state))
        # The batch's size lives on the batch span this one links to; a request id only when the
        # client sent one.
        attributes: dict[str, Any] = {
            "tessera.protocol": obs.protocol, "tessera.model": obs.model, "tessera.version": obs.version,
            "tessera.routing": obs.routing, "tessera.status": obs.status, "tessera.rows": obs.rows}
        if obs.request_id:
            attributes["tessera.request_id"] = obs.request_id
        out.append(_Span(
            "infer", trace, span, parent.span_id if parent is not None else 0, parent is not None, True,
            obs.start_ns + offset_ns, self.end_ns + offset_ns, attributes,
            ((*obs.batch, _BATCH_LINK),) if obs.batch is not None else (),
            f"{obs.error}: {obs.reason}" if obs.status >= 400 else "", state))


class _TracedBatch(_Traced):
    """A batch span (its own trace) linked to each traced member, with the model run as its child."""

    __slots__ = ("ids", "members", "model", "requests", "rows", "times", "version")

    def __init__(self, ids: tuple[int, int], members: list[tuple[int, int]], rows: int, requests: int,
                 times: tuple[int, int, int, int], model: str, version: str) -> None:
        self.ids, self.members, self.rows, self.requests = ids, members, rows, requests
        self.times, self.model, self.version = times, model, version

    def spans(self, offset_ns: int, bits: Callable[[int], int], out: list[_Span]) -> None:
        dispatched, run_start, run_end, end = self.times
        trace, span = self.ids
        out.append(_Span("batch", trace, span, 0, False, False, dispatched + offset_ns, end + offset_ns, {
            "tessera.model": self.model, "tessera.version": self.version, "tessera.batch.rows": self.rows,
            "tessera.batch.requests": self.requests}, tuple((t, s, None) for t, s in self.members)))
        out.append(_Span("model_run", trace, bits(64) or 1, span, False, False, run_start + offset_ns,
                         run_end + offset_ns, {}))


class _TracedShadow(_Traced):
    """One span per shadow copy of a traced request, each in a trace of its own linked to the request span
    it copies."""

    __slots__ = ("candidate", "copied", "end_ns", "model", "ok", "start_ns")

    def __init__(self, copied: list[tuple[int, int]], start_ns: int, end_ns: int, model: str, candidate: int,
                 ok: bool) -> None:
        self.copied, self.start_ns, self.end_ns = copied, start_ns, end_ns
        self.model, self.candidate, self.ok = model, candidate, ok

    def spans(self, offset_ns: int, bits: Callable[[int], int], out: list[_Span]) -> None:
        attributes = {"tessera.model": self.model, "tessera.version": str(self.candidate),
                      "tessera.routing": "shadow"}
        for trace, span in self.copied:
            out.append(_Span("shadow", bits(128) or 1, bits(64) or 1, 0, False, False, self.start_ns + offset_ns,
                             self.end_ns + offset_ns, attributes, ((trace, span, None),),
                             "" if self.ok else "shadow copy failed"))


_BATCH_LINK = {"tessera.link": "batch"}


def _trace_state(header: str) -> str:
    """The caller's tracestate as the SDK keeps it (invalid entries dropped), in W3C form."""
    from opentelemetry.trace import TraceState

    return ",".join(f"{k}={v}" for k, v in TraceState.from_header([header]).items())


class _WireSink:
    """Spans as the OTLP/protobuf payload (`otlp_spans`), sent by the standard HTTP exporter's client."""

    def __init__(self, resource: Any, send: Callable[[bytes], bool]) -> None:
        self._encoder = otlp_spans.SpanEncoder(resource.attributes, "tessera", None, resource.schema_url or "")
        self._names: dict[str, bytes] = {}
        self._send = send

    def export(self, spans: list[_Span]) -> bool:
        encoder, names = self._encoder, self._names
        attribute, unique, link_attribute = encoder.attribute, encoder.unique_attribute, encoder.link_attribute
        parts = []
        for span in in_slices(spans, _SPANS_PER_SLICE):  # the loop waits for the GIL one slice at most
            name = names.get(span.name) or names.setdefault(span.name, encoder.name_field(span.name))
            # A request id is new each time: caching it would only evict the values that repeat.
            attributes = [unique(k, v) if k == "tessera.request_id" else attribute(k, v)
                          for k, v in span.attributes.items()]
            links = [encoder.link(t, s, b"".join(link_attribute(k, v) for k, v in (a or {}).items()))
                     for t, s, a in span.links]
            status = encoder.status(otlp_spans.STATUS_ERROR, span.error) if span.error else otlp_spans.UNSET_STATUS
            parts.append(encoder.span(
                name, span.trace_id, span.span_id, span.parent_id, span.remote_parent,
                otlp_spans.KIND_SERVER if span.server else otlp_spans.KIND_INTERNAL, span.start_ns, span.end_ns,
                attributes, links, status, span.trace_state))
        return self._send(encoder.request(parts))


class _SdkSink:
    """Spans as the SDK's ReadableSpans, for any other exporter (OTLP over gRPC, or one given)."""

    def __init__(self, resource: Any, exporter: Any) -> None:
        from opentelemetry import trace as api
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.sdk.trace.export import SpanExportResult
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        self._api, self._readable, self._exporter = api, ReadableSpan, exporter
        self._resource, self._scope = resource, InstrumentationScope("tessera")
        self._sampled = api.TraceFlags(api.TraceFlags.SAMPLED)
        self._unset = api.Status(api.StatusCode.UNSET)
        self._success = SpanExportResult.SUCCESS

    def export(self, spans: list[_Span]) -> bool:
        api, sampled = self._api, self._sampled
        built = []
        for span in spans:
            state = api.TraceState.from_header([span.trace_state]) if span.trace_state else None
            context = api.SpanContext(span.trace_id, span.span_id, False, sampled, state)
            parent = api.SpanContext(span.trace_id, span.parent_id, span.remote_parent, sampled, state) \
                if span.parent_id else None
            links = [api.Link(api.SpanContext(t, s, False, sampled), a) for t, s, a in span.links]
            status = api.Status(api.StatusCode.ERROR, span.error) if span.error else self._unset
            built.append(self._readable(
                span.name, context, parent, self._resource, kind=api.SpanKind.SERVER if span.server else
                api.SpanKind.INTERNAL, status=status, links=links, start_time=span.start_ns, end_time=span.end_ns,
                instrumentation_scope=self._scope, attributes=span.attributes))
        return bool(self._exporter.export(built) == self._success)


def _http_client_send(exporter: Any) -> Callable[[bytes], bool] | None:
    """How the standard OTLP/HTTP exporter sends a serialized payload (its client: retries, compression,
    headers, TLS and timeout from the OTEL_EXPORTER_OTLP_* variables), when this exporter is that one
    and has it; None otherwise, and spans then go through its public `export` as ReadableSpans."""
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:  # pragma: no cover - depends on the environment
        return None
    client_export = getattr(getattr(exporter, "_client", None), "export", None)
    if type(exporter) is not OTLPSpanExporter or not callable(client_export):
        return None
    limit = getattr(exporter, "_max_request_size", 64 << 20)

    def send(data: bytes) -> bool:
        if getattr(exporter, "_shutdown", False):
            return False
        if 0 < limit < len(data):
            logger.warning("dropping %d bytes of spans: over the exporter's max_request_size (%d)", len(data), limit)
            return False
        return bool(client_export(data).success)

    return send


def _span_builder_class() -> Any:
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class SpanBuilder(SpanExporter):
        """Between the BatchSpanProcessor and the OTLP exporter, on the processor's thread: turns each
        batch of `_Traced` records into spans and hands them to the exporter."""

        def __init__(self, exporter: Any, resource: Any) -> None:
            self._exporter = exporter
            send = _http_client_send(exporter)
            self._sink: _WireSink | _SdkSink = _WireSink(resource, send) if send is not None \
                else _SdkSink(resource, exporter)
            self._bits = random.Random().getrandbits  # the export thread's own: child span ids

        def export(self, records: Sequence[Any]) -> Any:  # _Traced records, not the SDK's spans
            # Span times are Unix ns; the request path keeps perf_counter's, converted here in one go.
            offset_ns = time.time_ns() - time.perf_counter_ns()
            spans: list[_Span] = []
            for record in in_slices(records, _RECORDS_PER_SLICE):
                try:
                    record.spans(offset_ns, self._bits, spans)
                except Exception:  # one bad record must not cost the batch its other spans
                    logger.exception("could not build the spans of a traced request")
            if spans and not self._sink.export(spans):
                return SpanExportResult.FAILURE
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            self._exporter.shutdown()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return bool(self._exporter.force_flush(timeout_millis))

    return SpanBuilder


class Tracing:
    """Decides sampling and hands the figures of sampled requests to the span processor; one per process,
    built by `create`."""

    def __init__(self, exporter: Any, resource: Any, ratio: float, parent_based: bool) -> None:
        from opentelemetry import trace as api
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        # Any sampled context: the processor checks the flag only.
        _Traced.context = api.SpanContext(1, 1, False, api.TraceFlags(api.TraceFlags.SAMPLED))
        self._processor: Any = BatchSpanProcessor(_span_builder_class()(exporter, resource))
        self._emit: Callable[[Any], None] = self._processor.on_end  # takes our _Traced records
        self._ratio = max(0.0, min(1.0, ratio))
        self._bound = round(self._ratio * (_TRACE_ID_LIMIT + 1))
        self._parent_based = parent_based
        self._random = random.Random()
        self._draw = self._random.random
        self._bits = self._random.getrandbits

    @classmethod
    def create(cls, *, ratio: float, parent_based: bool = True, protocol: str = "http/protobuf",
               service_name: str | None = None, exporter: Any = None) -> Tracing:
        """A tracer exporting through OTLP (`protocol` http/protobuf or grpc) or through `exporter`.

        Raises RuntimeError when the OpenTelemetry SDK or the exporter is not installed.
        """
        try:
            from opentelemetry.sdk.resources import Resource
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise RuntimeError("tracing needs the OpenTelemetry SDK: pip install 'tessera[otel]'") from exc
        if exporter is None:
            exporter = _otlp_exporter(protocol)
        attributes = {"service.name": service_name} if service_name else {}
        resource = Resource.create(attributes)
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": "tessera"}))
        return cls(exporter, _fixed_hash(resource), ratio, parent_based)

    def shutdown(self) -> None:
        """Flush what is buffered and stop the export thread (blocking: call it off the loop)."""
        self._processor.shutdown()

    def force_flush(self, timeout_ms: int = 5000) -> bool:
        return bool(self._processor.force_flush(timeout_ms))

    # -- request path ----------------------------------------------------------------------------
    def sample(self, parent: TraceParent | None) -> tuple[int, int] | None:
        """Whether a request (continuing `parent`, if any) is traced: then its (trace id, span id), the
        caller's trace id or a new one; None when not sampled."""
        if parent is None:
            if self._draw() >= self._ratio:  # unsampled: this draw is all it costs
                return None
            return self._bits(128) or 1, self._bits(64) or 1
        if self._parent_based:
            if not parent.sampled:
                return None
        elif (parent.trace_id & _TRACE_ID_LIMIT) >= self._bound:
            return None
        return parent.trace_id, self._bits(64) or 1

    def end_request(self, obs: RequestObservation, now_ns: int) -> None:
        """The traced request ended: its spans (request, queue wait, encode) are built off the loop."""
        self._emit(_TracedRequest(obs, now_ns))

    def record_batch(self, members: Sequence[RequestObservation], rows: int, requests: int, dispatched_ns: int,
                     run_start_ns: int, run_end_ns: int, end_ns: int, model: str, version: str) -> None:
        """A batch span (its own trace) linked to each traced member, with the model run as its child;
        each member's request span links back to the batch when it ends."""
        ids = (self._bits(128) or 1, self._bits(64) or 1)
        for m in members:
            m.batch = ids
        self._emit(_TracedBatch(ids, [(m.trace_id, m.span_id) for m in members], rows, requests,
                                (dispatched_ns, run_start_ns, run_end_ns, end_ns), model, version))

    # -- shadow copies -----------------------------------------------------------------------------
    def record_shadow(self, copied: Sequence[RequestObservation], start_ns: int, end_ns: int, model: str,
                      candidate: int, ok: bool) -> None:
        """One span per shadow copy of a traced request, each in a trace of its own linked to the request
        span it copies."""
        self._emit(_TracedShadow([(o.trace_id, o.span_id) for o in copied], start_ns, end_ns, model, candidate,
                                 ok))


def _fixed_hash(resource: Any) -> Any:
    """`resource` with its hash computed once. The exporter groups every span by its resource, and the
    SDK's Resource hashes by JSON-encoding its attributes each time: ~17% of encoding a span here.
    Ours never changes after start-up."""
    from opentelemetry.sdk.resources import Resource

    class FixedHashResource(Resource):
        def __init__(self, original: Resource) -> None:
            super().__init__(original.attributes, original.schema_url)
            self._fixed_hash = hash(original)

        def __hash__(self) -> int:
            return self._fixed_hash

    return FixedHashResource(resource)


def _otlp_exporter(protocol: str) -> Any:
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise RuntimeError("OTLP over gRPC needs opentelemetry-exporter-otlp-proto-grpc; "
                               "or set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf") from exc
        return OTLPSpanExporter()
    if protocol != "http/protobuf":
        raise RuntimeError(f"OTLP protocol {protocol!r} is not supported: use http/protobuf or grpc")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter()
