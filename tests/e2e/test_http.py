"""End-to-end over HTTP with unmodified tritonclient (sync and aio, JSON and binary), plus raw requests
for what tritonclient cannot express: malformed bodies, bad headers, oversized bodies."""

from __future__ import annotations

import base64
import http.client
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
from tritonclient.utils import InferenceServerException, np_to_triton_dtype, triton_to_np_dtype

from .reference import run_reference, sample_inputs

SAMPLES = ["tabular", "two_input", "fixed"]
DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16",
             "FP32", "FP64", "BYTES"]
BINARY = [pytest.param(True, id="binary"), pytest.param(False, id="json")]
Feeds = dict[str, npt.NDArray[Any]]


def _inputs(feeds: Feeds, binary: bool = True, module: Any = httpclient) -> list[Any]:
    out = []
    for name, array in feeds.items():
        item = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        item.set_data_from_numpy(array, binary_data=binary)
        out.append(item)
    return out


@pytest.fixture(scope="module")
def client(running_server: Any) -> Iterator[Client]:
    c = Client(running_server.http_url)
    yield c
    c.close()


def _request(url: str, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    host, port = url.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _error(url: str, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, str]:
    status, data = _request(url, "POST", path, body, headers)
    return status, orjson.loads(data)["error"]


class Client(httpclient.InferenceServerClient):  # type: ignore[misc]
    """The sync client, closed explicitly by its fixture.

    The base __del__ joins a gevent pool; when the cyclic GC runs it on the server's thread,
    gevent raises InvalidThreadUseError.
    """

    def __del__(self) -> None:
        pass

    # Admin POSTs must declare JSON (README "Security"); tritonclient sends no Content-Type of its own.
    def load_model(self, *args: Any, **kwargs: Any) -> None:
        super().load_model(*args, headers={"Content-Type": "application/json"}, **kwargs)

    def unload_model(self, *args: Any, **kwargs: Any) -> None:
        super().unload_model(*args, headers={"Content-Type": "application/json"}, **kwargs)


def _failure(call: Callable[[], Any]) -> tuple[str, str]:
    """(status, message) of the InferenceServerException a client call raises."""
    try:
        call()
    except InferenceServerException as exc:
        return str(exc.status()), str(exc.message())
    raise AssertionError("the call did not fail")


def _assert_serving(client: Client) -> None:
    result = client.infer("tabular", _inputs(sample_inputs("tabular")))
    assert result.as_numpy("label").shape == (3, 1)


# -- health, metadata, configuration ---------------------------------------------------------------
def test_health_and_server_metadata(client: Client) -> None:
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "tessera"
    assert {"binary_tensor_data", "statistics", "model_repository"} <= set(meta["extensions"])


@pytest.mark.parametrize("model", SAMPLES)
@pytest.mark.parametrize("version", [pytest.param("", id="latest"), pytest.param("1", id="v1")])
def test_model_metadata_and_config_describe_the_model(client: Client, model: str,
                                                      version: str) -> None:
    assert client.is_model_ready(model, version)
    meta = client.get_model_metadata(model, version)
    assert meta["name"] == model and meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
    config = client.get_model_config(model, version)
    assert config["name"] == model
    assert [i["name"] for i in meta["inputs"]] == [i["name"] for i in config["input"]]


def test_config_uses_triton_field_names_and_numbers(client: Client) -> None:
    config = client.get_model_config("tabular")
    assert config["max_batch_size"] == 64
    assert config["input"][0]["dims"] == [8] and config["input"][0]["data_type"] == "TYPE_FP32"
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 500


def test_metadata_shape_has_the_batch_dimension(client: Client) -> None:
    meta = client.get_model_metadata("tabular")
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 8]}]
    assert client.get_model_metadata("fixed")["inputs"][0]["shape"] == [2, 3]


def test_unknown_model_is_not_ready_and_its_metadata_is_not_found(client: Client
                                                                  ) -> None:
    assert not client.is_model_ready("nope")
    assert _failure(lambda: client.get_model_metadata("nope")) == ("404", "unknown model: 'nope'")


# -- inference -------------------------------------------------------------------------------------
@pytest.mark.parametrize("binary_out", [pytest.param(True, id="out-binary"),
                                        pytest.param(False, id="out-json")])
@pytest.mark.parametrize("binary_in", [pytest.param(True, id="in-binary"), pytest.param(False, id="in-json")])
@pytest.mark.parametrize("model", SAMPLES)
def test_sync_infer_matches_in_process_onnxruntime(client: Client, running_server: Any, model: str,
                                                   binary_in: bool, binary_out: bool) -> None:
    feeds = sample_inputs(model)
    expected = run_reference(running_server.repository, model, feeds)
    outputs = [httpclient.InferRequestedOutput(name, binary_data=binary_out) for name in expected]
    result = client.infer(model, _inputs(feeds, binary_in), outputs=outputs, request_id="r-1")
    for name, value in expected.items():
        got = result.as_numpy(name)
        assert got.dtype == value.dtype
        np.testing.assert_allclose(got, value, rtol=0, atol=1e-6)
    assert result.get_response()["model_version"] == "1" and result.get_response()["id"] == "r-1"


@pytest.mark.parametrize("model", SAMPLES)
async def test_aio_infer_matches_in_process_onnxruntime(running_server: Any, model: str) -> None:
    feeds = sample_inputs(model, seed=5)
    async with httpaio.InferenceServerClient(running_server.http_url) as c:
        assert await c.is_server_ready()
        result = await c.infer(model, _inputs(feeds, module=httpaio))
    for name, value in run_reference(running_server.repository, model, feeds).items():
        np.testing.assert_allclose(result.as_numpy(name), value, rtol=0, atol=1e-6)


@pytest.mark.parametrize("binary", BINARY)
@pytest.mark.parametrize("datatype", DATATYPES)
def test_every_datatype_round_trips(client: Client, datatype: str,
                                    binary: bool) -> None:
    rng = np.random.default_rng(1)
    if datatype == "BYTES":
        data = np.array([[f"row{r}-{c}".encode() for c in range(4)] for r in range(2)], dtype=np.object_)
    elif datatype == "BOOL":
        data = rng.integers(0, 2, (2, 4)).astype(bool)
    else:
        data = (rng.random((2, 4)) * 100).astype(triton_to_np_dtype(datatype))
    item = httpclient.InferInput("INPUT0", [2, 4], datatype)
    item.set_data_from_numpy(data, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)]
    got = client.infer(f"identity_{datatype.lower()}", [item], outputs=outputs).as_numpy("OUTPUT0")
    if datatype == "BYTES" and not binary:
        data = data.astype(str).astype(np.object_)  # JSON carries BYTES as strings
    np.testing.assert_array_equal(got, data)


def test_requested_output_subset(client: Client) -> None:
    outputs = [httpclient.InferRequestedOutput("product")]
    result = client.infer("two_input", _inputs(sample_inputs("two_input")), outputs=outputs)
    assert [o["name"] for o in result.get_response()["outputs"]] == ["product"]
    assert result.as_numpy("sum") is None


def test_gzip_request_body_is_accepted(client: Client, running_server: Any) -> None:
    feeds = sample_inputs("tabular", seed=3)
    result = client.infer("tabular", _inputs(feeds), request_compression_algorithm="gzip")
    expected = run_reference(running_server.repository, "tabular", feeds)["probabilities"]
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-6)


def test_nested_json_data_from_a_plain_http_client(running_server: Any) -> None:
    body = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3],
                                     "data": [[1, 2, 3], [4, 5, 6]]}]})
    status, data = _request(running_server.http_url, "POST", "/v2/models/fixed/infer", body)
    assert status == 200
    answer = orjson.loads(data)
    assert answer["model_name"] == "fixed" and answer["outputs"][0]["shape"] == [2, 2]


# -- statistics, repository, metrics, OpenAPI ------------------------------------------------------
def test_statistics_count_inferences(client: Client) -> None:
    before = client.get_inference_statistics("two_input", "1")["model_stats"][0]
    client.infer("two_input", _inputs(sample_inputs("two_input", rows=2)))
    after = client.get_inference_statistics("two_input")["model_stats"][0]
    assert (after["name"], after["version"]) == ("two_input", "1")
    assert after["inference_count"] == before["inference_count"] + 2
    assert after["inference_stats"]["success"]["count"] == before["inference_stats"]["success"]["count"] + 1
    assert all(b["batch_size"] >= 1 and "compute_infer" in b for b in after["batch_stats"])
    every = client.get_inference_statistics()["model_stats"]
    assert {"tabular", "two_input", "fixed"} <= {s["name"] for s in every}


@pytest.mark.parametrize(("model", "version", "message"), [
    pytest.param("nope", "", "unknown model: 'nope'", id="unknown-model"),
    pytest.param("tabular", "9", "unknown version '9' of model 'tabular'", id="unknown-version"),
])
def test_statistics_of_unknown_model_or_version_is_not_found(client: Client,
                                                             model: str, version: str, message: str) -> None:
    assert _failure(lambda: client.get_inference_statistics(model, version)) == ("404", message)


def test_repository_index_lists_models_and_filters_ready(client: Client,
                                                         running_server: Any) -> None:
    index = client.get_model_repository_index()
    assert {"name": "tabular", "version": "1", "state": "READY", "reason": ""} in index
    status, data = _request(running_server.http_url, "POST", "/v2/repository/index", b'{"ready": true}')
    assert status == 200 and all(e["state"] == "READY" for e in orjson.loads(data))


def test_metrics_are_prometheus_text(client: Client, running_server: Any) -> None:
    _assert_serving(client)
    status, data = _request(running_server.http_url, "GET", "/metrics")
    assert status == 200 and b'tessera_request_success_total{model="tabular",version="1"}' in data


def test_openapi_document_lists_the_routes(running_server: Any) -> None:
    status, data = _request(running_server.http_url, "GET", "/v2/openapi.json")
    document = json.loads(data)
    assert status == 200 and document["openapi"].startswith("3.")
    routes = {"/v2/models/{name}/infer", "/v2/repository/models/{name}/load", "/metrics"}
    assert routes <= set(document["paths"])


OWN_LIMIT_BYTES = 4096


@pytest.fixture
def own_server(server_factory: Callable[..., Any], sample_repository: Path, tmp_path: Path) -> Any:
    """A server of its own over a copy of `fixed`: free to load and unload, with a small body limit."""
    shutil.copytree(sample_repository / "fixed", tmp_path / "fixed")
    return server_factory(tmp_path, http_max_body_bytes=OWN_LIMIT_BYTES)


@pytest.fixture
def own_client(own_server: Any) -> Iterator[Client]:
    c = Client(own_server.http_url)
    yield c
    c.close()


def test_unload_then_load_brings_the_model_back(own_client: Client) -> None:
    own_client.unload_model("fixed")
    assert not own_client.is_model_ready("fixed")
    status, message = _failure(lambda: own_client.infer("fixed", _inputs(sample_inputs("fixed"))))
    assert status == "404" and message == "unknown model: 'fixed'"
    own_client.load_model("fixed")
    assert own_client.is_model_ready("fixed")
    assert own_client.infer("fixed", _inputs(sample_inputs("fixed"))).as_numpy("y").shape == (2, 2)


def test_load_with_config_and_file_override_creates_a_model(own_server: Any, own_client: Client) -> None:
    onnx_bytes = (own_server.repository / "fixed" / "1" / "model.onnx").read_bytes()
    config = json.dumps({"name": "copy", "max_batch_size": 0,
                         "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [2, 3]}],
                         "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [2, 2]}]})
    own_client.load_model("copy", config=config, files={"file:1/model.onnx": onnx_bytes})
    assert own_client.is_model_ready("copy")
    assert own_client.infer("copy", _inputs(sample_inputs("fixed"))).as_numpy("y").shape == (2, 2)


@pytest.mark.parametrize(("body", "message"), [
    pytest.param(b'{"parameters": {"config": 5}}',
                 "model load request: parameter 'config' must be a string of JSON", id="config-not-string"),
    pytest.param(b'{"parameters": {"config": "{}", "file:1/model.onnx": "%%%"}}',
                 "model load request: parameter 'file:1/model.onnx' is not valid base64", id="bad-base64"),
    pytest.param(b'{"parameters": {"file:1/model.onnx": "AAAA"}}',
                 "model load request: file overrides need the 'config' parameter too",
                 id="files-without-config"),
    pytest.param(b"{oops", "malformed JSON in model load request", id="malformed-json"),
])
def test_malformed_load_request_is_bad_request(running_server: Any, body: bytes, message: str) -> None:
    status, error = _error(running_server.http_url, "/v2/repository/models/fixed/load", body,
                           {"Content-Type": "application/json"})
    assert status == 400 and message in error


# -- bad requests: precise status and message, and the server keeps serving ------------------------
@pytest.mark.parametrize(("model", "feeds", "status", "text"), [
    pytest.param("tabular", {"features": np.zeros((2, 7), np.float32)}, "400",
                 "input 'features': expected FP32[-1,8], got FP32[2,7]", id="wrong-shape"),
    pytest.param("tabular", {"features": np.zeros((2, 8), np.float64)}, "400",
                 "input 'features': expected FP32[-1,8], got FP64[2,8]", id="wrong-dtype"),
    pytest.param("two_input", {"a": np.zeros((1, 4), np.int32)}, "400",
                 "missing input 'b' (FP32[-1,4]) for model 'two_input'", id="missing-input"),
    pytest.param("two_input", {"a": np.zeros((1, 4), np.int32), "b": np.zeros((1, 4), np.float32),
                               "c": np.zeros((1, 4), np.float32)}, "400",
                 "unexpected input 'c' for model 'two_input'; it takes: a, b", id="extra-input"),
    pytest.param("nope", {"x": np.zeros((1, 2), np.float32)}, "404", "unknown model: 'nope'",
                 id="unknown-model"),
])
@pytest.mark.parametrize("binary", BINARY)
def test_bad_inputs_get_precise_errors_and_the_server_keeps_serving(
        client: Client, model: str, feeds: Feeds, status: str, text: str,
        binary: bool) -> None:
    assert _failure(lambda: client.infer(model, _inputs(feeds, binary))) == (status, text)
    _assert_serving(client)


def test_unknown_version_is_not_found(client: Client) -> None:
    call = lambda: client.infer("tabular", _inputs(sample_inputs("tabular")), model_version="7")  # noqa: E731
    assert _failure(call) == ("404", "unknown version '7' of model 'tabular'")
    _assert_serving(client)


def _binary_body(size: int, payload: bytes) -> tuple[bytes, dict[str, str]]:
    """A binary request for `tabular` and the Inference-Header-Content-Length that fits it."""
    header = orjson.dumps({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 8],
                                       "parameters": {"binary_data_size": size}}]})
    return header + payload, {"Inference-Header-Content-Length": str(len(header))}


BINARY_BODY, BINARY_HEADERS = _binary_body(32, b"\0" * 32)
JSON_LENGTH = int(BINARY_HEADERS["Inference-Header-Content-Length"])


@pytest.mark.parametrize(("body", "headers", "text"), [
    pytest.param(b'{"inputs": [', {}, "malformed JSON in inference request", id="malformed-json"),
    pytest.param(b'{"inputs": 3}', {}, "inference request: field 'inputs' must be an array, got number",
                 id="inputs-not-a-list"),
    pytest.param(*_binary_body(28, b"\0" * 28),
                 "input 'features': FP32[1,8] needs 32 bytes of raw data, got 28", id="binary-size-wrong"),
    pytest.param(BINARY_BODY, {"Inference-Header-Content-Length": "abc"},
                 "Inference-Header-Content-Length must be an integer, got 'abc'",
                 id="header-length-not-a-number"),
    pytest.param(BINARY_BODY, {"Inference-Header-Content-Length": "100000"},
                 f"Inference-Header-Content-Length is 100000, outside the body's {len(BINARY_BODY)} bytes",
                 id="header-length-past-the-body"),
    pytest.param(BINARY_BODY, {"Inference-Header-Content-Length": str(JSON_LENGTH - 3)},
                 "malformed JSON in inference request", id="header-length-too-short"),
    pytest.param(BINARY_BODY, {}, "malformed JSON in inference request", id="binary-without-header-length"),
    pytest.param(orjson.dumps({"inputs": [{"name": "features", "datatype": "BF16", "shape": [1, 8],
                                           "data": [0] * 8}]}), {},
                 "input 'features': BF16 data must be sent as binary data (binary_data_size)",
                 id="json-bf16"),
])
def test_malformed_infer_body_is_bad_request_and_the_server_keeps_serving(
        client: Client, running_server: Any, body: bytes, headers: dict[str, str], text: str) -> None:
    status, error = _error(running_server.http_url, "/v2/models/tabular/infer", body, headers)
    assert status == 400 and error.startswith(text), error  # JSON errors go on with the parser's detail
    _assert_serving(client)


def test_raw_binary_request_with_the_right_header_is_served(running_server: Any) -> None:
    status, _ = _request(running_server.http_url, "POST", "/v2/models/tabular/infer", BINARY_BODY,
                         BINARY_HEADERS)
    assert status == 200


@pytest.mark.parametrize(("method", "path", "status", "text"), [
    pytest.param("GET", "/v3/nothing", 404, "no route for GET /v3/nothing", id="unknown-route"),
    pytest.param("GET", "/v2/models/tabular/infer", 405, "Method Not Allowed", id="wrong-method"),
])
def test_routing_errors_have_the_error_body(running_server: Any, method: str, path: str, status: int,
                                            text: str) -> None:
    got, data = _request(running_server.http_url, method, path)
    assert got == status and orjson.loads(data) == {"error": text}


def test_server_not_ready_answers_400(running_server: Any) -> None:
    status, _ = _request(running_server.http_url, "GET", "/v2/models/nope/ready")
    assert status == 400


def test_body_over_the_limit_is_refused_from_content_length(own_server: Any, own_client: Client) -> None:
    body = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3],
                                     "data": [0.0] * 6, "pad": "x" * 5000}]})
    status, error = _error(own_server.http_url, "/v2/models/fixed/infer", body)
    assert status == 413
    assert error == f"request body of {len(body)} bytes is over the limit of {OWN_LIMIT_BYTES} bytes"
    assert own_client.infer("fixed", _inputs(sample_inputs("fixed"))).as_numpy("y").shape == (2, 2)


def test_tritonclient_sees_413_for_a_body_over_the_limit(own_client: Client) -> None:
    feeds = {"x": np.zeros((2, 3), np.float32), "pad": np.zeros(2000, np.float32)}
    status, message = _failure(lambda: own_client.infer("fixed", _inputs(feeds)))
    assert status == "413" and message.endswith(f"is over the limit of {OWN_LIMIT_BYTES} bytes")
    assert own_client.infer("fixed", _inputs(sample_inputs("fixed"))).as_numpy("y").shape == (2, 2)


def test_chunked_body_over_the_limit_is_refused_while_streaming(own_server: Any) -> None:
    host, port = own_server.http_url.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", "/v2/models/fixed/infer", body=iter([b"x" * 3000, b"x" * 3000]),
                     encode_chunked=True)
        response = conn.getresponse()
        status, error = response.status, orjson.loads(response.read())["error"]
    finally:
        conn.close()
    assert (status, error) == (413, f"request body is over the limit of {OWN_LIMIT_BYTES} bytes")


def test_compressed_body_that_expands_past_the_limit_is_refused(own_server: Any) -> None:
    import gzip

    body = gzip.compress(b" " * 100_000)
    status, error = _error(own_server.http_url, "/v2/models/fixed/infer", body, {"Content-Encoding": "gzip"})
    assert (status, error) == (413, f"decompressed request body is over the limit of {OWN_LIMIT_BYTES} bytes")


def test_unknown_content_encoding_is_not_implemented(running_server: Any) -> None:
    status, error = _error(running_server.http_url, "/v2/models/fixed/infer", b"{}",
                           {"Content-Encoding": "br"})
    assert (status, error) == (501, "Content-Encoding 'br' is not supported; use gzip or deflate")


def test_load_with_base64_files_uses_the_body_limit(own_server: Any) -> None:
    big = {"parameters": {"config": "{}", "file:1/model.onnx": base64.b64encode(b"\0" * 8000).decode()}}
    status, error = _error(own_server.http_url, "/v2/repository/models/x/load", orjson.dumps(big),
                           {"Content-Type": "application/json"})
    assert status == 413 and f"over the limit of {OWN_LIMIT_BYTES} bytes" in error
