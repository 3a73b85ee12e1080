"""Admission limits, called directly: token buckets per identity, the process-wide body budget."""

from __future__ import annotations

import pytest

from server.admission import Admission, BodyBudget, RateLimiter, peer_host
from server.errors import Overloaded


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_burst_then_refills_at_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(rate_per_s=2.0, burst=3, clock=clock)
    for _ in range(3):
        limiter.admit("a")
    with pytest.raises(Overloaded, match="rate limit of 2 requests/s"):
        limiter.admit("a")
    limiter.admit("b")  # another identity has its own bucket
    clock.now += 0.5  # one token back
    limiter.admit("a")
    with pytest.raises(Overloaded):
        limiter.admit("a")


def test_forgotten_identities_start_with_a_full_bucket() -> None:
    limiter = RateLimiter(rate_per_s=1.0, burst=1, max_identities=2, clock=Clock())
    limiter.admit("a")
    limiter.admit("b")
    limiter.admit("c")  # "a", the least recently seen, is forgotten
    limiter.admit("a")
    with pytest.raises(Overloaded):
        limiter.admit("c")


def test_admission_without_a_rate_admits_everything() -> None:
    admission = Admission()
    for _ in range(1000):
        admission.admit("a")


def test_body_budget_refuses_beyond_its_limit_and_gets_bytes_back_on_release() -> None:
    budget = BodyBudget(100)
    first = budget.hold()
    first.grow(60)
    with budget.hold() as second, pytest.raises(Overloaded, match="budget of 100"):
        second.grow(50)
    with budget.hold() as third:
        third.grow(40)
        assert budget.held_bytes == 100
    first.release()
    assert budget.held_bytes == 0


def test_unlimited_budget_still_counts() -> None:
    budget = BodyBudget(0)
    with budget.hold() as hold:
        hold.grow(10**12)
        assert budget.held_bytes == 10**12
    assert budget.held_bytes == 0


@pytest.mark.parametrize(("peer", "host"), [
    pytest.param("ipv4:127.0.0.1:5000", "127.0.0.1", id="grpc-ipv4"),
    pytest.param("ipv6:%5B::1%5D:5000", "::1", id="grpc-ipv6"),
    pytest.param("127.0.0.1", "127.0.0.1", id="bare"),
    pytest.param("10.0.0.1:80", "10.0.0.1", id="host-port"),
])
def test_peer_host_keeps_the_address_only(peer: str, host: str) -> None:
    assert peer_host(peer) == host
