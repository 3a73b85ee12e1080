"""OpenTelemetry spans (request, queue, batch, model run, encode, shadow), off when nothing is configured.

Only `Tracing.create` imports OpenTelemetry (the `otel` extra), so a server without tracing never
loads it. Sampling is decided here, before anything else: a caller's sampled flag is followed
(parent-based), a request without one is sampled by ratio; an unsampled request costs one random
draw: no ids, no span, no response header. A sampled request gets its ids when it starts and its
spans, finished, when it ends: they are built as the SDK's ReadableSpan with the times the request
path already measured, rather than opened and closed through the SDK's Span (which costs ~100 us of
locks, context and attribute checks per request), and handed to a BatchSpanProcessor (its own thread,
OTEL_BSP_* honoured) and the standard OTLP exporter, which reads the standard OTEL_EXPORTER_OTLP_*
variables (endpoint, headers, timeout, compression, certificates).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
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

    def __init__(self) -> None:
        from opentelemetry import trace as api
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        self.api = api
        self.readable_span = ReadableSpan
        self.scope = InstrumentationScope("tessera")
        self.sampled = api.TraceFlags(api.TraceFlags.SAMPLED)
        self.server, self.internal = api.SpanKind.SERVER, api.SpanKind.INTERNAL


class Tracing:
    """Decides sampling and builds the spans of sampled requests; one per process, built by `create`."""

    def __init__(self, processor: Any, resource: Any, ratio: float, parent_based: bool) -> None:
        self._processor = processor
        self._emit = processor.on_end
        self._resource = resource
        self._sdk = _Sdk()
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
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise RuntimeError("tracing needs the OpenTelemetry SDK: pip install 'tessera[otel]'") from exc
        if exporter is None:
            exporter = _otlp_exporter(protocol)
        attributes = {"service.name": service_name} if service_name else {}
        resource = Resource.create(attributes)
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": "tessera"}))
        return cls(BatchSpanProcessor(exporter), _fixed_hash(resource), ratio, parent_based)

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
        """Emit the request span (a child of the caller's span, linked to its batch) and its children:
        queue wait and encode, from the times the request path measured."""
        sdk, api = self._sdk, self._sdk.api
        offset = time.time_ns() - time.perf_counter_ns()  # span times are Unix ns; the path keeps perf_counter
        parent = obs.parent
        remote = state = None
        if parent is not None:
            state = api.TraceState.from_header([parent.tracestate]) if parent.tracestate else None
            remote = api.SpanContext(parent.trace_id, parent.span_id, True, sdk.sampled, state)
        context = api.SpanContext(obs.trace_id, obs.span_id, False, sdk.sampled, state)
        if obs.dispatched_ns:  # the wait is the span's duration: no attribute repeats it
            self._child(context, "queue", obs.enqueued_ns + offset, obs.dispatched_ns + offset, None)
        if obs.served_ns and obs.status < 400:
            self._child(context, "encode", obs.served_ns + offset, now_ns + offset, None)
        status = api.Status(api.StatusCode.ERROR, f"{obs.error}: {obs.reason}") if obs.status >= 400 \
            else api.Status(api.StatusCode.UNSET)
        links = (api.Link(obs.batch, {"tessera.link": "batch"}),) if obs.batch is not None else ()
        # The batch's size lives on the batch span this one links to; a request id only when the
        # client sent one. Every attribute is a protobuf message the exporter builds in Python.
        attributes: dict[str, Any] = {
            "tessera.protocol": obs.protocol, "tessera.model": obs.model, "tessera.version": obs.version,
            "tessera.routing": obs.routing, "tessera.status": obs.status, "tessera.rows": obs.rows}
        if obs.request_id:
            attributes["tessera.request_id"] = obs.request_id
        self._emit(sdk.readable_span(
            "infer", context, remote, self._resource, kind=sdk.server, status=status, links=links,
            start_time=obs.start_ns + offset, end_time=now_ns + offset, instrumentation_scope=sdk.scope,
            attributes=attributes))

    def record_batch(self, members: Sequence[RequestObservation], rows: int, requests: int, dispatched_ns: int,
                     run_start_ns: int, run_end_ns: int, end_ns: int, model: str, version: str) -> None:
        """A batch span (its own trace) linked to each traced member, with the model run as its child;
        each member's request span links back to the batch when it ends."""
        sdk, api = self._sdk, self._sdk.api
        offset = time.time_ns() - time.perf_counter_ns()
        batch = api.SpanContext(self._bits(128) or 1, self._bits(64) or 1, False, sdk.sampled)
        links = [api.Link(api.SpanContext(m.trace_id, m.span_id, False, sdk.sampled)) for m in members]
        self._emit(sdk.readable_span(
            "batch", batch, None, self._resource, links=links, kind=sdk.internal, start_time=dispatched_ns + offset,
            end_time=end_ns + offset, instrumentation_scope=sdk.scope, attributes={
                "tessera.model": model, "tessera.version": version, "tessera.batch.rows": rows,
                "tessera.batch.requests": requests}))
        self._child(batch, "model_run", run_start_ns + offset, run_end_ns + offset, None)
        for m in members:
            m.batch = batch

    def _child(self, parent: Any, name: str, start_ns: int, end_ns: int, attributes: dict[str, Any] | None
               ) -> None:
        sdk = self._sdk
        context = sdk.api.SpanContext(parent.trace_id, self._bits(64) or 1, False, sdk.sampled, parent.trace_state)
        self._emit(sdk.readable_span(name, context, parent, self._resource, kind=sdk.internal,
                                     start_time=start_ns, end_time=end_ns, instrumentation_scope=sdk.scope,
                                     attributes=attributes or {}))

    # -- shadow copies -----------------------------------------------------------------------------
    def record_shadow(self, copied: Sequence[RequestObservation], start_ns: int, end_ns: int, model: str,
                      candidate: int, ok: bool) -> None:
        """One span per shadow copy of a traced request, each in a trace of its own linked to the request
        span it copies."""
        sdk, api = self._sdk, self._sdk.api
        offset = time.time_ns() - time.perf_counter_ns()
        status = api.Status(api.StatusCode.UNSET) if ok else api.Status(api.StatusCode.ERROR, "shadow copy failed")
        for obs in copied:
            context = api.SpanContext(self._bits(128) or 1, self._bits(64) or 1, False, sdk.sampled)
            link = api.Link(api.SpanContext(obs.trace_id, obs.span_id, False, sdk.sampled))
            self._emit(sdk.readable_span(
                "shadow", context, None, self._resource, links=(link,), kind=sdk.internal, status=status,
                start_time=start_ns + offset, end_time=end_ns + offset, instrumentation_scope=sdk.scope,
                attributes={"tessera.model": model, "tessera.version": str(candidate), "tessera.routing": "shadow"}))


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
