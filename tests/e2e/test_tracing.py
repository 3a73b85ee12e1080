"""Traces end to end: the real OTLP/HTTP exporter sends to a receiver on loopback that decodes the real
protobuf payloads (opentelemetry-proto's ExportTraceServiceRequest); a traced request over each
transport continues the caller's trace, and a batch span links to every request in the batch.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import secrets
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import orjson
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from server._generated import grpc_service_pb2 as pb
from server.observation import parse_traceparent

from ..sample_models import make_models

pytestmark = pytest.mark.timeout(120)


@dataclass
class Span:
    name: str
    trace_id: str
    span_id: str
    parent: str
    links: list[tuple[str, str]]
    attributes: dict[str, Any]
    status: int


@dataclass
class Receiver:
    url: str
    spans: list[Span] = field(default_factory=list)
    payloads: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_for(self, predicate: Callable[[list[Span]], bool], timeout: float = 20) -> list[Span]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                spans = list(self.spans)
            if predicate(spans):
                return spans
            time.sleep(0.05)
        raise AssertionError(f"spans never arrived; got {[(s.name, s.trace_id) for s in spans]}")

    def of_trace(self, trace_id: str) -> dict[str, Span]:
        with self.lock:
            return {s.name: s for s in self.spans if s.trace_id == trace_id}


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


@pytest.fixture
def otlp_receiver() -> Iterator[Receiver]:
    """An OTLP/HTTP endpoint (POST /v1/traces, application/x-protobuf) decoding what arrives."""
    receiver = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            request = ExportTraceServiceRequest.FromString(body)
            with receiver.lock:
                receiver.payloads += 1
                for resource_spans in request.resource_spans:
                    for scope_spans in resource_spans.scope_spans:
                        for s in scope_spans.spans:
                            receiver.spans.append(Span(
                                s.name, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(),
                                [(link.trace_id.hex(), link.span_id.hex()) for link in s.links],
                                {a.key: _value(a.value) for a in s.attributes}, s.status.code))
            reply = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield receiver
    server.shutdown()
    server.server_close()


@pytest.fixture
def traced_server(otlp_receiver: Receiver, server_factory: Any, tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> Any:
    """A server whose standard OTLP exporter points at the receiver; its `tabular` waits 200 ms to batch."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", otlp_receiver.url)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    make_models.make_tabular(tmp_path)
    config = tmp_path / "tabular" / "config.pbtxt"
    config.write_text(config.read_text().replace("max_queue_delay_microseconds: 500",
                                                 "max_queue_delay_microseconds: 200000"))
    return server_factory(tmp_path, tracing_enabled=True, trace_sample_ratio=1.0, drift_enabled=False)


def _caller() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def _http_infer(url: str, headers: dict[str, str], rows: int = 1) -> tuple[dict[str, Any], dict[str, str]]:
    body = {"inputs": [{"name": "features", "shape": [rows, 8], "datatype": "FP32",
                        "data": np.ones(rows * 8).tolist()}]}
    request = urllib.request.Request(f"http://{url}/v2/models/tabular/infer", data=orjson.dumps(body),
                                     headers={"Content-Type": "application/json", **headers}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return orjson.loads(response.read()), dict(response.headers)


def _request_spans_ok(receiver: Receiver, trace_id: str, caller_span: str, protocol: str) -> Span:
    spans = receiver.wait_for(lambda found: {"infer", "queue", "encode"} <= {
        s.name for s in found if s.trace_id == trace_id})
    mine = receiver.of_trace(trace_id)
    infer = mine["infer"]
    assert infer.parent == caller_span  # the request span continues the caller's trace
    assert mine["queue"].parent == infer.span_id and mine["encode"].parent == infer.span_id
    assert infer.attributes["tessera.model"] == "tabular" and infer.attributes["tessera.version"] == "1"
    assert infer.attributes["tessera.routing"] and infer.attributes["tessera.protocol"] == protocol
    assert infer.attributes["tessera.status"] == 200
    # The batch it joined: its own trace, linked to this request; the model run is the batch's child.
    batches = [s for s in spans if s.name == "batch" and (trace_id, infer.span_id) in s.links]
    assert len(batches) == 1
    batch = batches[0]
    assert (batch.trace_id, batch.span_id) in infer.links
    runs = [s for s in spans if s.name == "model_run" and s.parent == batch.span_id]
    assert len(runs) == 1 and runs[0].trace_id == batch.trace_id
    assert batch.attributes["tessera.batch.rows"] >= 1
    return infer


def test_a_traced_http_request_continues_the_callers_trace(traced_server: Any, otlp_receiver: Receiver) -> None:
    trace_id, span_id, traceparent = _caller()
    _, headers = _http_infer(traced_server.http_url, {"traceparent": traceparent, "tracestate": "vendor=1"})
    returned = parse_traceparent(headers["traceparent"])
    assert returned is not None and f"{returned.trace_id:032x}" == trace_id and returned.sampled
    infer = _request_spans_ok(otlp_receiver, trace_id, span_id, "http")
    assert f"{returned.span_id:016x}" == infer.span_id


def test_a_traced_grpc_request_continues_the_callers_trace(traced_server: Any, otlp_receiver: Receiver) -> None:
    trace_id, span_id, traceparent = _caller()
    request = pb.ModelInferRequest(model_name="tabular")
    tensor = request.inputs.add(name="features", datatype="FP32", shape=[1, 8])
    request.raw_input_contents.append(np.ones((1, 8), dtype=np.float32).tobytes())
    assert tensor.name == "features"
    with grpc.insecure_channel(traced_server.grpc_url) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                   request_serializer=pb.ModelInferRequest.SerializeToString,
                                   response_deserializer=pb.ModelInferResponse.FromString)
        response, rpc = call.with_call(request, metadata=(("traceparent", traceparent),), timeout=30)
    assert response.model_name == "tabular"
    trailers = dict(rpc.trailing_metadata())
    returned = parse_traceparent(trailers["traceparent"])
    assert returned is not None and f"{returned.trace_id:032x}" == trace_id
    infer = _request_spans_ok(otlp_receiver, trace_id, span_id, "grpc")
    assert f"{returned.span_id:016x}" == infer.span_id


def test_a_batch_span_links_to_every_request_in_the_batch(traced_server: Any, otlp_receiver: Receiver) -> None:
    callers = [_caller() for _ in range(4)]
    with concurrent.futures.ThreadPoolExecutor(len(callers)) as pool:
        list(pool.map(lambda c: _http_infer(traced_server.http_url, {"traceparent": c[2]}), callers))
    traces = {c[0] for c in callers}
    spans = otlp_receiver.wait_for(lambda found: len({s.trace_id for s in found if s.name == "infer"} & traces) == 4
                                   and any(s.name == "batch" and {t for t, _ in s.links} & traces for s in found))
    infer_spans = {(s.trace_id, s.span_id): s for s in spans if s.name == "infer" and s.trace_id in traces}
    batches = [s for s in spans if s.name == "batch" and {t for t, _ in s.links} & traces]
    assert sum(b.attributes["tessera.batch.requests"] for b in batches) == 4
    assert any(b.attributes["tessera.batch.requests"] > 1 for b in batches), "the 200 ms delay batches them"
    for batch in batches:
        members = [key for key, s in infer_spans.items() if (batch.trace_id, batch.span_id) in s.links]
        assert sorted(batch.links) == sorted(members)  # linked to all its members, and only them
        assert len(batch.links) == batch.attributes["tessera.batch.requests"]
        assert batch.attributes["tessera.batch.rows"] == len(members)


def test_an_error_is_a_span_with_error_status_and_the_response_carries_the_trace(
        traced_server: Any, otlp_receiver: Receiver) -> None:
    trace_id, span_id, traceparent = _caller()
    body = orjson.dumps({"inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]})
    request = urllib.request.Request(f"http://{traced_server.http_url}/v2/models/tabular/infer", data=body,
                                     headers={"traceparent": traceparent}, method="POST")
    with pytest.raises(urllib.error.HTTPError) as failure:
        urllib.request.urlopen(request, timeout=30)
    with failure.value:
        assert failure.value.code == 400
        assert trace_id in failure.value.headers["traceparent"]
    spans = otlp_receiver.wait_for(lambda found: any(s.trace_id == trace_id and s.name == "infer" for s in found))
    infer = next(s for s in spans if s.trace_id == trace_id and s.name == "infer")
    assert infer.parent == span_id and infer.status == 2  # STATUS_CODE_ERROR
    assert infer.attributes["tessera.status"] == 400


def test_a_caller_that_did_not_sample_its_trace_gets_no_spans(traced_server: Any,
                                                               otlp_receiver: Receiver) -> None:
    trace_id, span_id, _ = _caller()
    _, headers = _http_infer(traced_server.http_url, {"traceparent": f"00-{trace_id}-{span_id}-00"})
    assert "traceparent" not in headers  # no trace of this request exists to point to
    sampled_id, _, traceparent = _caller()
    _http_infer(traced_server.http_url, {"traceparent": traceparent})
    otlp_receiver.wait_for(lambda found: any(s.trace_id == sampled_id for s in found))
    assert not otlp_receiver.of_trace(trace_id)


def test_a_request_log_line_names_the_trace_a_traced_request_got(otlp_receiver: Receiver, server_factory: Any,
                                                                 tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", otlp_receiver.url)
    make_models.make_tabular(tmp_path)
    log = tmp_path / "requests.jsonl"
    server = server_factory(tmp_path, tracing_enabled=True, trace_sample_ratio=1.0, drift_enabled=False,
                            request_log=str(log))
    _, headers = _http_infer(server.http_url, {})  # no caller trace: Tessera starts one
    started = parse_traceparent(headers["traceparent"])
    assert started is not None
    deadline = time.monotonic() + 20
    while not (log.exists() and log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    [line] = [orjson.loads(text) for text in log.read_text().splitlines()]
    assert line["trace_id"] == f"{started.trace_id:032x}" and line["status"] == 200


def test_a_shadow_copy_is_a_span_of_its_own_linked_to_the_request_it_copies(
        otlp_receiver: Receiver, server_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", otlp_receiver.url)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    make_models.make_tabular(tmp_path, version=1, seed=7)
    make_models.make_tabular(tmp_path, version=2, seed=7)
    config = tmp_path / "tabular" / "config.pbtxt"
    config.write_text(config.read_text() + "version_policy { all { } }\n")
    server = server_factory(tmp_path, tracing_enabled=True, drift_enabled=False, state_dir=tmp_path / "state")
    from server.routing.spec import RolloutSpec

    server.call(server.app.rollouts.start_rollout("tabular", RolloutSpec.from_dict({
        "candidate_version": 2, "shadow": {"percent": 100, "duration_seconds": 3600, "min_requests": 1}})))
    trace_id, _, traceparent = _caller()
    _http_infer(server.http_url, {"traceparent": traceparent})
    spans = otlp_receiver.wait_for(lambda found: any(s.name == "shadow" and any(t == trace_id for t, _ in s.links)
                                                     for s in found))
    infer = next(s for s in spans if s.name == "infer" and s.trace_id == trace_id)
    shadow = next(s for s in spans if s.name == "shadow" and (trace_id, infer.span_id) in s.links)
    assert shadow.trace_id != trace_id  # a trace of its own
    assert shadow.attributes["tessera.version"] == "2" and shadow.attributes["tessera.routing"] == "shadow"
    assert infer.attributes["tessera.routing"] == "stable"
