"""How each peer is started on loopback, pinned to the server cores, and which transports it speaks.

Tessera and the bare grpc.aio server run from the project venv; MLServer and the naive FastAPI
server from the peers venv that benchmarks/peers/install_peers.sh builds.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..compare_perf_analyzer import tessera_argv
from ..server_process import ServerProcess, free_port, http_ready, tcp_ready

__all__ = ["PEERS", "Peer", "Transport"]

ROOT = Path(__file__).resolve().parents[2]
PEERS_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True, slots=True)
class Transport:
    label: str
    protocol: Literal["grpc", "http"]
    http_encoding: Literal["binary", "json"] = "binary"


@dataclass(frozen=True, slots=True)
class Launch:
    server: ServerProcess
    ports: dict[str, int]
    metrics_url: str | None = None


@dataclass(frozen=True, slots=True)
class Peer:
    name: str
    transports: tuple[Transport, ...]
    launch: Callable[[Path, Path, str, Path], Launch]
    """(repository, peers venv, server cpus, work dir) -> a server ready to be entered."""


GRPC = Transport("gRPC", "grpc")
HTTP_BINARY = Transport("HTTP binary", "http", "binary")
HTTP_JSON = Transport("HTTP JSON", "http", "json")


def _tessera(repository: Path, venv: Path, cpus: str, work: Path) -> Launch:
    http, grpc_port = free_port(), free_port()
    server = ServerProcess(
        tessera_argv(repository, http, grpc_port),
        cpus=cpus,
        log=work / "tessera.log",
        ready=http_ready(f"http://127.0.0.1:{http}/v2/health/ready"),
    )
    return Launch(server, {"grpc": grpc_port, "http": http}, f"http://127.0.0.1:{http}/metrics")


def _bare(repository: Path, venv: Path, cpus: str, work: Path) -> Launch:
    port = free_port()
    argv = [sys.executable, "-m", "benchmarks.bare_server", "--model-repository", str(repository), "--port", str(port)]
    return Launch(
        ServerProcess(argv, cpus=cpus, log=work / "bare.log", cwd=ROOT, ready=tcp_ready(port)), {"grpc": port}
    )


def _naive(repository: Path, venv: Path, cpus: str, work: Path) -> Launch:
    port = free_port()
    argv = [
        str(venv / "bin" / "python"),
        str(PEERS_DIR / "naive_fastapi.py"),
        "--repository",
        str(repository),
        "--port",
        str(port),
    ]
    return Launch(
        ServerProcess(
            argv, cpus=cpus, log=work / "naive.log", ready=http_ready(f"http://127.0.0.1:{port}/v2/health/ready")
        ),
        {"http": port},
    )


def _mlserver(repository: Path, venv: Path, cpus: str, work: Path) -> Launch:
    http, grpc_port, metrics = free_port(), free_port(), free_port()
    folder = work / "mlserver"
    write_mlserver_settings(folder, repository, http, grpc_port, metrics)
    server = ServerProcess(
        [str(venv / "bin" / "mlserver"), "start", str(folder)],
        cpus=cpus,
        log=work / "mlserver.log",
        env={"PYTHONPATH": str(PEERS_DIR)},
        cwd=folder,
        ready=http_ready(f"http://127.0.0.1:{http}/v2/health/ready"),
    )
    return Launch(server, {"grpc": grpc_port, "http": http})


def write_mlserver_settings(folder: Path, repository: Path, http: int, grpc_port: int, metrics: int) -> None:
    """settings.json (parallel_workers 0, loopback) and one model-settings.json per model, with
    adaptive batching sized like the model's config (max_batch_size, 500 us like Tessera's delay)."""
    folder.mkdir(parents=True, exist_ok=True)
    settings = {
        "host": "127.0.0.1",
        "http_port": http,
        "grpc_port": grpc_port,
        "metrics_port": metrics,
        "parallel_workers": 0,
        "debug": False,
        "metrics_dir": str(folder / "metrics"),
    }
    (folder / "settings.json").write_text(json.dumps(settings, indent=2))
    for onnx_file in sorted(repository.glob("*/1/model.onnx")):
        name = onnx_file.parent.parent.name
        inputs, outputs = _signature(onnx_file)
        model = {
            "name": name,
            "implementation": "mlserver_runtime.OnnxRuntimeModel",
            "parameters": {"uri": str(onnx_file.resolve()), "version": "1"},
            "max_batch_size": 64,
            "max_batch_time": 0.0005,
            "inputs": inputs,
            "outputs": outputs,
        }
        (folder / name).mkdir(exist_ok=True)
        (folder / name / "model-settings.json").write_text(json.dumps(model, indent=2))


def _signature(onnx_file: Path) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    import onnxruntime as ort

    types = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(int64)": "INT64", "tensor(int32)": "INT32"}
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])

    def describe(args: Sequence[Any]) -> list[dict[str, object]]:
        return [
            {"name": a.name, "datatype": types[a.type], "shape": [d if isinstance(d, int) else -1 for d in a.shape]}
            for a in args
        ]

    return describe(session.get_inputs()), describe(session.get_outputs())


PEERS: dict[str, Peer] = {
    "tessera": Peer("Tessera", (GRPC, HTTP_BINARY, HTTP_JSON), _tessera),
    "mlserver": Peer("MLServer 1.7.1", (GRPC, HTTP_JSON), _mlserver),
    "naive": Peer("naive FastAPI + ORT", (HTTP_JSON,), _naive),
    "bare": Peer("bare grpc.aio (no model)", (GRPC,), _bare),
}
