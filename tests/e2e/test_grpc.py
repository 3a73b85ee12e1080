"""End-to-end over gRPC with unmodified tritonclient: metadata, inference, streaming, errors."""

from __future__ import annotations

import asyncio
import queue
from functools import partial

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from .reference import run_reference, sample_inputs

SAMPLES = ["tabular", "two_input", "fixed"]


def _inputs(feeds: dict[str, np.ndarray], module: object = grpcclient) -> list[grpcclient.InferInput]:
    out = []
    for name, array in feeds.items():
        item = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))  # type: ignore[attr-defined]
        item.set_data_from_numpy(array)
        out.append(item)
    return out


@pytest.fixture(scope="module")
def client(running_server):
    with grpcclient.InferenceServerClient(running_server.grpc_url) as c:
        yield c


def test_health_and_server_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "tessera"
    assert "binary_tensor_data" in meta["extensions"]


@pytest.mark.parametrize("model", SAMPLES)
def test_model_metadata_and_config_describe_the_model(client, model):
    assert client.is_model_ready(model)
    meta = client.get_model_metadata(model, as_json=True)
    assert meta["name"] == model and meta["versions"] == ["1"]
    config = client.get_model_config(model, as_json=True)["config"]
    assert config["name"] == model
    assert [i["name"] for i in meta["inputs"]] == [i["name"] for i in config["input"]]


@pytest.mark.parametrize("model", SAMPLES)
def test_sync_infer_matches_in_process_onnxruntime(client, running_server, model):
    feeds = sample_inputs(model)
    result = client.infer(model, _inputs(feeds))
    expected = run_reference(running_server.repository, model, feeds)
    for name, value in expected.items():
        got = result.as_numpy(name)
        assert got.dtype == value.dtype
        np.testing.assert_allclose(got, value, rtol=0, atol=1e-6)
    assert result.get_response().model_version == "1"


@pytest.mark.parametrize("model", SAMPLES)
async def test_aio_infer_matches_in_process_onnxruntime(running_server, model):
    feeds = sample_inputs(model, seed=5)
    async with grpcaio.InferenceServerClient(running_server.grpc_url) as c:
        result = await c.infer(model, _inputs(feeds, grpcaio))
    for name, value in run_reference(running_server.repository, model, feeds).items():
        np.testing.assert_allclose(result.as_numpy(name), value, rtol=0, atol=1e-6)


def test_async_infer_with_callback(client, running_server):
    results: queue.Queue = queue.Queue()
    feeds = sample_inputs("tabular", rows=2, seed=9)
    client.async_infer("tabular", _inputs(feeds), partial(lambda q, result, error: q.put((result, error)), results))
    result, error = results.get(timeout=30)
    assert error is None
    expected = run_reference(running_server.repository, "tabular", feeds)
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected["probabilities"], atol=1e-6)


def test_streaming_answers_each_request_and_survives_errors(running_server):
    results: queue.Queue = queue.Queue()
    feeds = sample_inputs("two_input", rows=2, seed=3)
    bad = {"a": np.zeros((2, 5), np.int32), "b": np.zeros((2, 4), np.float32)}
    with grpcclient.InferenceServerClient(running_server.grpc_url) as c:
        c.start_stream(callback=partial(lambda q, result, error: q.put((result, error)), results))
        c.async_stream_infer("two_input", _inputs(feeds), request_id="good-1")
        c.async_stream_infer("two_input", _inputs(bad), request_id="bad")
        c.async_stream_infer("two_input", _inputs(feeds), request_id="good-2")
        answers = [results.get(timeout=30) for _ in range(3)]
        c.stop_stream()
    errors = [e for _, e in answers if e is not None]
    oks = [r for r, e in answers if e is None]
    assert len(errors) == 1 and "input 'a': expected INT32[-1,4], got INT32[2,5]" in str(errors[0])
    assert sorted(r.get_response().id for r in oks) == ["good-1", "good-2"]
    expected = run_reference(running_server.repository, "two_input", feeds)
    for r in oks:
        np.testing.assert_allclose(r.as_numpy("sum"), expected["sum"], atol=1e-6)


def test_requested_output_subset(client):
    feeds = sample_inputs("two_input")
    result = client.infer("two_input", _inputs(feeds), outputs=[grpcclient.InferRequestedOutput("product")])
    assert [o.name for o in result.get_response().outputs] == ["product"]
    assert result.as_numpy("sum") is None


def test_typed_contents_are_accepted(running_server):
    """Clients that send `contents` instead of raw bytes (not tritonclient's default) work too."""
    x = np.arange(16, dtype=np.float32).reshape(2, 8)
    request = service_pb2.ModelInferRequest(model_name="tabular")
    tensor = request.inputs.add(name="features", datatype="FP32", shape=[2, 8])
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    with grpc.insecure_channel(running_server.grpc_url) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    probs = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(2, 3)
    expected = run_reference(running_server.repository, "tabular", {"features": x})
    np.testing.assert_allclose(probs, expected["probabilities"], atol=1e-6)


@pytest.mark.parametrize("datatype", ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32",
                                      "INT64", "FP16", "FP32", "FP64", "BYTES"])
def test_every_datatype_round_trips(client, datatype):
    rng = np.random.default_rng(1)
    if datatype == "BYTES":
        data = np.array([[f"row{r}-{c}".encode() for c in range(4)] for r in range(2)], dtype=np.object_)
    elif datatype == "BOOL":
        data = rng.integers(0, 2, (2, 4)).astype(bool)
    else:
        from tritonclient.utils import triton_to_np_dtype
        data = (rng.random((2, 4)) * 100).astype(triton_to_np_dtype(datatype))
    item = grpcclient.InferInput("INPUT0", [2, 4], datatype)
    item.set_data_from_numpy(data)
    result = client.infer(f"identity_{datatype.lower()}", [item])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)


def _expect_error(call, code: grpc.StatusCode, text: str) -> None:
    with pytest.raises(InferenceServerException) as info:
        call()
    assert info.value.status() == f"StatusCode.{code.name}", info.value
    assert text in info.value.message(), info.value.message()


@pytest.mark.parametrize(("model", "feeds", "code", "text"), [
    pytest.param("tabular", {"features": np.zeros((2, 7), np.float32)}, grpc.StatusCode.INVALID_ARGUMENT,
                 "input 'features': expected FP32[-1,8], got FP32[2,7]", id="wrong-shape"),
    pytest.param("tabular", {"features": np.zeros((2, 8), np.float64)}, grpc.StatusCode.INVALID_ARGUMENT,
                 "input 'features': expected FP32[-1,8], got FP64[2,8]", id="wrong-dtype"),
    pytest.param("tabular", {"features": np.zeros((65, 8), np.float32)}, grpc.StatusCode.INVALID_ARGUMENT,
                 "batch size 65 exceeds the model's max_batch_size 64", id="batch-too-large"),
    pytest.param("two_input", {"a": np.zeros((1, 4), np.int32)}, grpc.StatusCode.INVALID_ARGUMENT,
                 "missing input 'b'", id="missing-input"),
    pytest.param("tabular", {"features": np.zeros((1, 8), np.float32), "extra": np.zeros((1, 8), np.float32)},
                 grpc.StatusCode.INVALID_ARGUMENT, "unexpected input 'extra'", id="extra-input"),
    pytest.param("fixed", {"x": np.zeros((1, 2, 3), np.float32)}, grpc.StatusCode.INVALID_ARGUMENT,
                 "input 'x': expected FP32[2,3], got FP32[1,2,3]", id="unbatched-model-gets-batch"),
    pytest.param("nope", {"x": np.zeros((1, 2), np.float32)}, grpc.StatusCode.NOT_FOUND,
                 "unknown model: 'nope'", id="unknown-model"),
])
def test_bad_requests_get_precise_errors_and_the_server_keeps_serving(client, model, feeds, code, text):
    _expect_error(lambda: client.infer(model, _inputs(feeds)), code, text)
    assert client.infer("tabular", _inputs(sample_inputs("tabular"))).as_numpy("label").shape == (3, 1)


def test_unknown_version_is_not_found(client):
    _expect_error(lambda: client.infer("tabular", _inputs(sample_inputs("tabular")), model_version="7"),
                  grpc.StatusCode.NOT_FOUND, "unknown version '7' of model 'tabular'")


def _raw_request(raw: list[bytes], shape: list[int]) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="tabular")
    request.inputs.add(name="features", datatype="FP32", shape=shape)
    request.raw_input_contents.extend(raw)
    return request


@pytest.mark.parametrize(("request_", "text"), [
    pytest.param(_raw_request([b"\0" * 60], [2, 8]), "FP32[2,8] needs 64 bytes of raw data, got 60",
                 id="raw-size-mismatch"),
    pytest.param(_raw_request([b"\0" * 64, b"\0" * 4], [2, 8]), "raw_input_contents has 2 entries for 1 inputs",
                 id="raw-count-mismatch"),
    pytest.param(_raw_request([b"\0" * 64], [2, -8]), "negative dimension", id="negative-dim"),
])
def test_malformed_raw_contents_are_invalid_argument(running_server, request_, text):
    with grpc.insecure_channel(running_server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request_)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert text in info.value.details()


def test_message_over_the_limit_is_rejected_and_server_keeps_serving(server_factory, sample_repository):
    server = server_factory(sample_repository, grpc_max_message_bytes=64 * 1024)
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        big = {"features": np.zeros((64, 8), np.float32)}
        c.infer("tabular", _inputs(big))  # 2 KB: fine
        item = grpcclient.InferInput("INPUT0", [8, 4], "BYTES")
        item.set_data_from_numpy(np.full((8, 4), b"x" * 4096, dtype=np.object_))
        _expect_error(lambda: c.infer("identity_bytes", [item]), grpc.StatusCode.RESOURCE_EXHAUSTED, "")
        assert c.infer("tabular", _inputs(sample_inputs("tabular"))).as_numpy("label").shape == (3, 1)


def test_health_service_reports_serving(running_server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(running_server.grpc_url) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_concurrent_clients_are_batched_and_each_gets_its_own_answer(running_server):
    rows = np.random.default_rng(42).standard_normal((32, 8)).astype(np.float32)
    async with grpcaio.InferenceServerClient(running_server.grpc_url) as c:
        before = c  # one channel shared by 32 concurrent callers
        results = await asyncio.gather(*(
            before.infer("tabular", _inputs({"features": rows[i : i + 1]}, grpcaio), request_id=str(i))
            for i in range(32)
        ))
    expected = run_reference(running_server.repository, "tabular", {"features": rows})["probabilities"]
    for i, result in enumerate(results):
        assert result.get_response().id == str(i)
        np.testing.assert_allclose(result.as_numpy("probabilities")[0], expected[i], atol=1e-6)
    with grpcclient.InferenceServerClient(running_server.grpc_url) as c:
        stats = c.get_inference_statistics("tabular", as_json=True)["model_stats"][0]
    assert int(stats["execution_count"]) < int(stats["inference_count"])
    assert any(int(b["batch_size"]) > 1 for b in stats["batch_stats"])
