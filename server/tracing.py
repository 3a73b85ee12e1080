"""OpenTelemetry spans (request, queue, batch, model run, encode, shadow), off when nothing is configured.

Only `Tracing.create` imports OpenTelemetry (the `otel` extra), so a server without tracing never
loads it. Sampling is decided here, before anything else: a caller's sampled flag is followed
(parent-based), a request without one is sampled by ratio; an unsampled request costs one random
draw: no ids, no span, no response header. A sampled request gets its ids when it starts; when it
ends, the event loop hands one record of the times it measured to a BatchSpanProcessor (its own
thread, OTEL_BSP_* honoured; each entry of its queue is one traced request, batch or shadow run, i.e.
two or three spans). On that thread the records become the SDK's ReadableSpans, finished, rather
than spans opened and closed through the SDK's Span (~100 us of locks, context and attribute checks
per request), and go to the standard OTLP exporter, which reads the standard OTEL_EXPORTER_OTLP_*
variables (endpoint, headers, timeout, compression, certificates).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from .observation import RequestObservation, TraceParent

__all__ = ["Tracing", "otel_configured"]

logger = logging.getLogger(__name__)

_TRACE_ID_LIMIT = (1 << 64) - 1


def otel_configured(env: dict[str, str]) -> bool:
    """Whether the standard OTEL_* variables ask for trace export (the CLI's `--tracing auto`)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return bool(env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


class _Sdk:
    """The OpenTelemetry names spans are built from, imported once by `Tracing.create`."""

    def __init__(self, resource: Any) -> None:
        from opentelemetry import trace as api
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        self.api = api
        self.readable_span = ReadableSpan
        self.resource = resource
        self.scope = InstrumentationScope("tessera")
        self.sampled = api.TraceFlags(api.TraceFlags.SAMPLED)
        self.server, self.internal = api.SpanKind.SERVER, api.SpanKind.INTERNAL
        self.unset = api.Status(api.StatusCode.UNSET)
        self.bits = random.Random().getrandbits  # the export thread's own: child span ids

    def context(self, trace_id: int, span_id: int, trace_state: Any = None) -> Any:
        return self.api.SpanContext(trace_id, span_id, False, self.sampled, trace_state)

    def span(self, name: str, context: Any, parent: Any, kind: Any, start_ns: int, end_ns: int,
             attributes: dict[str, Any], status: Any = None, links: Sequence[Any] = ()) -> Any:
        return self.readable_span(name, context, parent, self.resource, kind=kind, status=status or self.unset,
                                  links=links, start_time=start_ns, end_time=end_ns,
                                  instrumentation_scope=self.scope, attributes=attributes)

    def child(self, parent: Any, name: str, start_ns: int, end_ns: int) -> Any:
        context = self.context(parent.trace_id, self.bits(64) or 1, parent.trace_state)
        return self.span(name, context, parent, self.internal, start_ns, end_ns, {})


class _Traced:
    """What the event loop hands the span processor for one traced request, batch or shadow copy: the
    figures the request path measured, turned into the SDK's spans by `_SpanBuilder` on the processor's
    thread. Building ReadableSpans on the loop cost it ~70 us per traced request and left some thirty
    SDK objects per request waiting in the queue; this is one object."""

    __slots__ = ()
    context: Any = None
    """Read by BatchSpanProcessor.on_end, which queues only sampled spans: set to a sampled SpanContext."""

    def build(self, sdk: _Sdk, offset_ns: int, out: list[Any]) -> None:
        raise NotImplementedError


class _TracedRequest(_Traced):
    """The request span (a child of the caller's span, linked to its batch) and its queue and encode spans."""

    __slots__ = ("end_ns", "obs")

    def __init__(self, obs: RequestObservation, end_ns: int) -> None:
        self.obs, self.end_ns = obs, end_ns

    def build(self, sdk: _Sdk, offset_ns: int, out: list[Any]) -> None:
        api, obs = sdk.api, self.obs
        parent = obs.parent
        remote = state = None
        if parent is not None:
            state = api.TraceState.from_header([parent.tracestate]) if parent.tracestate else None
            remote = api.SpanContext(parent.trace_id, parent.span_id, True, sdk.sampled, state)
        context = sdk.context(obs.trace_id, obs.span_id, state)
        if obs.dispatched_ns:  # the wait is the span's duration: no attribute repeats it
            out.append(sdk.child(context, "queue", obs.enqueued_ns + offset_ns, obs.dispatched_ns + offset_ns))
        if obs.served_ns and obs.status < 400:
            out.append(sdk.child(context, "encode", obs.served_ns + offset_ns, self.end_ns + offset_ns))
        status = api.Status(api.StatusCode.ERROR, f"{obs.error}: {obs.reason}") if obs.status >= 400 else None
        links = (api.Link(sdk.context(*obs.batch), {"tessera.link": "batch"}),) if obs.batch is not None else ()
        # The batch's size lives on the batch span this one links to; a request id only when the
        # client sent one. Every attribute is a protobuf message the exporter builds in Python.
        attributes: dict[str, Any] = {
            "tessera.protocol": obs.protocol, "tessera.model": obs.model, "tessera.version": obs.version,
            "tessera.routing": obs.routing, "tessera.status": obs.status, "tessera.rows": obs.rows}
        if obs.request_id:
            attributes["tessera.request_id"] = obs.request_id
        out.append(sdk.span("infer", context, remote, sdk.server, obs.start_ns + offset_ns, self.end_ns + offset_ns,
                            attributes, status, links))


class _TracedBatch(_Traced):
    """A batch span (its own trace) linked to each traced member, with the model run as its child."""

    __slots__ = ("ids", "members", "model", "requests", "rows", "times", "version")

    def __init__(self, ids: tuple[int, int], members: list[tuple[int, int]], rows: int, requests: int,
                 times: tuple[int, int, int, int], model: str, version: str) -> None:
        self.ids, self.members, self.rows, self.requests = ids, members, rows, requests
        self.times, self.model, self.version = times, model, version

    def build(self, sdk: _Sdk, offset_ns: int, out: list[Any]) -> None:
        dispatched, run_start, run_end, end = self.times
        batch = sdk.context(*self.ids)
        links = [sdk.api.Link(sdk.context(*member)) for member in self.members]
        out.append(sdk.span("batch", batch, None, sdk.internal, dispatched + offset_ns, end + offset_ns, {
            "tessera.model": self.model, "tessera.version": self.version, "tessera.batch.rows": self.rows,
            "tessera.batch.requests": self.requests}, links=links))
        out.append(sdk.child(batch, "model_run", run_start + offset_ns, run_end + offset_ns))


class _TracedShadow(_Traced):
    """One span per shadow copy of a traced request, each in a trace of its own linked to the request span
    it copies."""

    __slots__ = ("candidate", "copied", "end_ns", "model", "ok", "start_ns")

    def __init__(self, copied: list[tuple[int, int]], start_ns: int, end_ns: int, model: str, candidate: int,
                 ok: bool) -> None:
        self.copied, self.start_ns, self.end_ns = copied, start_ns, end_ns
        self.model, self.candidate, self.ok = model, candidate, ok

    def build(self, sdk: _Sdk, offset_ns: int, out: list[Any]) -> None:
        api = sdk.api
        status = None if self.ok else api.Status(api.StatusCode.ERROR, "shadow copy failed")
        attributes = {"tessera.model": self.model, "tessera.version": str(self.candidate),
                      "tessera.routing": "shadow"}
        for ids in self.copied:
            context = sdk.context(sdk.bits(128) or 1, sdk.bits(64) or 1)
            out.append(sdk.span("shadow", context, None, sdk.internal, self.start_ns + offset_ns,
                                self.end_ns + offset_ns, attributes, status, (api.Link(sdk.context(*ids)),)))


def _span_builder_class() -> Any:
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class SpanBuilder(SpanExporter):
        """Between the BatchSpanProcessor and the OTLP exporter, on the processor's thread: turns each
        batch of `_Traced` records into the SDK's ReadableSpans and hands them to the exporter."""

        def __init__(self, exporter: Any, sdk: _Sdk) -> None:
            self._exporter, self._sdk = exporter, sdk

        def export(self, records: Sequence[Any]) -> Any:  # _Traced records, not the SDK's spans
            # Span times are Unix ns; the request path keeps perf_counter's, converted here in one go.
            offset_ns = time.time_ns() - time.perf_counter_ns()
            spans: list[Any] = []
            for record in records:
                try:
                    record.build(self._sdk, offset_ns, spans)
                except Exception:  # one bad record must not cost the batch its other spans
                    logger.exception("could not build the spans of a traced request")
            return self._exporter.export(spans) if spans else SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            self._exporter.shutdown()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return bool(self._exporter.force_flush(timeout_millis))

    return SpanBuilder


class Tracing:
    """Decides sampling and hands the figures of sampled requests to the span processor; one per process,
    built by `create`."""

    def __init__(self, exporter: Any, resource: Any, ratio: float, parent_based: bool) -> None:
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        sdk = _Sdk(resource)
        _Traced.context = sdk.context(1, 1)  # any sampled context: the processor checks the flag only
        self._processor: Any = BatchSpanProcessor(_span_builder_class()(exporter, sdk))
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
            from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: F401
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
