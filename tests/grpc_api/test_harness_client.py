"""The load harness's own HTTP/2 client (loadtests/grpc_h2.py) against our server: the two share frames.py."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from loadtests.grpc_h2 import GrpcStatusError, grpc_message, open_connection

from .conftest import EchoServer


async def test_harness_calls_share_one_connection(echo: EchoServer) -> None:
    connection = await open_connection("127.0.0.1", echo.port, "/test.Echo/Echo", timeout_s=10)
    await asyncio.gather(*(connection.call(grpc_message(b"x" * i)) for i in range(300)))
    assert connection.usable
    connection.close()


async def test_harness_reads_our_error_trailers(echo: EchoServer) -> None:
    connection = await open_connection("127.0.0.1", echo.port, "/test.Echo/Fail", timeout_s=10)
    with pytest.raises(GrpcStatusError) as raised:
        await connection.call(grpc_message(b""))
    assert raised.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "bad (100%, é)" in str(raised.value)
    connection.close()
