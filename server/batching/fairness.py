"""Fair shares of a model's queue: one gRPC stream (or any other owner) may hold only part of it.

The transport marks the requests of one stream with a `QueueShare` for as long as they run
(`with share.applied(): ...`, or `current_share.set(share)` in a task that is the request's alone: a
context variable, so the DataPlane between them needs no argument); every DynamicBatcher counts each
share's requests and refuses the excess with Overloaded, so one stream's flood cannot fill a queue that
other clients need.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["QueueShare", "current_share"]


class QueueShare:
    """One owner's share: at most max(1, fraction * queue limit) requests queued or running per model."""

    __slots__ = ("fraction",)

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction

    def cap(self, queue_limit: int) -> int:
        return max(1, int(queue_limit * self.fraction))

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Requests submitted within (on this task and the tasks it starts) count against this share."""
        token = current_share.set(self)
        try:
            yield
        finally:
            current_share.reset(token)


current_share: ContextVar[QueueShare | None] = ContextVar("tessera_queue_share", default=None)
"""The share the request being submitted counts against; None for requests with no owner."""
