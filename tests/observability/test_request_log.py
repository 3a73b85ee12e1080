"""Request logs through a real server: one JSON line per request with its figures, never tensor contents;
errors always logged whatever the sampling; a writer that falls behind drops and counts."""

from __future__ import annotations

import queue
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client import CollectorRegistry
from tritonclient.utils import InferenceServerException

from server import observation
from server.cli import build_parser, serve_settings
from server.errors import DeadlineExceeded, InvalidInput
from server.request_log import FIELDS, RequestLog
from server.tensors import InferResponse
from tests.observability.clients import HttpClient

MARKER = 12345.678  # an input value that must never appear in a log line


def _lines(path: Path, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 20
    while True:
        text = path.read_text() if path.exists() else ""
        lines = [orjson.loads(line) for line in text.splitlines()]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def _infer(server: Any) -> None:
    """Two requests that succeed (gRPC and HTTP, each with the caller's traceparent), one for a model that
    does not exist and one that fails after it was routed (an unknown output), neither with a traceparent."""
    x = np.full((3, 8), MARKER, np.float32)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        item = grpcclient.InferInput("features", [3, 8], "FP32")
        item.set_data_from_numpy(x)
        client.infer("tabular", [item], request_id="grpc-1", headers={"traceparent": CALLER_TRACE})
    client = HttpClient(server.http_url)
    item = httpclient.InferInput("features", [3, 8], "FP32")
    item.set_data_from_numpy(x)
    client.infer("tabular", [item], request_id="http-1", headers={"traceparent": CALLER_TRACE})
    failed = []
    for model, request_id, outputs in (("no_such_model", "missing", None),
                                       ("tabular", "no-output", [httpclient.InferRequestedOutput("nope")])):
        try:  # not pytest.raises: a kept traceback would keep the client for the collector of another thread
            client.infer(model, [item], request_id=request_id, outputs=outputs)
        except InferenceServerException as exc:
            failed.append(str(exc))
    client.close()
    assert "no_such_model" in failed[0] and "unknown output 'nope'" in failed[1]


def test_each_request_is_one_json_line_with_its_figures_and_no_tensor_contents(
        tmp_path: Path, server_factory: Any, sample_repository: Path) -> None:
    log = tmp_path / "requests.jsonl"
    server = server_factory(sample_repository, request_log=str(log), drift_enabled=False)
    _infer(server)
    lines = _lines(log, 4)
    assert len(lines) == 4
    assert all(list(line) == list(FIELDS) for line in lines)
    by_id = {line["request_id"]: line for line in lines}
    grpc_line, http_line, error, routed = by_id["grpc-1"], by_id["http-1"], by_id["missing"], by_id["no-output"]
    assert (grpc_line["protocol"], http_line["protocol"]) == ("grpc", "http")
    for line in (grpc_line, http_line):
        assert line["model"] == "tabular" and line["version"] == "1" and line["routing"] == "pinned"
        assert line["status"] == 200 and line["error"] == "" and line["rows"] == 3
        assert line["batch_size"] >= 3 and line["batch_requests"] >= 1
        assert line["e2e_ms"] >= line["queue_ms"] >= 0 and line["compute_ms"] > 0
        assert line["time"].endswith("Z") and line["caller"] == "anonymous"  # auth is off: the open principal
        assert line["trace_id"] == "ab" * 16  # tracing is off: the caller's trace
    assert error["status"] == 404 and error["error"] == "ModelNotFound" and "no_such_model" in error["reason"]
    # Authorized (auth is off: the open principal) before the model was looked up; a refused caller is
    # described by what it presented (test_the_caller_is_the_authorized_principal_and_...).
    assert error["model"] == "no_such_model" and error["caller"] == "anonymous" and error["version"] == ""
    assert error["trace_id"] == "" and error["rows"] == 0 and error["batch_size"] == 0
    # Failed after it was routed: the line names the version and routing it had been given.
    assert (routed["status"], routed["error"], routed["version"], routed["routing"]) == (400, "InvalidInput", "1",
                                                                                         "pinned")
    assert str(MARKER) not in log.read_text() and "12345" not in log.read_text()


def test_stream_messages_are_lines_of_their_own_with_the_streams_caller_trace(
        tmp_path: Path, server_factory: Any, sample_repository: Path) -> None:
    log = tmp_path / "requests.jsonl"
    server = server_factory(sample_repository, request_log=str(log), drift_enabled=False)
    answers: queue.Queue[Any] = queue.Queue()
    good = grpcclient.InferInput("features", [2, 8], "FP32")
    good.set_data_from_numpy(np.ones((2, 8), np.float32))
    bad = grpcclient.InferInput("features", [2, 5], "FP32")
    bad.set_data_from_numpy(np.ones((2, 5), np.float32))
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        client.start_stream(callback=lambda result, error: answers.put(error), headers={"traceparent": CALLER_TRACE})
        client.async_stream_infer("tabular", [good], request_id="s-1")
        client.async_stream_infer("tabular", [bad], request_id="s-bad")
        [answers.get(timeout=30) for _ in range(2)]
        client.stop_stream()
    by_id = {line["request_id"]: line for line in _lines(log, 2)}
    assert set(by_id) == {"s-1", "s-bad"}
    assert all(line["protocol"] == "grpc" and line["trace_id"] == "ab" * 16 for line in by_id.values())
    assert (by_id["s-1"]["status"], by_id["s-1"]["rows"], by_id["s-1"]["version"]) == (200, 2, "1")
    assert (by_id["s-bad"]["status"], by_id["s-bad"]["error"]) == (400, "InvalidInput")


def test_errors_are_logged_whatever_the_sampling(tmp_path: Path, server_factory: Any,
                                                 sample_repository: Path) -> None:
    log = tmp_path / "requests.jsonl"
    server = server_factory(sample_repository, request_log=str(log), request_log_sample_ratio=0.0,
                            drift_enabled=False)
    _infer(server)
    time.sleep(0.5)
    lines = _lines(log, 2)
    assert sorted(line["request_id"] for line in lines) == ["missing", "no-output"]


CALLER_TRACE = f"00-{'ab' * 16}-{'cd' * 8}-01"
CALLER_TRACEPARENT = CALLER_TRACE.encode()  # as an HTTP request carries it


def _served(log: RequestLog, request_id: str = "", trace: Any = CALLER_TRACEPARENT) -> None:
    now = time.perf_counter_ns()
    response = InferResponse("tabular", "1", {}, {}, served=(2, 1_000, "stable", "alice", (now, 5_000, 8, 3)))
    log.served(now, request_id, trace, response, "http")


def test_a_writer_behind_drops_and_counts_and_the_trace_id_comes_from_the_caller(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    path = tmp_path / "requests.jsonl"
    log = RequestLog(str(path), queue_size=3, registry=registry)  # not started: nothing drains
    for _ in range(5):
        _served(log)
    assert registry.get_sample_value("tessera_request_log_dropped_total") == 2
    log.start()
    log.stop()
    lines = [orjson.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 3 and registry.get_sample_value("tessera_request_log_lines_total") == 3
    assert all(line["trace_id"] == "ab" * 16 for line in lines)
    assert len({line["request_id"] for line in lines}) == 3  # the caller sent none: each gets its own
    assert all((line["version"], line["routing"], line["caller"], line["rows"], line["batch_size"],
                line["batch_requests"], line["queue_ms"], line["compute_ms"]) == ("1", "stable", "alice", 2, 8, 3,
                                                                                   0.001, 0.005) for line in lines)


def test_the_trace_id_is_the_observed_one_else_the_callers(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    log = RequestLog(str(path))
    _served(log, "observed", 0x1234)
    _served(log, "http", observation.http_traceparent([(b"host", b"tessera"), (b"traceparent", CALLER_TRACE.encode())]))
    _served(log, "grpc", observation.grpc_traceparent((("tessera-routing-key", "k"), ("traceparent", CALLER_TRACE))))
    _served(log, "none", observation.http_traceparent([(b"host", b"tessera")]))
    _served(log, "malformed", b"00-zz-zz-01")
    log.start()
    log.stop()
    trace_ids = {line["request_id"]: line["trace_id"] for line in map(orjson.loads, path.read_text().splitlines())}
    assert trace_ids == {"observed": f"{0x1234:032x}", "http": "ab" * 16, "grpc": "ab" * 16, "none": "",
                         "malformed": ""}


def test_a_failure_names_the_version_it_was_routed_to_and_is_never_sampled_out(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    log = RequestLog(str(path), sample_ratio=0.0)
    routed = DeadlineExceeded("the request's timeout of 1 ms passed in the queue")
    routed.route = ("2", "candidate")
    _served(log, "sampled-out")
    log.failed(time.perf_counter_ns(), "late", CALLER_TRACE, "tabular", routed, "alice", None, "grpc")
    log.failed(time.perf_counter_ns(), "", None, "tabular", RuntimeError("a secret"), None, None, "http")
    log.start()
    log.stop()
    late, internal = map(orjson.loads, path.read_text().splitlines())
    assert (late["request_id"], late["status"], late["error"], late["version"], late["routing"], late["caller"]) \
        == ("late", 504, "DeadlineExceeded", "2", "candidate", "alice")
    assert (internal["status"], internal["error"], internal["reason"], internal["version"], internal["caller"]) \
        == (500, "InternalError", "internal error", "", None)
    assert "a secret" not in path.read_text()


def test_a_server_without_tracing_configured_never_imports_opentelemetry(sample_repository: Path) -> None:
    code = f"""
import asyncio, sys
from server.app import App
from tests.observability.clients import HttpClient

from server.cli import build_parser, serve_settings
settings = serve_settings(build_parser().parse_args(
    ["serve", "--model-repository", {str(sample_repository)!r}, "--host", "127.0.0.1", "--http-port", "0",
     "--grpc-port", "0", "--drift", "false", "--state-dir", {str(sample_repository / ".state")!r}]))
assert not settings.tracing_enabled
async def main():
    app = App(settings)
    await app.start()
    await app.stop()
asyncio.run(main())
import server.observation as o
assert o.ACTIVE is None
print([m in sys.modules for m in ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http")])
"""
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[False, False]"  # (redis-py 8 loads the OTel API by itself)


@pytest.mark.parametrize(("env", "flags", "expected"), [
    pytest.param({}, [], (False, 1.0, True), id="nothing-configured"),
    pytest.param({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, [], (True, 1.0, True), id="endpoint"),
    pytest.param({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                  "OTEL_TRACES_SAMPLER_ARG": "0.01"}, [], (True, 0.01, True), id="ratio-sampler"),
    pytest.param({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_SAMPLER": "traceidratio",
                  "OTEL_TRACES_SAMPLER_ARG": "0.5"}, [], (True, 0.5, False), id="not-parent-based"),
    pytest.param({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, [],
                 (False, 1.0, True), id="sdk-disabled"),
    pytest.param({}, ["--tracing", "on", "--trace-sample-ratio", "0.2"], (True, 0.2, True), id="flags"),
])
def test_tracing_is_configured_by_the_standard_otel_variables(monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                                                              flags: list[str], expected: tuple[Any, ...]) -> None:
    for key in [k for k in __import__("os").environ if k.startswith("OTEL_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = serve_settings(build_parser().parse_args(["serve", "--model-repository", "repo", *flags]))
    assert (settings.tracing_enabled, settings.trace_sample_ratio, settings.trace_parent_based) == expected


def test_the_caller_is_the_authorized_principal_and_a_refusal_is_logged_without_the_token(
        tmp_path: Path, server_factory: Any, sample_repository: Path) -> None:
    from server.auth import hash_token

    tokens = tmp_path / "tokens"
    tokens.write_text(f"alice:infer:{hash_token('alice-secret')}\n")
    log = tmp_path / "requests.jsonl"
    server = server_factory(sample_repository, request_log=str(log), auth_tokens_file=tokens, drift_enabled=False)
    x = np.zeros((1, 8), np.float32)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        item = grpcclient.InferInput("features", [1, 8], "FP32")
        item.set_data_from_numpy(x)
        client.infer("tabular", [item], request_id="ok", headers={"authorization": "Bearer alice-secret"})
        refused = ""
        try:
            client.infer("tabular", [item], request_id="refused", headers={"authorization": "Bearer wrong"})
        except InferenceServerException as exc:
            refused = str(exc)
    assert refused
    lines = _lines(log, 2)
    [ok] = [line for line in lines if line["status"] == 200]
    [refusal] = [line for line in lines if line["status"] == 401]
    assert ok["caller"] == "alice" and ok["request_id"] == "ok"
    assert refusal["error"] == "Unauthenticated"  # refused by the transport, before the dataplane
    assert refusal["request_id"] == "refused" and refusal["caller"].startswith("token:")  # described, not named
    assert "wrong" not in log.read_text() and "alice-secret" not in log.read_text()


def test_a_line_is_valid_json_whatever_the_strings_hold(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    log = RequestLog(str(path))
    log.failed(time.perf_counter_ns(), 'id "quoted"\n\\', 0, "mödel", InvalidInput("input 'x': \"bad\"\tvalue\x01"),
               "cert:CN=\u2603", None, "grpc")
    log.start()
    log.stop()
    [line] = [orjson.loads(text) for text in path.read_text(encoding="utf-8").splitlines()]
    assert list(line) == list(FIELDS)
    assert (line["request_id"], line["model"], line["caller"]) == ('id "quoted"\n\\', "mödel", "cert:CN=\u2603")
    assert (line["status"], line["error"], line["reason"]) == (400, "InvalidInput", "input 'x': \"bad\"\tvalue\x01")
    assert line["trace_id"] == "" and line["e2e_ms"] >= 0 and line["time"].endswith("Z")


def test_the_writer_hands_the_gil_back_between_slices_of_lines_and_keeps_their_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A drain of a whole queue in one go held the GIL for milliseconds while the event loop waited for it
    # (BENCHMARKS.md, "Eighth session: side-path threads that hand the GIL back"); the writer formats a slice at a time.
    from server import request_log, writer_thread

    handed: list[int] = []
    path = tmp_path / "requests.jsonl"
    log = RequestLog(str(path))
    monkeypatch.setattr(writer_thread, "hand_over", lambda: handed.append(len(log._lines)))
    count = request_log._LINES_PER_SLICE * 3 + 5
    for i in range(count):
        _served(log, f"r{i}")
    log.start()
    log.stop()
    lines = [orjson.loads(line) for line in path.read_text().splitlines()]
    assert [line["request_id"] for line in lines] == [f"r{i}" for i in range(count)]
    assert handed == [count - request_log._LINES_PER_SLICE * k for k in (1, 2, 3)]  # between slices, not after
