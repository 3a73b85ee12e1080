"""When a connection's answers reach the socket: at once on a loop with time to spare, at the end of the
turn (one write for the turn's answers) on a saturated one. The verdict is pinned here; LoopLoad's
own measure has its tests in tests/batching/test_load.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from server.batching.load import LoopLoad
from server.grpc_api.server import GrpcProtocol, GrpcServer


class WriteLog(asyncio.Transport):
    """Keeps what the protocol writes, in the calls it was written in."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def writelines(self, chunks: Any) -> None:
        self.writes.append(b"".join(bytes(c) for c in chunks))

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:  # a drained connection with no calls closes once its GOAWAY is out
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def pinned(saturated: bool) -> LoopLoad:
    load = LoopLoad(clock=lambda: 0, cpu=lambda: 0)  # a window never ends: the verdict stays as set
    load.saturated = saturated
    return load


@pytest.mark.parametrize("saturated", [False, True], ids=["spare-time", "saturated"])
async def test_an_answer_is_written_at_once_unless_the_loop_is_saturated(saturated: bool) -> None:
    server = GrpcServer({}, max_message_bytes=1 << 20)
    server.loop_load = pinned(saturated)
    protocol = GrpcProtocol(server)
    transport = WriteLog()
    protocol.connection_made(transport)
    written = len(transport.writes)  # our SETTINGS
    protocol._conn.start_drain()  # a frame to send, made as an answer would be
    protocol._answer_made()
    assert len(transport.writes) == written + (0 if saturated else 1)
    await asyncio.sleep(0)  # the end of the turn
    assert len(transport.writes) == written + 1
    assert transport.writes[-1][3] == 0x7  # the GOAWAY frame, written once either way
