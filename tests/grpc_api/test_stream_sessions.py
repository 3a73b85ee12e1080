"""A stream_stream method with a session (as ModelStreamInfer has) on our server: each message answered by
its own task from the read that completed it, at most `in_flight` at once, the rest held unread in order;
the call ends OK once the last message is answered, and an answer that fails or a reset ends it all."""

from __future__ import annotations

import threading

import grpc
import pytest

from tests.polling import wait_until

from .conftest import EchoServer


def _each(echo: EchoServer) -> grpc.StreamStreamMultiCallable:
    channel = grpc.insecure_channel(echo.url)
    return channel.stream_stream("/test.Echo/Each")


def test_each_message_is_answered_as_it_finishes_and_the_call_ends_ok(echo: EchoServer) -> None:
    each = _each(echo)
    # Two places: `sleep` and `a` start together, `b` waits unread for a's place, then overtakes `sleep`.
    answers = list(each(iter([b"sleep:2", b"a", b"b"]), timeout=30))
    assert answers == [b"a", b"b", b"sleep:2"]


def test_no_more_than_in_flight_messages_are_answered_at_once(echo: EchoServer) -> None:
    echo.state.most_answering = 0
    each = _each(echo)
    answers = list(each(iter([b"sleep:0.05"] * 7 + [b"last"]), timeout=30))
    assert sorted(answers) == sorted([b"sleep:0.05"] * 7 + [b"last"])
    assert echo.state.most_answering == 2  # EachStream.in_flight


def test_a_stream_with_no_messages_ends_ok(echo: EchoServer) -> None:
    assert list(_each(echo)(iter([]), timeout=30)) == []


def test_an_answer_that_fails_ends_the_call_and_drops_the_rest(echo: EchoServer) -> None:
    echo.state.answers_cancelled = 0
    each = _each(echo)
    answers: list[bytes] = []
    with pytest.raises(grpc.RpcError) as failed:
        for answer in each(iter([b"sleep:5", b"boom", b"never"]), timeout=30):
            answers.append(answer)
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    assert answers == []
    wait_until(lambda: echo.state.answers_cancelled == 1)  # `sleep:5` was dropped, not left running


def test_a_cancelled_stream_cancels_the_answers_in_flight(echo: EchoServer) -> None:
    echo.state.answers_cancelled = 0
    each = _each(echo)

    done = threading.Event()

    def requests():  # two long answers, then the stream stays open until the test ends
        yield b"sleep:60"
        yield b"sleep:60"
        done.wait(60)

    call = each(requests(), timeout=60)
    try:
        wait_until(lambda: echo.state.answering == 2)
        call.cancel()  # RST_STREAM
        wait_until(lambda: echo.state.answers_cancelled == 2 and echo.state.answering == 0)
    finally:
        done.set()


def test_a_deadline_cancels_the_answers_in_flight(echo: EchoServer) -> None:
    echo.state.answers_cancelled = 0
    each = _each(echo)
    with pytest.raises(grpc.RpcError):  # the client raises DEADLINE_EXCEEDED itself: what counts is below
        list(each(iter([b"sleep:60", b"sleep:60"]), timeout=0.5))
    wait_until(lambda: echo.state.answers_cancelled == 2 and echo.state.answering == 0)
