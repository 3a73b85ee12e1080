"""Shared fixtures: sample model repositories built with onnx.helper, and the real server on ephemeral ports.

The server runs in a thread with its own uvloop event loop (as httpx's tests serve in a thread), so
synchronous tritonclient calls in the test never block it.
"""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import uvloop
from onnx import TensorProto

from server.app import App
from server.settings import ServerSettings

from .sample_models import make_models

# Identity models for every datatype the protocol carries (name, ONNX type, V2 datatype).
IDENTITY_TYPES = [
    ("BOOL", TensorProto.BOOL), ("UINT8", TensorProto.UINT8), ("UINT16", TensorProto.UINT16),
    ("UINT32", TensorProto.UINT32), ("UINT64", TensorProto.UINT64), ("INT8", TensorProto.INT8),
    ("INT16", TensorProto.INT16), ("INT32", TensorProto.INT32), ("INT64", TensorProto.INT64),
    ("FP16", TensorProto.FLOAT16), ("FP32", TensorProto.FLOAT), ("FP64", TensorProto.DOUBLE),
    ("BYTES", TensorProto.STRING),
]
SAMPLE_MODELS = ("tabular", "two_input", "fixed")


def build_repository(root: Path) -> Path:
    make_models.make_samples(root)
    for datatype, elem in IDENTITY_TYPES:
        make_models.make_identity(
            root, f"identity_{datatype.lower()}", elem,
            config=f'name: "identity_{datatype.lower()}"\nmax_batch_size: 8\ndynamic_batching {{ }}\n')
    make_models.make_mlp(root, "mlp", [64, 256, 256, 10])
    return root


@pytest.fixture(scope="session")
def sample_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repository(tmp_path_factory.mktemp("repository"))


@dataclass
class RunningServer:
    app: App
    loop: asyncio.AbstractEventLoop
    repository: Path

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.app.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.app.grpc_port}"

    @property
    def settings(self) -> ServerSettings:
        return self.app.settings

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
        """Run a coroutine on the server's loop and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


def _serve_in_thread(settings: ServerSettings) -> tuple[RunningServer, Callable[[], None]]:
    loop = uvloop.new_event_loop()
    started: Future[App] = Future()
    stop = asyncio.Event()  # set from the test's thread, through the loop

    async def main() -> None:
        app = App(settings)
        try:
            await app.start()
        except BaseException as exc:
            started.set_exception(exc)
            raise
        started.set_result(app)
        await stop.wait()
        await app.stop()

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    app = started.result(timeout=120)

    def shutdown() -> None:
        loop.call_soon_threadsafe(stop.set)
        thread.join(90)  # under pytest-timeout's 120 s, so this says where the server is stuck
        if thread.is_alive():
            stacks = []
            for task in asyncio.all_tasks(loop):
                out = io.StringIO()
                task.print_stack(file=out)
                stacks.append(out.getvalue())
            raise AssertionError("the server did not stop within 90 s; its tasks:\n" + "\n".join(stacks))
        loop.close()

    return RunningServer(app, loop, Path(settings.model_repository)), shutdown


def server_settings(repository: Path, **overrides: Any) -> ServerSettings:
    base = ServerSettings(model_repository=str(repository), host="127.0.0.1", http_port=0, grpc_port=0,
                          drain_timeout_s=5.0, allow_repository_admin=True)
    return replace(base, **overrides)


# Both gRPC servers while both exist: modules that test gRPC parametrize over these with a
# module-scoped `grpc_server` fixture, which `running_server` overrides and `server_factory` follow.
GRPC_SERVERS = [pytest.param("ours", id="grpc-ours"), pytest.param("grpcio", id="grpc-grpcio")]


@pytest.fixture(scope="session")
def servers_by_grpc_server(sample_repository: Path) -> Iterator[Callable[[str], RunningServer]]:
    """A shared server over the sample repository per gRPC server kind, started on first use."""
    started: dict[str, tuple[RunningServer, Callable[[], None]]] = {}

    def get(kind: str) -> RunningServer:
        if kind not in started:
            started[kind] = _serve_in_thread(server_settings(sample_repository, grpc_server=kind))
        return started[kind][0]

    yield get
    for _, shutdown in started.values():
        shutdown()


@pytest.fixture(scope="session")
def running_server(servers_by_grpc_server: Callable[[str], RunningServer]) -> RunningServer:
    """The real server over the sample repository, shared by the session's end-to-end tests."""
    return servers_by_grpc_server(ServerSettings.__dataclass_fields__["grpc_server"].default)


@pytest.fixture
def server_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., RunningServer]]:
    """Start extra servers with their own settings: `server_factory(repository, **settings)`."""
    stops: list[Callable[[], None]] = []
    kind = request.getfixturevalue("grpc_server") if "grpc_server" in request.fixturenames else None

    def start(repository: Path, **overrides: Any) -> RunningServer:
        if kind is not None:
            overrides.setdefault("grpc_server", kind)
        server, shutdown = _serve_in_thread(server_settings(repository, **overrides))
        stops.append(shutdown)
        return server

    yield start
    for shutdown in reversed(stops):
        shutdown()
