"""Our gRPC server against clients no one here wrote: grpcio's own Python client (sync and aio), tritonclient."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from server._generated import rollout_pb2

from ..conftest import RunningServer
from .conftest import EchoServer

BIG = 80 << 20
BIG_OPTIONS = [("grpc.max_receive_message_length", BIG), ("grpc.max_send_message_length", BIG)]


def _unary(channel: grpc.Channel, method: str) -> grpc.UnaryUnaryMultiCallable:
    return channel.unary_unary(f"/test.Echo/{method}")


@pytest.fixture(scope="module")
def ours(servers_by_grpc_server) -> RunningServer:
    return servers_by_grpc_server("ours")


def test_unary_call_sync_client(echo: EchoServer) -> None:
    with grpc.insecure_channel(echo.url) as channel:
        assert _unary(channel, "Echo")(b"hello", timeout=10) == b"hello"
        assert _unary(channel, "Echo")(b"", timeout=10) == b""


async def test_unary_call_aio_client(echo: EchoServer) -> None:
    async with grpc.aio.insecure_channel(echo.url) as channel:
        assert await channel.unary_unary("/test.Echo/Echo")(b"hi", timeout=10) == b"hi"


@pytest.mark.parametrize("compression", [pytest.param(grpc.Compression.Gzip, id="gzip"),
                                         pytest.param(grpc.Compression.Deflate, id="deflate")])
def test_compressed_requests_are_inflated(echo: EchoServer, compression: grpc.Compression) -> None:
    body = b"tessera " * 50_000
    with grpc.insecure_channel(echo.url, compression=compression) as channel:
        assert _unary(channel, "Echo")(body, timeout=10) == body


def test_gzip_inference_through_tritonclient(ours: RunningServer) -> None:
    with grpcclient.InferenceServerClient(ours.grpc_url) as client:
        item = grpcclient.InferInput("features", [2, 8], "FP32")
        item.set_data_from_numpy(np.ones((2, 8), np.float32))
        result = client.infer("tabular", [item], compression_algorithm="gzip")
    assert result.as_numpy("probabilities").shape == (2, 3)


def test_a_64_mib_message_moves_both_ways(echo: EchoServer) -> None:
    body = np.random.default_rng(0).bytes(64 << 20)
    with grpc.insecure_channel(echo.url, options=BIG_OPTIONS) as channel:
        assert _unary(channel, "Echo")(body, timeout=60) == body
        assert len(_unary(channel, "Big")(str(64 << 20).encode(), timeout=60)) == 64 << 20


def test_a_64_mib_tensor_through_the_model_path(ours: RunningServer) -> None:
    element = b"x" * ((16 << 20) - 1024)  # four elements: just under the 64 MiB message limit
    request = service_pb2.ModelInferRequest(model_name="identity_bytes")
    request.inputs.add(name="INPUT0", datatype="BYTES", shape=[1, 4])
    request.raw_input_contents.append(b"".join(len(element).to_bytes(4, "little") + element for _ in range(4)))
    with grpc.insecure_channel(ours.grpc_url, options=BIG_OPTIONS) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
    assert response.raw_output_contents[0] == request.raw_input_contents[0]


def test_deadline_exceeded_cancels_the_handler(echo: EchoServer) -> None:
    before = echo.state.cancelled
    with grpc.insecure_channel(echo.url) as channel, pytest.raises(grpc.RpcError) as raised:
        _unary(channel, "Slow")(b"x", timeout=0.3)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    deadline = time.monotonic() + 5
    while echo.state.cancelled == before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert echo.state.cancelled == before + 1


async def test_cancelling_50_in_flight_calls_cancels_their_handlers(echo: EchoServer) -> None:
    started, cancelled = echo.state.started, echo.state.cancelled
    async with grpc.aio.insecure_channel(echo.url) as channel:
        slow = channel.unary_unary("/test.Echo/Slow")
        calls = [slow(b"x", timeout=30) for _ in range(50)]
        while echo.state.started < started + 50:
            await asyncio.sleep(0.01)
        for call in calls:
            call.cancel()
        while echo.state.cancelled < cancelled + 50:
            await asyncio.sleep(0.01)
        assert await channel.unary_unary("/test.Echo/Echo")(b"still here", timeout=10) == b"still here"
    assert echo.state.cancelled == cancelled + 50


async def test_400_concurrent_calls_on_one_connection(echo: EchoServer) -> None:
    async with grpc.aio.insecure_channel(echo.url) as channel:
        call = channel.unary_unary("/test.Echo/Echo")
        answers = await asyncio.gather(*(call(str(i).encode(), timeout=30) for i in range(400)))
    assert answers == [str(i).encode() for i in range(400)]


async def test_400_concurrent_inferences_are_batched(ours: RunningServer) -> None:
    rows = np.random.default_rng(3).standard_normal((400, 8)).astype(np.float32)
    async with grpc.aio.insecure_channel(ours.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        def request(i: int) -> service_pb2.ModelInferRequest:
            r = service_pb2.ModelInferRequest(model_name="tabular", id=str(i))
            r.inputs.add(name="features", datatype="FP32", shape=[1, 8])
            r.raw_input_contents.append(rows[i].tobytes())
            return r

        answers = await asyncio.gather(*(stub.ModelInfer(request(i), timeout=30) for i in range(400)))
    assert [a.id for a in answers] == [str(i) for i in range(400)]
    with grpcclient.InferenceServerClient(ours.grpc_url) as client:
        stats = client.get_inference_statistics("tabular", as_json=True)["model_stats"][0]
    assert int(stats["execution_count"]) < int(stats["inference_count"])


async def test_a_2000_message_bidirectional_stream(echo: EchoServer) -> None:
    async with grpc.aio.insecure_channel(echo.url) as channel:
        chat = channel.stream_stream("/test.Echo/Chat")

        async def requests():
            for i in range(2000):
                yield str(i).encode()

        answers = [answer async for answer in chat(requests(), timeout=60)]
    assert answers == [str(i).encode() for i in range(2000)]


async def test_model_stream_infer_with_2000_requests(ours: RunningServer) -> None:
    async with grpc.aio.insecure_channel(ours.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        async def requests():
            # `mlp` (queue of 4,096): all 2,000 may be in flight at once, more than `tabular` queues (1,024).
            for i in range(2000):
                r = service_pb2.ModelInferRequest(model_name="mlp", id=str(i))
                r.inputs.add(name=name, datatype="FP32", shape=[1, 64])
                r.raw_input_contents.append(np.full(64, i, np.float32).tobytes())
                yield r

        name = (await stub.ModelMetadata(service_pb2.ModelMetadataRequest(name="mlp"), timeout=10)).inputs[0].name
        answers = [a async for a in stub.ModelStreamInfer(requests(), timeout=120)]
    assert sorted(int(a.infer_response.id) for a in answers) == list(range(2000))
    assert [a.error_message for a in answers if a.error_message] == []


def test_8_kb_of_custom_metadata_reaches_the_handler(echo: EchoServer) -> None:
    metadata = (("x-custom", "v" * 8192), ("tessera-routing-key", "user-42"), ("x-blob-bin", b"\x00\xff" * 10))
    with grpc.insecure_channel(echo.url) as channel:
        answer = _unary(channel, "Metadata")(b"", metadata=metadata, timeout=10)
    seen = dict(echo.state.metadata)
    assert seen["x-custom"] == "v" * 8192
    assert seen["tessera-routing-key"] == "user-42"
    assert seen["x-blob-bin"] == b"\x00\xff" * 10
    assert answer.startswith(b"ipv4:127.0.0.1:") and b"|True|{}" in answer


def test_keepalive_pings_every_second_are_answered(echo_factory) -> None:
    echo = echo_factory()
    options = [("grpc.keepalive_time_ms", 1000), ("grpc.keepalive_timeout_ms", 2000),
               ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0)]
    with grpc.insecure_channel(echo.url, options=options) as channel:
        echo_call = _unary(channel, "Echo")
        for i in range(4):
            assert echo_call(str(i).encode(), timeout=10) == str(i).encode()
            time.sleep(1.2)
        assert len(echo.server.connections) == 1  # the one connection was never dropped
    assert echo.server.counters["max_ping_strikes"] == 0


def test_health_check_and_watch(ours: RunningServer) -> None:
    with grpc.insecure_channel(ours.grpc_url) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as raised:
            stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()


def test_rollout_service_answers(ours: RunningServer) -> None:
    with grpc.insecure_channel(ours.grpc_url) as channel:
        get = channel.unary_unary("/tessera.rollout.RolloutService/GetRollout",
                                  request_serializer=rollout_pb2.RolloutRequest.SerializeToString,
                                  response_deserializer=rollout_pb2.RolloutStatus.FromString)
        assert get(rollout_pb2.RolloutRequest(model="tabular"), timeout=10).phase == "NONE"


def test_server_streaming_response(echo: EchoServer) -> None:
    with grpc.insecure_channel(echo.url) as channel:
        answers = list(channel.unary_stream("/test.Echo/Count")(b"100", timeout=10))
    assert answers == [str(i).encode() for i in range(100)]


@pytest.mark.parametrize("path", ["/test.Echo/Nope", "/nope.Service/Echo"])
def test_unknown_service_or_method_is_unimplemented(echo: EchoServer, path: str) -> None:
    with grpc.insecure_channel(echo.url) as channel, pytest.raises(grpc.RpcError) as raised:
        channel.unary_unary(path)(b"", timeout=10)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_status_and_percent_encoded_message_reach_the_client(echo: EchoServer) -> None:
    with grpc.insecure_channel(echo.url) as channel, pytest.raises(grpc.RpcError) as raised:
        _unary(channel, "Fail")(b"", timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == "input 'x': bad (100%, é)"


def test_message_over_the_limit_is_resource_exhausted(echo_factory) -> None:
    echo = echo_factory(max_message_bytes=1024)
    with grpc.insecure_channel(echo.url) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            _unary(channel, "Echo")(b"x" * 2048, timeout=10)
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _unary(channel, "Echo")(b"x" * 1000, timeout=10) == b"x" * 1000
