"""One gRPC call on our server: its request messages in, its handler run, its answer out.

A `Call` is driven by the connection's protocol (server.py), which owns the HTTP/2 state; the call
only queues header blocks and messages through the small `CallSink` interface it is given.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import Coroutine
from typing import Any, Final, Protocol

import grpc

from .context import AbortError, CallContext
from .errors import failure
from .messages import (
    OK_TRAILERS,
    RESPONSE_HEADERS,
    MessageReader,
    MessageTooLarge,
    decompress,
    error_headers,
    prefixed,
)
from .rpc import Rpc, StreamSession

__all__ = ["Call", "CallSink"]


class CallSink(Protocol):
    """What a call may do to its stream (implemented by the connection's protocol)."""

    loop: asyncio.AbstractEventLoop

    def send_headers(self, stream_id: int, block: bytes, end_stream: bool = False) -> None: ...
    def send_data(self, stream_id: int, data: bytes) -> None: ...
    def send_response(self, stream_id: int, message: bytes, trailers: bytes = OK_TRAILERS) -> None:
        """Response headers, one message and OK trailers (`trailers`: with metadata): a whole unary answer."""
    def acknowledge(self, stream_id: int, size: int) -> None: ...
    def call_finished(self, call: Call) -> None: ...
    async def wait_writable(self, call: Call) -> None: ...


class Call:
    """A call from its HEADERS to its trailers. Runs on the event loop."""

    __slots__ = ("_answering", "_ended", "_held", "_requests", "_session", "_unacked", "_unread", "blocked_on_peer",
                 "context", "encoding", "finished", "headers_sent", "held_limit", "max_message_bytes", "messages",
                 "reader", "rpc", "sink", "stream_id", "task", "timer")

    def __init__(self, sink: CallSink, stream_id: int, rpc: Rpc, context: CallContext, encoding: bytes,
                 max_message_bytes: int, held_limit: int) -> None:
        self.sink = sink
        self.stream_id = stream_id
        self.rpc = rpc
        self.context = context
        self.encoding = encoding
        self.max_message_bytes = max_message_bytes
        self.held_limit = held_limit  # request bytes a streaming handler may leave unread before the window shuts
        self.reader = MessageReader(max_message_bytes)
        self.messages: list[bytes] = []
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.headers_sent = False
        self.finished = False
        self.blocked_on_peer = False  # waiting for the client's messages or window, not computing
        self._requests: asyncio.Queue[bytes | None] | None = None
        self._held = 0  # request bytes queued for a streaming handler and not yet read
        self._unacked = 0
        self._session: StreamSession | None = None
        self._answering: set[asyncio.Task[None]] = set()  # a session's messages being answered
        self._unread: deque[bytes] | None = None  # a session's messages waiting for a place
        self._ended = False  # a session's last message has come

    @property
    def busy(self) -> bool:
        """Computing, rather than waiting for the client's messages or window (an idle connection closes)."""
        if self._session is not None:
            return bool(self._answering) and not self.finished and not self.blocked_on_peer
        return self.task is not None and not self.task.done() and not self.blocked_on_peer

    # -- requests in --------------------------------------------------------------------------------
    def on_data(self, data: bytes, end_stream: bool) -> None:
        """DATA for this call (the protocol acknowledges nothing; the call decides when)."""
        try:
            bodies = [self._inflate(compressed, body) for compressed, body in self.reader.feed(data)]
        except MessageTooLarge as too_large:  # one name per handler: mypyc types a name by its first binding
            self.sink.acknowledge(self.stream_id, len(data))
            self.finish(grpc.StatusCode.RESOURCE_EXHAUSTED, str(too_large))
            return
        except ValueError as exc:
            self.sink.acknowledge(self.stream_id, len(data))
            self.finish(grpc.StatusCode.INTERNAL, str(exc))
            return
        if self.rpc.kind != "stream_stream":  # one request: held until the stream ends, bounded by the limit
            self.sink.acknowledge(self.stream_id, len(data))
            self.messages.extend(bodies)
            if len(self.messages) > 1:
                self.finish(grpc.StatusCode.INTERNAL, "more than one request message for a unary call")
            elif end_stream:
                self._start_unary()
            return
        if self._session is not None:
            self._take(bodies)
        elif self._requests is not None:  # None only when the call could not start (it is answered)
            for body in bodies:
                self._held += len(body)
                self._requests.put_nowait(body)
        if self._held <= self.held_limit:
            self.sink.acknowledge(self.stream_id, len(data) + self._unacked)
            self._unacked = 0
        else:
            self._unacked += len(data)
        if end_stream:
            self._end_requests()

    def _inflate(self, compressed: bool, body: bytes) -> bytes:
        if not compressed:
            return body
        if self.encoding == b"identity":
            raise ValueError("compressed flag set without a grpc-encoding")
        return decompress(body, self.encoding, self.max_message_bytes)

    def _end_requests(self) -> None:
        if self.reader.partial:
            self.finish(grpc.StatusCode.INTERNAL, "the stream ended inside a message")
        elif self._session is not None:
            self._ended = True  # answered once every message is
            self._answer_unread()
        elif self._requests is not None:
            self._requests.put_nowait(None)

    # -- running the handler --------------------------------------------------------------------------
    def start_streaming(self) -> None:
        """stream_stream: the handler starts at HEADERS and reads messages as they come; or, for a method
        with a session, each message is answered by its own task from the read that completed it."""
        if self.rpc.session is not None:
            try:
                self._session = self.rpc.session(self.context)
            except Exception as exc:  # one call fails, not the connection reading it
                self.finish(*failure(exc, self.context))
            return
        self._requests = asyncio.Queue()
        self.task = _task(self._run_stream(), self.sink.loop)

    # -- a session's messages ------------------------------------------------------------------------
    def _take(self, bodies: list[bytes]) -> None:
        """Start answering each message while there is a place; hold the rest, unread, in order."""
        for body in bodies:
            if self._unread or len(self._answering) >= self._in_flight:
                if self._unread is None:
                    self._unread = deque()
                self._unread.append(body)
                self._held += len(body)
            else:
                self._answer(body)

    @property
    def _in_flight(self) -> int:
        assert self._session is not None
        return self._session.in_flight

    def _answer(self, body: bytes) -> None:
        assert self._session is not None
        if self.finished:
            return
        try:
            message = self.rpc.parse(body)
        except Exception as exc:
            self._fail(exc)
            return
        task = _task(self._session.answer(message), self.sink.loop)
        self._answering.add(task)
        task.add_done_callback(self._answered)

    def _answered(self, task: asyncio.Task[None]) -> None:
        self._answering.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._fail(exc)
            return
        self._answer_unread()

    def _answer_unread(self) -> None:
        """Start the messages held for lack of a place; once the last has come and all are answered, the
        call ends OK."""
        unread = self._unread
        while unread and len(self._answering) < self._in_flight and not self.finished:
            body = unread.popleft()
            self._held -= len(body)
            self._answer(body)
        if self.finished:
            return
        if self._ended and not unread and not self._answering:
            self.finish(grpc.StatusCode.OK, "")
        elif self._unacked and self._held <= self.held_limit:
            self.sink.acknowledge(self.stream_id, self._unacked)
            self._unacked = 0

    def _fail(self, exc: BaseException) -> None:
        """A message's task failed outside its own error answer (a write to a reset stream, a parse): the
        call ends, its other messages are dropped."""
        self._stop_answering()
        if isinstance(exc, asyncio.CancelledError):
            return
        if isinstance(exc, AbortError):
            self.finish(exc.code, exc.details)
        else:
            self.finish(*failure(exc, self.context))

    def _start_unary(self) -> None:
        if self.reader.partial or not self.messages:
            self.finish(grpc.StatusCode.INTERNAL, "the stream ended without a complete request message")
            return
        try:
            request = self.rpc.parse(self.messages.pop())
        except Exception:
            self.finish(grpc.StatusCode.INVALID_ARGUMENT, "the request message does not parse")
            return
        # Started here, from data_received: every call read in this turn reaches its handler together.
        runner = self._run_unary_stream(request) if self.rpc.kind == "unary_stream" else self._run_unary(request)
        self.task = _task(runner, self.sink.loop)

    async def _run_unary(self, request: Any) -> None:
        try:
            response = await self.rpc.handler(request, self.context)
            body = response if isinstance(response, bytes) else response.SerializeToString()  # ModelInfer: bytes
        except asyncio.CancelledError:
            return  # reset or deadline: whoever cancelled has answered
        except AbortError as abort:
            self.finish(abort.code, abort.details)
            return
        except Exception as exc:
            self.finish(*failure(exc, self.context))
            return
        if len(body) > self.max_message_bytes:
            self.finish(grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"response of {len(body)} bytes exceeds the limit of {self.max_message_bytes}")
            return
        if self.finished:
            return
        trailing = self.context.trailing_metadata()
        self.finished = self.headers_sent = True
        self.context.mark_done()
        if self.timer is not None:
            self.timer.cancel()
        if trailing:  # in the same write as the answer, as OK trailers are (a traced call's traceparent)
            self.sink.send_response(self.stream_id, prefixed(body), error_headers(
                grpc.StatusCode.OK, "", trailers_only=False, metadata=_encoded(trailing)))
        else:
            self.sink.send_response(self.stream_id, prefixed(body))
        self.sink.call_finished(self)

    async def _run_unary_stream(self, request: Any) -> None:
        await self._guard(self._respond(self.rpc.handler(request, self.context)))

    async def _run_stream(self) -> None:
        await self._guard(self._respond(self.rpc.handler(_RequestMessages(self), self.context)))

    async def _respond(self, result: Any) -> None:
        """A streaming handler's answers: what it yields, or (a coroutine) what it passes to context.write."""
        if inspect.isasyncgen(result):
            async for message in result:
                await self.write(message)
        else:
            await result

    async def _guard(self, body: Any) -> None:
        try:
            await body
        except asyncio.CancelledError:
            return
        except AbortError as abort:
            self.finish(abort.code, abort.details)
        except Exception as exc:
            self.finish(*failure(exc, self.context))
        else:
            self.finish(grpc.StatusCode.OK, "")

    async def next_request(self) -> Any:
        """A streaming handler's next request message as it arrives; StopAsyncIteration after the last."""
        assert self._requests is not None
        self.blocked_on_peer = True
        try:
            body = await self._requests.get()
        finally:
            self.blocked_on_peer = False
        if body is None:
            self._requests.put_nowait(None)  # the end stays the end, however often it is asked for
            raise StopAsyncIteration
        self._held -= len(body)
        if self._unacked and self._held <= self.held_limit:
            self.sink.acknowledge(self.stream_id, self._unacked)
            self._unacked = 0
        return self.rpc.parse(body)

    async def write(self, message: Any) -> None:
        """One response message (or its serialized bytes) of a streaming call; waits while the peer is not
        reading."""
        if self.finished:
            raise asyncio.CancelledError
        body = message if isinstance(message, bytes) else message.SerializeToString()
        if len(body) > self.max_message_bytes:
            raise AbortError(grpc.StatusCode.RESOURCE_EXHAUSTED, "response message too large")
        if not self.headers_sent:
            self.headers_sent = True
            self.sink.send_headers(self.stream_id, RESPONSE_HEADERS)
        self.sink.send_data(self.stream_id, prefixed(body))
        self.blocked_on_peer = True
        try:
            await self.sink.wait_writable(self)
        finally:
            self.blocked_on_peer = False

    # -- ending -------------------------------------------------------------------------------------
    def finish(self, code: grpc.StatusCode, message: str) -> None:
        """Trailers with the status (trailers-only when nothing was sent), once; the stream ends."""
        if self.finished:
            return
        self.finished = True
        self.context.mark_done()
        if self.timer is not None:
            self.timer.cancel()
        self._stop_answering()  # answered (an error, or a limit): no message of it computes on
        trailing = _encoded(self.context.trailing_metadata())
        if code is grpc.StatusCode.OK and self.headers_sent and not trailing:
            block = OK_TRAILERS
        else:
            block = error_headers(code, message, trailers_only=not self.headers_sent, metadata=trailing)
        self.sink.send_headers(self.stream_id, block, end_stream=True)
        self.sink.call_finished(self)

    def expire(self) -> None:
        """The deadline passed: the handler is cancelled (its queue entry dropped) and the client told."""
        self.cancel()
        self.finish(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")

    def cancel(self) -> None:
        """Stop the handler (RST_STREAM or a lost connection); cancellation reaches the batcher."""
        self.context.mark_cancelled()
        if self.timer is not None:
            self.timer.cancel()
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self._stop_answering()

    def _stop_answering(self) -> None:
        """Cancel a session's messages in flight, drop the unread ones, and give the connection back the
        window their withheld bytes took: it is shared by every stream, and a closed stream's bytes
        would otherwise be lost to it for good."""
        for task in list(self._answering):
            task.cancel()
        self._answering.clear()
        if self._unread is not None:
            self._unread.clear()
        self._held = 0
        if self._unacked:
            self.sink.acknowledge(self.stream_id, self._unacked)
            self._unacked = 0


class _RequestMessages:
    """The request messages a streaming handler iterates over (a class, not an async generator: mypyc
    compiles this module, and it compiles no async generators)."""

    __slots__ = ("_call",)

    def __init__(self, call: Call) -> None:
        self._call = call

    def __aiter__(self) -> _RequestMessages:
        return self

    async def __anext__(self) -> Any:
        return await self._call.next_request()


def _task(coroutine: Coroutine[Any, Any, None], loop: asyncio.AbstractEventLoop) -> asyncio.Task[None]:
    """A call's task, made directly and named: `loop.create_task` (uvloop's too) formats a "Task-N" name
    for each task before it sets a given one, and `asyncio.get_running_loop` is a getpid system call on
    Python 3.11; a unary call paid both."""
    return asyncio.Task(coroutine, loop=loop, name=_TASK_NAME)


_TASK_NAME: Final = "grpc-call"


def _encoded(metadata: Any) -> list[tuple[bytes, bytes]]:
    return [(k.encode(), v if isinstance(v, bytes) else v.encode()) for k, v in metadata]
