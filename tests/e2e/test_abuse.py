"""Abuse of the real server, as issue 11 found it (findings 7 and 8): huge or malformed shapes,
malformed messages, bad timeouts, slow clients, big bodies, floods; each answered precisely while
other clients are still served."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from server.grpc_api import service
from server.http_api import routes

from ..conftest import RunningServer, _serve_in_thread, make_models, server_settings

SERVICE = "/inference.GRPCInferenceService"
TIMEOUTS = {"http_header_timeout_s": 1.0, "http_body_timeout_s": 1.5}


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("abuse")
    make_models.make_identity(root, "fp32", TensorProto.FLOAT, dims=("batch", 4),
                              config='name: "fp32"\nmax_batch_size: 8\ndynamic_batching { }\n')
    make_models.make_identity(root, "text", TensorProto.STRING, dims=("batch", "n"),
                              config='name: "text"\nmax_batch_size: 8\ndynamic_batching { }\n')
    # Requests wait up to 300 ms for company: a flood from one stream piles up in the queue.
    make_models.make_mlp(root, "queued", [4, 8, 2], max_batch_size=64, config_extra=(
        "dynamic_batching { max_queue_delay_microseconds: 300000 "
        "default_queue_policy { max_queue_size: 8 } }\n"))
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[RunningServer]:
    running, shutdown = _serve_in_thread(server_settings(repository))
    yield running
    shutdown()


def _http_infer(server: RunningServer, body: dict[str, Any], model: str = "fp32") -> tuple[int, dict[str, Any]]:
    with socket.create_connection(("127.0.0.1", server.app.http_port), timeout=30) as sock:
        payload = json.dumps(body).encode()
        sock.sendall(b"POST /v2/models/%s/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (model.encode(), len(payload), payload))
        return _response(sock)


def _response(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body) if body else {}


def _grpc_infer(server: RunningServer, msg: service_pb2.ModelInferRequest) -> grpc.RpcError:
    with grpc.insecure_channel(server.grpc_url) as channel, pytest.raises(grpc.RpcError) as caught:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(msg, timeout=30)
    return caught.value


def _grpc_request(shape: list[int], datatype: str = "FP32", model: str = "fp32") -> service_pb2.ModelInferRequest:
    msg = service_pb2.ModelInferRequest(model_name=model)
    msg.inputs.add(name="INPUT0", datatype=datatype, shape=shape)
    msg.raw_input_contents.append(b"\0" * 16)
    return msg


def _json_request(shape: list[int], datatype: str = "FP32") -> dict[str, Any]:
    return {"inputs": [{"name": "INPUT0", "datatype": datatype, "shape": shape, "data": [0.0] * 4}]}


def _no_error_logs(caplog: pytest.LogCaptureFixture) -> None:
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith(("server", "uvicorn"))]
    assert errors == []


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# -- finding 8: shapes, timeouts, malformed messages -------------------------------------------
SHAPES = [
    pytest.param([1] * 65, "65 dimensions, more than the 64 allowed", id="65-dims"),
    pytest.param([2**63 - 1, 2**63 - 1, 0], "over the limit of 16777216 elements", id="2^63-2^63-0"),
    pytest.param([1, -4], "negative dimension", id="negative"),
    pytest.param([9, 4], "exceeds the model's max_batch_size 8", id="rows-over-max-batch"),
]


@pytest.mark.parametrize(("shape", "message"), SHAPES)
@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_bad_shapes_are_invalid_argument_with_a_message(server: RunningServer, caplog: pytest.LogCaptureFixture,
                                                        transport: str, shape: list[int], message: str) -> None:
    if transport == "http":
        status, body = _http_infer(server, _json_request(shape))
        assert status == 400 and message in body["error"]
    else:
        error = _grpc_infer(server, _grpc_request(shape))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and message in error.details()
    _no_error_logs(caplog)


def test_json_dims_beyond_int64_are_bad_request(server: RunningServer) -> None:
    status, body = _http_infer(server, _json_request([2**63, 2**63, 0]))
    assert status == 400 and "over the limit of 16777216 elements" in body["error"]


@pytest.mark.parametrize(("field", "value"), [
    pytest.param("double_param", math.inf, id="inf"),
    pytest.param("double_param", math.nan, id="nan"),
    pytest.param("double_param", 2.5, id="fraction"),
    pytest.param("int64_param", -1, id="negative"),
])
def test_grpc_bad_timeout_is_invalid_argument_with_the_http_message(server: RunningServer, field: str,
                                                                   value: float) -> None:
    msg = _grpc_request([1, 4])
    setattr(msg.parameters["timeout"], field, value)
    error = _grpc_infer(server, msg)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == f"parameter 'timeout' must be a non-negative integer of microseconds, got {value!r}"
    if math.isfinite(value):
        status, body = _http_infer(server, {**_json_request([1, 4]), "parameters": {"timeout": value}})
        assert status == 400 and body["error"] == error.details()


@pytest.mark.parametrize(("method", "message"), [
    pytest.param("ModelInfer", "malformed ModelInferRequest message", id="infer"),
    pytest.param("ModelMetadata", "malformed ModelMetadataRequest message", id="metadata"),
])
def test_invalid_protobuf_bytes_are_invalid_argument(server: RunningServer, method: str, message: str) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        call = channel.unary_unary(f"{SERVICE}/{method}")
        with pytest.raises(grpc.RpcError) as caught:
            call(b"\xff\xff\xff\xff\x0f", timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == message


def test_invalid_protobuf_on_a_stream_answers_that_request_only(server: RunningServer) -> None:
    good = _grpc_request([1, 4]).SerializeToString()
    with grpc.insecure_channel(server.grpc_url) as channel:
        call = channel.stream_stream(f"{SERVICE}/ModelStreamInfer",
                                     response_deserializer=service_pb2.ModelStreamInferResponse.FromString)
        answers = list(call(iter([b"\xff\xff\xff\xff\x0f", good]), timeout=30))
    assert sorted(a.error_message for a in answers) == ["", "malformed ModelInferRequest message"]


# -- finding 7: caps, budgets, big bodies --------------------------------------------------------
@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_request_over_the_element_cap_is_refused_with_rss_flat(server: RunningServer, transport: str) -> None:
    before = _rss_bytes()
    for _ in range(5):
        if transport == "http":
            status, body = _http_infer(server, _json_request([8, 3_000_000], "BYTES"), model="text")
            assert status == 400 and "the request may carry at most 16777216" in body["error"]
        else:
            error = _grpc_infer(server, _grpc_request([8, 3_000_000], "BYTES", model="text"))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "the request may carry at most 16777216" in error.details()
    assert _rss_bytes() - before < 64 << 20


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_a_row_over_the_string_cap_is_refused_before_decoding(server: RunningServer, transport: str) -> None:
    # One row's strings are converted in one GIL-held stall: a row over the cap is refused from its
    # declared shape; the same strings in more rows are served.
    message = "puts 262145 BYTES elements in one row; a row may carry at most 262144 (--max-strings-per-row)"
    if transport == "http":
        status, body = _http_infer(server, _json_request([2, 262_145], "BYTES"), model="text")
        assert status == 400 and message in body["error"]
    else:
        error = _grpc_infer(server, _grpc_request([2, 262_145], "BYTES", model="text"))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and message in error.details()
    rows = np.full((4, 131_073), b"ab", dtype=np.object_)  # the same 524,292 strings, under the cap per row
    if transport == "http":
        with httpclient.InferenceServerClient(server.http_url) as client:
            item = httpclient.InferInput("INPUT0", list(rows.shape), "BYTES")
            item.set_data_from_numpy(rows)
            result = client.infer("text", [item]).as_numpy("OUTPUT0")
    else:
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            item = grpcclient.InferInput("INPUT0", list(rows.shape), "BYTES")
            item.set_data_from_numpy(rows)
            result = client.infer("text", [item]).as_numpy("OUTPUT0")
    assert result.shape == (4, 131_073) and result[3, -1] == b"ab"


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_body_budget_exhausted_is_overloaded(repository: Path, server_factory: Any, transport: str) -> None:
    small = server_factory(repository, body_budget_bytes=1 << 20)
    big = np.zeros((8, 4), np.float32)
    padding = "x" * (2 << 20)
    if transport == "http":
        with socket.create_connection(("127.0.0.1", small.app.http_port), timeout=30) as sock:
            # The declared length is held as soon as the head arrives: refused before the body is sent.
            sock.sendall(b"POST /v2/models/fp32/infer HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n"
                         % len(padding))
            status, body = _response(sock)
        assert status == 429 and "budget of 1048576" in body["error"]
        with httpclient.InferenceServerClient(small.http_url) as client:
            client.infer("fp32", [_http_input(big)])  # a body within the budget is served
    else:
        msg = _grpc_request([1, 4])
        msg.id = padding
        with (grpc.insecure_channel(small.grpc_url) as channel,
              pytest.raises(grpc.RpcError) as caught):
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(msg, timeout=30)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "budget of 1048576" in caught.value.details()
        with grpcclient.InferenceServerClient(small.grpc_url) as client:
            client.infer("fp32", [_grpc_input(big)])


def _http_input(array: np.ndarray) -> httpclient.InferInput:
    item = httpclient.InferInput("INPUT0", list(array.shape), "FP32")
    item.set_data_from_numpy(array)
    return item


def _grpc_input(array: np.ndarray) -> grpcclient.InferInput:
    item = grpcclient.InferInput("INPUT0", list(array.shape), "FP32")
    item.set_data_from_numpy(array)
    return item


def _text_body(count: int) -> tuple[bytes, int]:
    """A binary-extension body of `count` short BYTES elements of varied length (the slow decode path)."""
    lengths = np.tile(np.array([1, 2, 3], np.uint32), count // 3 + 1)[:count]
    parts = [struct.pack("<I", int(n)) + b"abc"[: int(n)] for n in lengths[:3]]
    blob = b"".join(parts) * (count // 3) + b"".join(parts[: count % 3])
    header = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [8, count // 8],
                                     "parameters": {"binary_data_size": len(blob)}}],
                         "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}]}).encode()
    return header + blob, len(header)


def test_a_big_body_does_not_stall_small_requests(server: RunningServer) -> None:
    body, header_length = _text_body(2_000_000)  # about 12 MB of 1-3 byte elements, 250,000 a row
    done = threading.Event()
    outcome: dict[str, Any] = {}

    def big() -> None:
        with socket.create_connection(("127.0.0.1", server.app.http_port), timeout=120) as sock:
            sock.sendall(b"POST /v2/models/text/infer HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
                         b"inference-header-content-length: %d\r\ncontent-length: %d\r\n\r\n%s"
                         % (header_length, len(body), body))
            data = b""
            while chunk := sock.recv(1 << 20):
                data += chunk
        outcome["status"] = int(data.split()[1])
        done.set()

    thread = threading.Thread(target=big)
    thread.start()
    small = 0
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        while not done.is_set():
            client.infer("fp32", [_grpc_input(np.ones((1, 4), np.float32))])
            small += 1
    thread.join()
    assert outcome["status"] == 200
    assert small >= 5  # served while the big body was read, decoded, computed and encoded


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_a_big_body_is_decoded_off_the_event_loop(server: RunningServer, monkeypatch: pytest.MonkeyPatch,
                                                  transport: str) -> None:
    # The big request's decode waits until small requests have been answered: that can only happen
    # when the decode does not hold the event loop (on the loop, it would wait in vain).
    decoding, small_done = threading.Event(), threading.Event()
    waited: list[bool] = []
    module = routes if transport == "http" else service
    original = module.decode_infer_request

    def decode(body: Any, *args: Any, **kwargs: Any) -> Any:
        if (len(body) if transport == "http" else sum(map(len, body.raw_input_contents))) > 1 << 20:
            decoding.set()
            waited.append(small_done.wait(5))
        return original(body, *args, **kwargs)

    monkeypatch.setattr(module, "decode_infer_request", decode)
    body, header_length = _text_body(300_000)
    statuses: list[str] = []

    def big() -> None:
        if transport == "http":
            with socket.create_connection(("127.0.0.1", server.app.http_port), timeout=60) as sock:
                sock.sendall(b"POST /v2/models/text/infer HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
                             b"inference-header-content-length: %d\r\ncontent-length: %d\r\n\r\n%s"
                             % (header_length, len(body), body))
                statuses.append(str(_response_status(sock)))
        else:
            msg = service_pb2.ModelInferRequest(model_name="text")
            msg.inputs.add(name="INPUT0", datatype="BYTES", shape=[8, 300_000 // 8])
            msg.raw_input_contents.append(body[header_length:])
            with grpc.insecure_channel(server.grpc_url, options=[("grpc.max_receive_message_length", -1)]) as ch:
                service_pb2_grpc.GRPCInferenceServiceStub(ch).ModelInfer(msg, timeout=60)
                statuses.append("200")

    thread = threading.Thread(target=big)
    thread.start()
    assert decoding.wait(30)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        for _ in range(3):
            client.infer("fp32", [_grpc_input(np.ones((1, 4), np.float32))], client_timeout=10)
    small_done.set()
    thread.join()
    assert waited == [True] and statuses == ["200"]


def _response_status(sock: socket.socket) -> int:
    data = b""
    while chunk := sock.recv(1 << 20):
        data += chunk
    return int(data.split()[1])


# -- finding 7: slow clients -------------------------------------------------------------------
def _closed(sock: socket.socket, deadline: float) -> bool:
    """Whether the server closed `sock` before `deadline` (anything it sends first is read away)."""
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if sock.recv(65536) == b"":
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
    return False


def test_slow_clients_are_closed_while_others_are_served(repository: Path, server_factory: Any) -> None:
    server = server_factory(repository, **TIMEOUTS)
    port = server.app.http_port
    head = b"POST /v2/models/fp32/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n"
    silent, partial, trickle_head, trickle_body = ([socket.create_connection(("127.0.0.1", port))
                                                    for _ in range(50)] for _ in range(4))
    for sock in partial:
        sock.sendall(head[:30])
    for sock in trickle_body:
        sock.sendall(head + b"{")
    stop = threading.Event()

    def trickle() -> None:  # a byte every 0.2 s on each trickling connection, until it is closed
        index = 0
        while not stop.wait(0.2):
            for sock in trickle_head + trickle_body:
                with contextlib.suppress(OSError):
                    sock.send(head[index % 20 : index % 20 + 1] if sock in trickle_head else b" ")
            index += 1

    started = time.monotonic()
    thread = threading.Thread(target=trickle)
    thread.start()
    served = 0
    try:
        with httpclient.InferenceServerClient(server.http_url) as client:
            while time.monotonic() - started < 2.5:
                client.infer("fp32", [_http_input(np.ones((1, 4), np.float32))])
                served += 1
        # Header timeout 1 s, body timeout 1.5 s: everything is closed well within 10 s.
        still_open = [s for s in silent + partial + trickle_head + trickle_body
                      if not _closed(s, started + 10)]
    finally:
        stop.set()
        thread.join()
        for sock in silent + partial + trickle_head + trickle_body:
            sock.close()
    assert still_open == []
    assert served >= 5
    with httpclient.InferenceServerClient(server.http_url) as client:
        assert client.is_server_live()


def test_a_20_mb_header_is_refused_and_closed(server: RunningServer) -> None:
    with socket.create_connection(("127.0.0.1", server.app.http_port), timeout=30) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\nx-big: ")
        sent = 0
        try:
            while sent < 20 << 20:
                sock.sendall(b"a" * 65536)
                sent += 65536
        except OSError:
            pass  # the server closed the connection part way: that is the point
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except OSError:
            pass
    assert sent < 20 << 20 or data.startswith(b"HTTP/1.1 431")
    assert data == b"" or data.startswith(b"HTTP/1.1 431")
    with httpclient.InferenceServerClient(server.http_url) as client:
        assert client.is_server_live()


def test_client_disconnect_mid_upload_logs_one_debug_line(server: RunningServer,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="server")
    with socket.create_connection(("127.0.0.1", server.app.http_port)) as sock:
        sock.sendall(b"POST /v2/models/fp32/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n{")
        time.sleep(0.2)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any("disconnected" in r.getMessage() for r in caplog.records):
        time.sleep(0.05)
    lines = [r for r in caplog.records if "disconnected" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.DEBUG
    _no_error_logs(caplog)


def test_grpc_cancel_mid_call_logs_no_error(server: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="queued")
        request.inputs.add(name="input", datatype="FP32", shape=[1, 4])
        request.raw_input_contents.append(b"\0" * 16)
        future = stub.ModelInfer.future(request, timeout=30)
        time.sleep(0.1)  # waiting in the queue (300 ms delay)
        future.cancel()
        time.sleep(0.5)
    _no_error_logs(caplog)


# -- rate limits and fair shares ---------------------------------------------------------------
@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_rate_limit_is_overloaded_for_the_excess(repository: Path, server_factory: Any, transport: str) -> None:
    limited = server_factory(repository, rate_limit_rps=0.01, rate_limit_burst=3)
    status, message = _fourth_of_four(limited, transport)
    assert status == ("429" if transport == "http" else "StatusCode.RESOURCE_EXHAUSTED")
    assert "rate limit of 0.01 requests/s (burst 3) exceeded" in message
    gc.collect()  # the HTTP client is gevent's: let it go on this thread, not on a server thread


def _fourth_of_four(server: RunningServer, transport: str) -> tuple[str, str]:
    """Four requests at once: the status and message of the fourth."""
    array = np.ones((1, 4), np.float32)
    module: Any = httpclient if transport == "http" else grpcclient
    url = server.http_url if transport == "http" else server.grpc_url
    item = _http_input(array) if transport == "http" else _grpc_input(array)
    with module.InferenceServerClient(url) as client:
        for _ in range(3):
            client.infer("fp32", [item])
        try:
            client.infer("fp32", [item])
        except InferenceServerException as error:
            return str(error.status()), str(error.message())
    raise AssertionError("the fourth request was served")


def test_one_stream_cannot_fill_a_models_queue(server: RunningServer) -> None:
    request = service_pb2.ModelInferRequest(model_name="queued")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
    flood = [request.SerializeToString()] * 40
    answers: list[service_pb2.ModelStreamInferResponse] = []

    def stream() -> None:
        with grpc.insecure_channel(server.grpc_url) as channel:
            call = channel.stream_stream(f"{SERVICE}/ModelStreamInfer",
                                         response_deserializer=service_pb2.ModelStreamInferResponse.FromString)
            answers.extend(call(iter(flood), timeout=60))

    thread = threading.Thread(target=stream)
    thread.start()
    time.sleep(0.1)  # the flood is queued (each request waits up to 300 ms for company)
    with grpc.insecure_channel(server.grpc_url) as channel:
        other = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    thread.join()
    assert other.outputs  # another client got in while the stream flooded
    refused = [a for a in answers if a.error_message]
    assert len(answers) == 40 and refused
    assert all("its share of the queue (8 requests)" in a.error_message for a in refused)
    assert len(answers) - len(refused) >= 2  # the stream keeps its share
