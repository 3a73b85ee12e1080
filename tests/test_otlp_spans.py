"""Tessera's OTLP span payload against the standard exporter's encoder, decoded by the official classes."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common._internal import _encode_attributes
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SpanExportResult

from server import tracing
from server.observation import RequestObservation, TraceParent
from server.otlp_spans import SpanEncoder


class _Capture:
    def __init__(self) -> None:
        self.spans: list[Any] = []

    def export(self, spans: Any) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


def _request(parent: TraceParent | None, status: int, request_id: str, batch: tuple[int, int] | None
             ) -> RequestObservation:
    obs = RequestObservation("grpc", parent)
    obs.traced, obs.trace_id, obs.span_id = True, parent.trace_id if parent else 0xABC, 0x1234
    obs.model, obs.version, obs.routing, obs.rows, obs.request_id = "tabular", "2", "candidate", 3, request_id
    obs.batch, obs.batch_run, obs.enqueued_ns = batch, (obs.start_ns + 50, 10, 3, 1), obs.start_ns + 10
    obs.served_ns, obs.status = obs.start_ns + 90, status
    if status >= 400:
        obs.error, obs.reason = "InvalidInput", "shape [1, 7] is not [-1, 8]"
    return obs


def _records() -> list[Any]:
    parent = TraceParent(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, True, "vendor=opaque,other=1")
    return [
        tracing._TracedRequest(_request(parent, 200, "req-1", (0x77, 0x88)), 10**6),
        tracing._TracedRequest(_request(None, 400, "", None), 10**6),
        tracing._TracedBatch((0x99, 0x98), [(0xABC, 0x1234), (0x0AF7651916CD43DD8448EB211C80319C, 0x55)], 4, 2,
                             (100, 200, 300, 400), "tabular", "2"),
        tracing._TracedShadow([(0xABC, 0x1234)], 500, 600, "tabular", 3, False),
    ]


def test_the_payload_decodes_to_what_the_standard_encoder_makes_of_the_same_spans() -> None:
    resource = Resource.create({"service.name": "tessera-test", "deployment.replicas": 3})
    ids = iter(range(1, 1000))
    spans: list[Any] = []
    for record in _records():
        record.spans(1_700_000_000_000_000_000, lambda _bits: next(ids), spans)
    assert [s.name for s in spans] == ["queue", "encode", "infer", "queue", "infer", "batch", "model_run", "shadow"]

    sent: list[bytes] = []
    assert tracing._WireSink(resource, lambda data: sent.append(data) or True).export(spans)
    captured = _Capture()
    assert tracing._SdkSink(resource, captured).export(spans)
    ours = ExportTraceServiceRequest.FromString(sent[0])
    standard = ExportTraceServiceRequest.FromString(encode_spans(captured.spans).SerializeToString())
    assert ours == standard
    infer = ours.resource_spans[0].scope_spans[0].spans[2]
    assert infer.trace_state == "vendor=opaque,other=1"
    assert {kv.key: kv.value.string_value for kv in infer.links[0].attributes} == {"tessera.link": "batch"}
    failed = ours.resource_spans[0].scope_spans[0].spans[4]
    assert failed.status.code == 2 and failed.status.message == "InvalidInput: shape [1, 7] is not [-1, 8]"


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**40, -1, -(2**63), True, False, 0.25, "", "é" * 200])
def test_attribute_values_of_every_kind_and_length_decode_as_the_standard_encoder_writes_them(value: Any) -> None:
    span = ExportTraceServiceRequest.FromString(SpanEncoder({}, "t").request([SpanEncoder({}, "t").span(
        SpanEncoder.name_field("s"), 1, 2, 0, False, 1, 3, 4, [SpanEncoder({}, "t").attribute("k", value)])]))
    decoded = span.resource_spans[0].scope_spans[0].spans[0].attributes
    assert list(decoded) == list(_encode_attributes({"k": value}))  # the standard encoder's, for reference
