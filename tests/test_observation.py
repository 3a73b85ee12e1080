"""The transports' begin hooks: the caller's W3C trace context read from HTTP headers or gRPC metadata."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from server import observation
from server.observation import Observability
from server.request_log import RequestLog

PARENT = f"00-{'ab' * 16}-{'cd' * 8}-01"
OTHER = f"00-{'12' * 16}-{'34' * 8}-00"


@pytest.fixture(autouse=True)
def payload_logs_on() -> Iterator[None]:
    """Payload logs on: every request is observed, traced or not."""
    observation.install(Observability(payload_log=True))
    yield
    observation.uninstall()


async def test_a_stopping_server_switches_its_own_hooks_off_and_leaves_anothers(tmp_path: Path) -> None:
    from server.observability import ObservabilitySidePaths

    logs_alone = ObservabilitySidePaths(None, RequestLog(str(tmp_path / "requests.jsonl")), None)
    logs_alone.start()
    assert observation.REQUEST_LOG is logs_alone.request_log and observation.ACTIVE is None
    await logs_alone.stop()
    assert observation.REQUEST_LOG is None
    other = Observability(payload_log=True)
    observation.install(other)
    observation.uninstall(Observability(payload_log=True))  # not the one installed
    assert observation.ACTIVE is other


def test_request_logs_alone_observe_nothing(tmp_path: Path) -> None:
    # A line is made from what the request returns: no observation, no hook beyond the transports' own.
    log = RequestLog(str(tmp_path / "requests.jsonl"))
    observation.install(Observability(request_log=log))
    assert observation.ACTIVE is None and observation.REQUEST_LOG is log
    observation.uninstall()
    assert observation.REQUEST_LOG is None


def test_an_http_request_without_a_traceparent_is_observed_without_a_parent() -> None:
    obs = observation.begin_http([(b"host", b"x"), (b"tracestate", b"orphan=1")])
    assert obs is not None and obs.parent is None and obs.trace_id == 0


def test_http_tracestate_fields_are_one_list_and_the_last_traceparent_counts() -> None:
    obs = observation.begin_http([(b"traceparent", OTHER.encode()), (b"tracestate", b"a=1"),
                                  (b"content-type", b"application/json"), (b"tracestate", b"b=2"),
                                  (b"traceparent", PARENT.encode())])
    assert obs is not None and obs.parent is not None
    assert obs.trace_id == int("ab" * 16, 16) and obs.parent.span_id == int("cd" * 8, 16)
    assert obs.parent.tracestate == "a=1,b=2"


def test_grpc_metadata_gives_the_same_parent() -> None:
    obs = observation.begin_grpc((("tessera-routing-key", "k"), ("traceparent", PARENT), ("tracestate", "a=1"),
                                  ("tracestate", "b=2")))
    assert obs is not None and obs.parent is not None
    assert (obs.trace_id, obs.parent.sampled, obs.parent.tracestate) == (int("ab" * 16, 16), True, "a=1,b=2")
    bare = observation.begin_grpc(None)
    assert bare is not None and bare.parent is None
