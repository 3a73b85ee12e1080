"""OpenTelemetry spans (request, queue, batch, model run, encode, shadow), off when nothing is configured.

Only `Tracing.create` imports OpenTelemetry (the `otel` extra), so a server without tracing never
loads it. Sampling is decided here, before any span exists: a caller's sampled flag is followed
(parent-based), a request without one is sampled by ratio; an unsampled request costs a random
draw: no span, no response header. Spans are exported by a
BatchSpanProcessor (its own thread) through the standard OTLP exporter, which reads the standard
OTEL_EXPORTER_OTLP_* variables (endpoint, headers, timeout, compression, certificates).
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


class Tracing:
    """Starts and ends the spans of observed requests; one per process, built by `create`."""

    def __init__(self, tracer: Any, provider: Any, api: Any, ratio: float, parent_based: bool) -> None:
        self._tracer = tracer
        self._provider = provider
        self._api = api  # the opentelemetry.trace module
        self._bound = round(max(0.0, min(1.0, ratio)) * (_TRACE_ID_LIMIT + 1))
        self._parent_based = parent_based
        self._random = random.Random()
        # Span times are Unix nanoseconds; the request path keeps perf_counter_ns.
        self._offset_ns = time.time_ns() - time.perf_counter_ns()

    @classmethod
    def create(cls, *, ratio: float, parent_based: bool = True, protocol: str = "http/protobuf",
               service_name: str | None = None, exporter: Any = None) -> Tracing:
        """A tracer exporting through OTLP (`protocol` http/protobuf or grpc) or through `exporter`.

        Raises RuntimeError when the OpenTelemetry SDK or the exporter is not installed.
        """
        try:
            from opentelemetry import trace as api
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk.trace.sampling import ALWAYS_ON
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise RuntimeError("tracing needs the OpenTelemetry SDK: pip install 'tessera[otel]'") from exc
        if exporter is None:
            exporter = _otlp_exporter(protocol)
        attributes = {"service.name": service_name} if service_name else {}
        resource = Resource.create(attributes)
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": "tessera"}))
        # Sampling is decided in start_request; what reaches the SDK is always recorded.
        provider = TracerProvider(resource=resource, sampler=ALWAYS_ON)
        provider.add_span_processor(BatchSpanProcessor(exporter))
        return cls(provider.get_tracer("tessera"), provider, api, ratio, parent_based)

    def shutdown(self) -> None:
        """Flush what is buffered and stop the export thread (blocking: call it off the loop)."""
        self._provider.shutdown()

    def force_flush(self, timeout_ms: int = 5000) -> bool:
        return bool(self._provider.force_flush(timeout_ms))

    def _ns(self, perf_ns: int) -> int:
        return perf_ns + self._offset_ns

    # -- request path ----------------------------------------------------------------------------
    def _sampled(self, parent: TraceParent | None, trace_id: int) -> bool:
        if parent is not None and self._parent_based:
            return parent.sampled
        return (trace_id & _TRACE_ID_LIMIT) < self._bound

    def start_request(self, obs: RequestObservation) -> None:
        """Decide sampling and, when sampled, start the request span (a child of the caller's span)."""
        parent = obs.parent
        trace_id = parent.trace_id if parent is not None else self._random.getrandbits(128) or 1
        if not self._sampled(parent, trace_id):  # no span, no id: the request costs this draw only
            return
        api = self._api
        context = None
        if parent is not None:
            state = api.TraceState.from_header([parent.tracestate]) if parent.tracestate else None
            remote = api.SpanContext(parent.trace_id, parent.span_id, is_remote=True,
                                     trace_flags=api.TraceFlags(api.TraceFlags.SAMPLED), trace_state=state)
            context = api.set_span_in_context(api.NonRecordingSpan(remote))
        span = self._tracer.start_span("infer", context=context, kind=api.SpanKind.SERVER,
                                       start_time=obs.start_wall_ns, attributes={"tessera.protocol": obs.protocol})
        ctx = span.get_span_context()
        obs.span, obs.traced, obs.trace_id, obs.span_id = span, True, ctx.trace_id, ctx.span_id

    def end_request(self, obs: RequestObservation, now_ns: int) -> None:
        """End the request span with its children: queue wait and encode (times already measured)."""
        api = self._api
        span = obs.span
        parent = api.set_span_in_context(span)
        if obs.dispatched_ns:
            queue_ms = (obs.dispatched_ns - obs.enqueued_ns) / 1e6
            queue = self._tracer.start_span("queue", context=parent, start_time=self._ns(obs.enqueued_ns),
                                            attributes={"tessera.queue_ms": queue_ms})
            queue.end(end_time=self._ns(obs.dispatched_ns))
        if obs.served_ns and obs.status < 400:
            encode = self._tracer.start_span("encode", context=parent, start_time=self._ns(obs.served_ns))
            encode.end(end_time=self._ns(now_ns))
        span.set_attributes({
            "tessera.model": obs.model, "tessera.version": obs.version, "tessera.routing": obs.routing,
            "tessera.request_id": obs.request_id, "tessera.status": obs.status, "tessera.rows": obs.rows,
            "tessera.batch.rows": obs.batch_rows, "tessera.batch.requests": obs.batch_requests,
        })
        if obs.status >= 400:
            span.set_status(api.Status(api.StatusCode.ERROR, f"{obs.error}: {obs.reason}"))
        span.end(end_time=self._ns(now_ns))

    def record_batch(self, members: Sequence[RequestObservation], rows: int, requests: int, dispatched_ns: int,
                     run_start_ns: int, run_end_ns: int, end_ns: int, model: str, version: str) -> None:
        """A batch span (its own trace) linked to each traced member, with the model run as its child;
        each member's request span links back to the batch."""
        api = self._api
        links = [api.Link(m.span.get_span_context()) for m in members]
        batch = self._tracer.start_span("batch", links=links, start_time=self._ns(dispatched_ns), attributes={
            "tessera.model": model, "tessera.version": version, "tessera.batch.rows": rows,
            "tessera.batch.requests": requests})
        run = self._tracer.start_span("model_run", context=api.set_span_in_context(batch),
                                      start_time=self._ns(run_start_ns), attributes={"tessera.batch.rows": rows})
        run.end(end_time=self._ns(run_end_ns))
        batch.end(end_time=self._ns(end_ns))
        batch_context = batch.get_span_context()
        for m in members:
            m.span.add_link(batch_context, {"tessera.link": "batch"})

    # -- shadow copies -----------------------------------------------------------------------------
    def record_shadow(self, copied: Sequence[Any], start_ns: int, end_ns: int, model: str, candidate: int,
                      ok: bool) -> None:
        """One span per shadow copy, each in a trace of its own linked to the request span it copies.

        `copied` holds the copies' request span contexts (None for untraced requests)."""
        api = self._api
        for context in copied:
            if context is None:
                continue
            span = self._tracer.start_span("shadow", links=[api.Link(context)], start_time=self._ns(start_ns),
                                           attributes={"tessera.model": model, "tessera.version": str(candidate),
                                                       "tessera.routing": "shadow"})
            if not ok:
                span.set_status(api.Status(api.StatusCode.ERROR, "shadow copy failed"))
            span.end(end_time=self._ns(end_ns))


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
