"""An echo service on our gRPC server, in a thread with its own uvloop loop, for transport tests.

The methods are raw bytes in and out, so what is tested is the transport, not the model path.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvloop

from server.app import _bind
from server.errors import InvalidInput
from server.grpc_api.context import CallContext
from server.grpc_api.h2 import H2Limits
from server.grpc_api.rpc import Rpc, route_table
from server.grpc_api.server import GrpcServer


class Raw:
    """A 'message' that is its bytes (FromString / SerializeToString as protobuf classes have)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    @classmethod
    def FromString(cls, data: bytes) -> Raw:
        return cls(data)

    def SerializeToString(self) -> bytes:
        return self.data


@dataclass
class EchoState:
    started: int = 0
    cancelled: int = 0
    big: int = 0
    metadata: list[Any] = field(default_factory=list)
    answering: int = 0  # an `Each` stream's messages being answered now
    most_answering: int = 0
    answers_cancelled: int = 0


class EachStream:
    """A StreamSession: each message answered by its own task, at most two at once. `sleep:S` answers after
    S seconds, `boom` raises outside any answer; anything else is answered at once."""

    in_flight = 2

    def __init__(self, state: EchoState, context: CallContext) -> None:
        self.state, self.context = state, context

    async def answer(self, message: Raw) -> None:
        state = self.state
        state.answering += 1
        state.most_answering = max(state.most_answering, state.answering)
        try:
            if message.data == b"boom":
                raise RuntimeError("boom")
            if message.data.startswith(b"sleep:"):
                await asyncio.sleep(float(message.data[6:]))
            await self.context.write(message)
        except asyncio.CancelledError:
            state.answers_cancelled += 1
            raise
        finally:
            state.answering -= 1


def echo_routes(state: EchoState) -> dict[bytes, Rpc]:
    async def echo(request: Raw, context: CallContext) -> Raw:
        return request

    async def big(request: Raw, context: CallContext) -> Raw:
        state.big += 1
        return Raw(bytes(int(request.data)))

    async def slow(request: Raw, context: CallContext) -> Raw:
        state.started += 1
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            state.cancelled += context.cancelled()
            raise
        return request

    async def sleep(request: Raw, context: CallContext) -> Raw:
        await asyncio.sleep(float(request.data))
        return request

    async def metadata(request: Raw, context: CallContext) -> Raw:
        state.metadata = list(context.invocation_metadata())
        remaining = context.time_remaining()
        return Raw(f"{context.peer()}|{remaining is not None}|{context.auth_context()}".encode())

    async def fail(request: Raw, context: CallContext) -> Raw:
        raise InvalidInput("input 'x': bad (100%, é)")

    async def chat(requests: AsyncIterator[Raw], context: CallContext) -> AsyncIterator[Raw]:
        async for request in requests:
            yield request

    async def stall(requests: AsyncIterator[Raw], context: CallContext) -> AsyncIterator[Raw]:
        await asyncio.sleep(3600)  # never reads its requests
        yield Raw(b"")

    async def count(request: Raw, context: CallContext) -> AsyncIterator[Raw]:
        for i in range(int(request.data)):
            yield Raw(str(i).encode())

    table = {
        "Echo": Rpc("unary_unary", echo, Raw), "Big": Rpc("unary_unary", big, Raw),
        "Slow": Rpc("unary_unary", slow, Raw), "Metadata": Rpc("unary_unary", metadata, Raw),
        "Fail": Rpc("unary_unary", fail, Raw), "Chat": Rpc("stream_stream", chat, Raw),
        "Count": Rpc("unary_stream", count, Raw), "Sleep": Rpc("unary_unary", sleep, Raw),
        "Stall": Rpc("stream_stream", stall, Raw),
        "Each": Rpc("stream_stream", chat, Raw, lambda context: EachStream(state, context)),
    }
    return route_table({"test.Echo": table})


@dataclass
class EchoServer:
    server: GrpcServer
    state: EchoState
    port: int
    loop: asyncio.AbstractEventLoop

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the server's loop and return its result."""
        future: Future[Any] = Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return future.result(10)


def serve_echo(limits: H2Limits, max_message_bytes: int, ssl_context: ssl.SSLContext | None = None
               ) -> tuple[EchoServer, Callable[[], None]]:
    loop = uvloop.new_event_loop()
    started: Future[EchoServer] = Future()
    stop = threading.Event()
    state = EchoState()

    async def main() -> None:
        server = GrpcServer(echo_routes(state), max_message_bytes=max_message_bytes, limits=limits,
                            ssl_context=ssl_context)
        port = await server.start(_bind("127.0.0.1", 0, reuse_port=False))
        started.set_result(EchoServer(server, state, port, loop))
        while not stop.is_set():
            await asyncio.sleep(0.02)
        await server.stop(1.0)

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    echo = started.result(30)

    def shutdown() -> None:
        stop.set()
        thread.join(30)
        loop.close()

    return echo, shutdown


@pytest.fixture
def echo_factory() -> Iterator[Callable[..., EchoServer]]:
    """`echo_factory(**H2Limits fields, max_message_bytes=...)`: an echo server with those limits."""
    stops: list[Callable[[], None]] = []

    def start(max_message_bytes: int = 80 << 20, ssl_context: ssl.SSLContext | None = None,
              **limits: Any) -> EchoServer:
        echo, shutdown = serve_echo(H2Limits(**limits), max_message_bytes, ssl_context)
        stops.append(shutdown)
        return echo

    yield start
    for shutdown in stops:
        shutdown()


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoServer]:
    server, shutdown = serve_echo(H2Limits(), 80 << 20)
    yield server
    shutdown()
