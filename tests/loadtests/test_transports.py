"""The HTTP/1.1 client's response parsing, and an HTTP open loop against a tiny asyncio server."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from loadtests.encoding import encode_payloads
from loadtests.inputs import ModelInfo, TensorInfo, random_samples
from loadtests.runner import run_step
from loadtests.spec import LoadSpec, Target
from loadtests.transports import _parse_response, _split

INFO = ModelInfo("m", (TensorInfo("x", "FP32", (-1, 4)),), ())


def test_content_length_response_is_complete_only_with_its_whole_body() -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"
    assert _parse_response(bytearray(head + b"abc")) is None
    assert _parse_response(bytearray(head + b"abcde")) == (200, True)


def test_chunked_response_ends_at_the_zero_chunk() -> None:
    head = b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert _parse_response(bytearray(head + b"3\r\nabc\r\n")) is None
    assert _parse_response(bytearray(head + b"3\r\nabc\r\n0\r\n\r\n")) == (400, True)


def test_split_request_is_its_head_then_its_body() -> None:
    request = encode_payloads(Target(port=1, protocol="http", model="m"), random_samples(INFO, count=1))[0]
    head, body = _split(request)
    assert head.endswith(b"\r\n\r\n") and head.startswith(b"POST /v2/models/m/infer HTTP/1.1")
    assert head + body == request and int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]) == len(body)


def test_connection_close_is_not_reused() -> None:
    raw = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    assert _parse_response(bytearray(raw)) == (503, False)


@pytest.fixture
def http_server_port() -> Iterator[int]:
    """Answers every request with 200, except each 10th with 503 (and a chunked body)."""
    loop = asyncio.new_event_loop()
    count = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        while True:
            head = await reader.readuntil(b"\r\n\r\n") if not reader.at_eof() else b""
            if not head:
                break
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            await reader.readexactly(length)
            count += 1
            if count % 10 == 0:
                writer.write(b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbusy\r\n0\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        writer.close()

    server = loop.run_until_complete(asyncio.start_server(handle, "127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()


@pytest.mark.parametrize("split_writes", [False, True], ids=["one-write", "split-writes"])
def test_http_open_loop_counts_successes_and_status_errors(http_server_port: int, split_writes: bool) -> None:
    target = Target(port=http_server_port, protocol="http", model="m", request_timeout_s=10.0,
                    http_split_writes=split_writes)
    payloads = encode_payloads(target, random_samples(INFO, count=2))
    spec = LoadSpec(mode="open", rate_rps=200, arrival="constant", duration_s=1.0, warmup_s=0.0)
    step = run_step(target, spec, payloads, inline=True)
    total = step.ok + step.error_count
    assert 190 <= total <= 201
    assert set(step.errors) == {"http_503"}
    assert step.errors["http_503"] == pytest.approx(total / 10, abs=2)
    assert step.latency.count == step.ok
