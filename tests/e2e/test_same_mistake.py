"""The same bad request gets the same status and the same message on gRPC and HTTP: the codecs share
one request core (server/protocol/request_core.py)."""

from __future__ import annotations

import http.client
import json
from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from ..conftest import RunningServer

ROW = np.arange(8, dtype=np.float32).reshape(1, 8)
FEATURES = {"name": "features", "datatype": "FP32", "shape": [1, 8]}


def _grpc(server: RunningServer, inputs: list[dict[str, Any]], raw: list[bytes] | None = None,
          timeout: object = None) -> tuple[str, str]:
    request = service_pb2.ModelInferRequest(model_name="tabular")
    for spec in inputs:
        tensor = request.inputs.add(name=spec["name"], datatype=spec["datatype"], shape=spec["shape"])
        if raw is None:
            tensor.contents.fp32_contents.extend(ROW.reshape(-1).tolist())
    if raw is not None:
        request.raw_input_contents.extend(raw)
    if isinstance(timeout, str):
        request.parameters["timeout"].string_param = timeout
    elif isinstance(timeout, int):
        request.parameters["timeout"].int64_param = timeout
    with grpc.insecure_channel(server.grpc_url) as channel:
        try:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
        except grpc.RpcError as exc:
            return exc.code().name, exc.details() or ""
    return "OK", ""


def _http(server: RunningServer, inputs: list[dict[str, Any]], raw: list[bytes] | None = None,
          timeout: object = None) -> tuple[str, str]:
    entries = []
    for spec in inputs:
        entry = dict(spec)
        if raw is None:
            entry["data"] = ROW.reshape(-1).tolist()
        else:
            entry["parameters"] = {"binary_data_size": len(raw[len(entries)])}
        entries.append(entry)
    document: dict[str, Any] = {"inputs": entries}
    if timeout is not None:
        document["parameters"] = {"timeout": timeout}
    header = json.dumps(document).encode()
    body = header + b"".join(raw or [])
    headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}
    conn = http.client.HTTPConnection(server.http_url, timeout=30)
    try:
        conn.request("POST", "/v2/models/tabular/infer", body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    status = {200: "OK", 400: "INVALID_ARGUMENT"}.get(response.status, str(response.status))
    return status, json.loads(data).get("error", "") if response.status != 200 else ""


CASES = [
    pytest.param({"inputs": [FEATURES], "timeout": "soon"},
                 "parameter 'timeout' must be a non-negative integer of microseconds, got 'soon'",
                 id="invalid-timeout"),
    pytest.param({"inputs": [FEATURES], "timeout": -5},
                 "parameter 'timeout' must be a non-negative integer of microseconds, got -5", id="negative-timeout"),
    pytest.param({"inputs": [FEATURES, FEATURES]}, "input 'features' appears more than once", id="duplicate-input"),
    pytest.param({"inputs": [FEATURES], "raw": [ROW.tobytes()[:28]]},
                 "input 'features': FP32[1,8] needs 32 bytes of raw data, got 28", id="wrong-raw-byte-size"),
]


@pytest.mark.parametrize(("call", "message"), CASES)
def test_the_same_mistake_gets_the_same_status_and_message_on_both_transports(
        running_server: RunningServer, call: dict[str, Any], message: str) -> None:
    answers = {transport.__name__: transport(running_server, **call) for transport in (_grpc, _http)}
    assert answers == {"_grpc": ("INVALID_ARGUMENT", message), "_http": ("INVALID_ARGUMENT", message)}
    assert _grpc(running_server, [FEATURES]) == ("OK", "")  # and the server keeps serving
