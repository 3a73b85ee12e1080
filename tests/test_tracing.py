"""The span processor's thread builds and encodes spans a slice at a time, handing the GIL back to the
event loop in between (a whole batch of 512 records held it for milliseconds), and loses nothing by it."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SpanExportResult

from server import tracing, writer_thread

from .test_otlp_spans import _Capture, _records


def test_spans_are_built_a_slice_of_records_at_a_time_and_every_one_reaches_the_exporter(
        monkeypatch: pytest.MonkeyPatch) -> None:
    handed: list[int] = []
    monkeypatch.setattr(writer_thread, "hand_over", lambda: handed.append(len(captured.spans)))
    captured = _Capture()
    builder = tracing._span_builder_class()(captured, Resource.create({"service.name": "t"}))
    records = _records() * (tracing._RECORDS_PER_SLICE + 3)  # four records: eight spans
    assert builder.export(records) == SpanExportResult.SUCCESS
    assert len(captured.spans) == 8 * len(records) // 4
    assert len(handed) == len(records) // tracing._RECORDS_PER_SLICE and set(handed) == {0}  # before the export


def test_the_payload_is_encoded_a_slice_of_spans_at_a_time_and_holds_every_span(
        monkeypatch: pytest.MonkeyPatch) -> None:
    handed: list[int] = []
    monkeypatch.setattr(writer_thread, "hand_over", lambda: handed.append(1))
    spans: list[Any] = []
    ids = iter(range(1, 10**6))
    for record in _records() * 40:
        record.spans(1_700_000_000_000_000_000, lambda _bits: next(ids), spans)
    sent: list[bytes] = []
    assert tracing._WireSink(Resource.create({}), lambda data: sent.append(data) or True).export(spans)
    [payload] = sent
    decoded = ExportTraceServiceRequest.FromString(payload).resource_spans[0].scope_spans[0].spans
    assert [s.span_id for s in decoded] == [s.span_id.to_bytes(8, "big") for s in spans]
    assert len(handed) == len(spans) // tracing._SPANS_PER_SLICE > 0
