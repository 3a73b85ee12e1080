"""The harness's own gRPC client against a real grpc.aio server on an ephemeral loopback port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from loadtests.grpc_h2 import GrpcStatusError, grpc_message, open_connection
from loadtests.spec import Target
from loadtests.transports import GrpcClient

PATH = "/test.Echo/Call"
Handler = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]


async def start_server(handler: Handler, port: int = 0, **options: Any) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(options=list(options.items()))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Echo", {
        "Call": grpc.unary_unary_rpc_method_handler(handler),
    })])
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, port


async def answer_length(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    """Answers with the request's length, and a body as long as the request asks (b'big:N')."""
    if request.startswith(b"big:"):
        return bytes(int(request[4:]))
    if request == b"fail":
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "input 'x': expected shape [-1, 4], got [2, 3] (%, é)")
    if request == b"slow":
        await asyncio.sleep(10)
    return str(len(request)).encode()


@pytest.fixture
async def server_port() -> AsyncIterator[int]:
    server, port = await start_server(answer_length, **{"grpc.max_receive_message_length": 8 << 20})
    yield port
    await server.stop(None)


async def test_calls_share_one_connection_concurrently(server_port: int) -> None:
    connection = await open_connection("127.0.0.1", server_port, PATH, timeout_s=5)
    await asyncio.gather(*(connection.call(grpc_message(b"x" * i)) for i in range(200)))
    assert connection.usable
    connection.close()


async def test_error_status_and_message_reach_the_caller(server_port: int) -> None:
    connection = await open_connection("127.0.0.1", server_port, PATH, timeout_s=5)
    with pytest.raises(GrpcStatusError) as raised:
        await connection.call(grpc_message(b"fail"))
    assert raised.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "expected shape [-1, 4], got [2, 3] (%, é)" in str(raised.value)
    await connection.call(grpc_message(b"ok"))  # the connection carries on
    connection.close()


async def test_messages_larger_than_windows_and_frames_go_both_ways(server_port: int) -> None:
    connection = await open_connection("127.0.0.1", server_port, PATH, timeout_s=10)
    # 3 MiB out: past the 64 KiB initial windows and 16 KiB frames; 3 MiB back.
    await asyncio.gather(connection.call(grpc_message(bytes(3 << 20))), connection.call(grpc_message(b"big:3145728")))
    connection.close()


async def test_deadline_ends_the_call_and_the_connection_stays_usable(server_port: int) -> None:
    """Whichever side acts on the deadline first: our timer (TimeoutError, RST_STREAM sent) or the
    server, which reads the grpc-timeout header we send (DEADLINE_EXCEEDED)."""
    connection = await open_connection("127.0.0.1", server_port, PATH, timeout_s=1.0)
    with pytest.raises((TimeoutError, GrpcStatusError)) as raised:
        await connection.call(grpc_message(b"slow"))
    if isinstance(raised.value, GrpcStatusError):
        assert raised.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
    await connection.call(grpc_message(b"after"))
    assert not connection._streams
    connection.close()


async def test_the_servers_stream_limit_is_respected() -> None:
    in_flight = peak = 0

    async def counting(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return b""

    server, port = await start_server(counting, **{"grpc.max_concurrent_streams": 4})
    try:
        connection = await open_connection("127.0.0.1", port, PATH, timeout_s=5)
        await asyncio.gather(*(connection.call(grpc_message(b"")) for _ in range(40)))
        assert 1 < peak <= 4
        connection.close()
    finally:
        await server.stop(None)


async def test_client_reopens_its_connection_after_the_server_comes_back() -> None:
    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    server, port = await _start_any_method_server(echo, 0)
    client = GrpcClient(Target(port=port, model="m", request_timeout_s=5), [b"abc"])
    try:
        await client.connect(1)
        await client.infer(0)
        await server.stop(None)
        with pytest.raises((ConnectionError, GrpcStatusError, OSError)):
            await client.infer(0)
        server, _ = await _start_any_method_server(echo, port)
        await client.infer(0)
    finally:
        await client.close()
        await server.stop(None)


async def _start_any_method_server(handler: Handler, port: int) -> tuple[grpc.aio.Server, int]:
    class AnyMethod(grpc.GenericRpcHandler):
        def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(handler)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers([AnyMethod()])
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, bound


async def test_a_cancelled_call_frees_its_stream(server_port: int) -> None:
    connection = await open_connection("127.0.0.1", server_port, PATH, timeout_s=5)
    slow = asyncio.create_task(connection.call(grpc_message(b"slow")))
    await asyncio.sleep(0.1)
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow
    assert not connection._streams  # nothing left counting against the server's stream limit
    await connection.call(grpc_message(b"after"))
    connection.close()
