"""A `Call` driven directly, with a sink that records what it would send: the flow-control accounting
of a streaming call whose messages wait unread."""

from __future__ import annotations

import asyncio
from typing import Any

from server.grpc_api.calls import Call
from server.grpc_api.context import CallContext
from server.grpc_api.messages import prefixed
from server.grpc_api.rpc import Rpc

from .conftest import Raw


class RecordingSink:
    """A CallSink that records acknowledgements and the final header block."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.acknowledged = 0
        self.ended = False

    def send_headers(self, stream_id: int, block: bytes, end_stream: bool = False) -> None:
        self.ended = self.ended or end_stream

    def send_data(self, stream_id: int, data: bytes) -> None:
        pass

    def send_response(self, stream_id: int, message: bytes, trailers: bytes = b"") -> None:
        self.ended = True

    def acknowledge(self, stream_id: int, size: int) -> None:
        self.acknowledged += size

    def call_finished(self, call: Call) -> None:
        pass

    async def wait_writable(self, call: Call) -> None:
        pass


class Forever:
    """A session answering one message at a time, never finishing any."""

    in_flight = 1

    def __init__(self, context: Any) -> None:
        self.started = 0

    async def answer(self, message: Raw) -> None:
        self.started += 1
        await asyncio.sleep(3600)


def _held_call(sink: RecordingSink) -> tuple[Call, list[bytes]]:
    """A streaming call with three 80-byte messages fed: one answering, two held, the last one's bytes
    withheld from the peer (held_limit 100)."""
    rpc = Rpc("stream_stream", lambda requests, context: None, Raw, Forever)
    call = Call(sink, 1, rpc, CallContext((), "ipv4:127.0.0.1:1", {}, None), b"identity", 1 << 20, 100)
    call.start_streaming()
    frames = [prefixed(bytes(80)) for _ in range(3)]
    for frame in frames:
        call.on_data(frame, False)
    return call, frames


def test_a_reset_stream_gives_back_the_window_its_unread_messages_took() -> None:
    async def scenario() -> tuple[int, int, int]:
        sink = RecordingSink()
        call, frames = _held_call(sink)
        before = sink.acknowledged
        call.finished = True  # what the protocol does on RST_STREAM, before cancelling
        call.cancel()
        await asyncio.sleep(0)
        return before, sink.acknowledged, sum(len(f) for f in frames)

    before, after, fed = asyncio.run(scenario())
    assert before < fed  # the third message's bytes were withheld while it waited
    assert after == fed  # and given back once the stream was gone


def test_a_call_ended_by_an_error_gives_back_the_window_and_stops_its_messages() -> None:
    async def scenario() -> tuple[int, int, bool, int]:
        sink = RecordingSink()
        call, frames = _held_call(sink)
        task = next(iter(call._answering))
        bad = b"\x01" + (10).to_bytes(4, "big") + bytes(10)  # compressed flag without a grpc-encoding
        call.on_data(bad, False)
        await asyncio.sleep(0)
        return sink.acknowledged, sum(len(f) for f in frames) + len(bad), task.cancelled(), len(call._answering)

    acknowledged, fed, cancelled, answering = asyncio.run(scenario())
    assert acknowledged == fed
    assert cancelled and answering == 0  # the call was answered INTERNAL: nothing of it computes on


def test_a_session_that_cannot_start_fails_its_call_not_the_connection() -> None:
    def broken(context: Any) -> Any:
        raise RuntimeError("no session")

    async def scenario() -> tuple[bool, bool]:
        sink = RecordingSink()
        rpc = Rpc("stream_stream", lambda requests, context: None, Raw, broken)
        call = Call(sink, 1, rpc, CallContext((), "ipv4:127.0.0.1:1", {}, None), b"identity", 1 << 20, 100)
        call.start_streaming()
        return call.finished, sink.ended

    assert asyncio.run(scenario()) == (True, True)  # answered (trailers, end of stream), nothing raised
