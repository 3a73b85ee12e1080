"""Names and paths from requests never leave their root: model names, rollout state files, uploaded
files, default_model_filename, and what failed loads leave behind (security findings 1-5, 8)."""

from __future__ import annotations

import http.client
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from server._generated import rollout_pb2

from ..repository.models import make_model, make_version

PROTOCOLS = [pytest.param("grpc", id="grpc"), pytest.param("http", id="http")]
CONFIG = json.dumps({"name": "m", "max_batch_size": 8})


class Wire:
    """Raw calls on either transport, so names reach the server exactly as an attacker sends them."""

    def __init__(self, protocol: str, server: Any) -> None:
        self.protocol = protocol
        self.server = server
        self._channel = grpc.insecure_channel(server.grpc_url)
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def _http(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, str]:
        conn = http.client.HTTPConnection(self.server.http_url, timeout=30)
        try:
            payload = b"" if body is None else json.dumps(body).encode()
            conn.request(method, path, body=payload, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
            return response.status, json.loads(data).get("error", "") if data else ""
        finally:
            conn.close()

    def _grpc(self, call: Callable[[], object]) -> tuple[str, str]:
        try:
            call()
        except grpc.RpcError as exc:
            return exc.code().name, exc.details() or ""
        return "OK", ""

    def load(self, name: str, config: str | None = None, files: dict[str, bytes] | None = None) -> tuple[str, str]:
        """(status, message): gRPC code name, or the HTTP status as text."""
        if self.protocol == "grpc":
            request = service_pb2.RepositoryModelLoadRequest(model_name=name)
            if config is not None:
                request.parameters["config"].string_param = config
            for key, content in (files or {}).items():
                request.parameters[key].bytes_param = content
            return self._grpc(lambda: self._stub.RepositoryModelLoad(request, timeout=60))
        import base64

        params: dict[str, Any] = {} if config is None else {"config": config}
        params.update({k: base64.b64encode(v).decode() for k, v in (files or {}).items()})
        path = f"/v2/repository/models/{quote(name, safe='')}/load"
        status, message = self._http("POST", path, {"parameters": params})
        return str(status), message

    def start_rollout(self, name: str) -> tuple[str, str]:
        if self.protocol == "grpc":
            method = self._channel.unary_unary(
                "/tessera.rollout.RolloutService/StartRollout",
                request_serializer=rollout_pb2.StartRolloutRequest.SerializeToString,
                response_deserializer=rollout_pb2.RolloutStatus.FromString)
            request = rollout_pb2.StartRolloutRequest(model=name)
            request.spec.candidate_version = 2
            return self._grpc(lambda: method(request, timeout=30))
        status, message = self._http("POST", f"/v2/models/{quote(name, safe='')}/rollout",
                                     {"candidate_version": 2})
        return str(status), message

    def metadata(self, name: str, version: str) -> tuple[str, str]:
        if self.protocol == "grpc":
            request = service_pb2.ModelMetadataRequest(name=name, version=version)
            return self._grpc(lambda: self._stub.ModelMetadata(request, timeout=30))
        status, message = self._http("GET", f"/v2/models/{quote(name, safe='')}/versions/{quote(version)}")
        return str(status), message


INVALID = {"grpc": "INVALID_ARGUMENT", "http": "400"}
LOAD_FAILED = {"grpc": "FAILED_PRECONDITION", "http": "400"}


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    root = tmp_path / "repository"
    make_model(root)
    return root


def _wire(protocol: str, server_factory: Callable[..., Any], repository: Path, tmp_path: Path) -> Wire:
    server = server_factory(repository, model_control_mode="explicit", load_models=("m",),
                            allow_repository_admin=True, repository_cache_dir=tmp_path / "cache",
                            state_dir=tmp_path / "state")
    return Wire(protocol, server)


@pytest.fixture(params=PROTOCOLS)
def wire(request: pytest.FixtureRequest, server_factory: Callable[..., Any], repository: Path,
         tmp_path: Path) -> Iterator[Wire]:
    client = _wire(request.param, server_factory, repository, tmp_path)
    yield client
    client.close()


def _override_leftovers(tmp_path: Path) -> list[Path]:
    """Model directories left in the override area (its root itself may exist)."""
    return [p for area in (tmp_path / "cache").glob("tessera-overrides-*") for p in area.iterdir()]


def _onnx(tmp_path: Path, seed: int = 9) -> bytes:
    return make_version(tmp_path / "upload", 1, seed=seed).read_bytes()


def _escape_names(tmp_path: Path, protocol: str) -> list[str]:
    names = ["..", ".", ".hidden", "m m", "x" * 300]
    if protocol == "grpc":  # HTTP routes cannot carry a '/' in a path segment; gRPC fields can
        climb = "../" * 40 + f"{tmp_path.relative_to('/')}/escaped/m"
        names += ["../escaped/m", climb, str(tmp_path / "escaped" / "m")]
    return names


def test_a_model_name_that_is_a_path_is_refused_and_nothing_is_written(wire: Wire, tmp_path: Path) -> None:
    onnx_bytes = _onnx(tmp_path)
    for name in _escape_names(tmp_path, wire.protocol):
        status, message = wire.load(name, CONFIG, {"file:1/model.onnx": onnx_bytes})
        assert status == INVALID[wire.protocol] and message.startswith("invalid model name "), name
        assert name[:40] in message and len(message) < 300  # quoted, shortened
    assert not (tmp_path / "escaped").exists()
    assert _override_leftovers(tmp_path) == []


def test_a_rollout_on_a_path_name_writes_nothing_outside_the_state_directory(wire: Wire, tmp_path: Path) -> None:
    names = [".."] + (["../escaped/m", str(tmp_path / "escaped" / "m")] if wire.protocol == "grpc" else [])
    for name in names:
        status, message = wire.start_rollout(name)
        assert status == INVALID[wire.protocol] and message.startswith("invalid model name"), name
    assert not (tmp_path / "escaped").exists()
    assert not list(tmp_path.glob("*.json"))


def test_loading_an_absolute_directory_is_refused_alike_whether_it_exists_or_not(
        server_factory: Callable[..., Any], repository: Path, tmp_path: Path) -> None:
    # gRPC only: an HTTP path segment cannot carry an absolute path (the '..' cases cover HTTP).
    wire = _wire("grpc", server_factory, repository, tmp_path)
    other = tmp_path / "other-repository"
    make_model(other)
    answers = [wire.load(str(path)) for path in (other / "m", tmp_path / "missing" / "m")]
    wire.close()
    assert [status for status, _ in answers] == ["INVALID_ARGUMENT"] * 2
    assert all(message.startswith("invalid model name") for _, message in answers)


@pytest.mark.parametrize("filename", [
    pytest.param("../../other/1/model.onnx", id="climbs-out"),
    pytest.param("/etc/passwd", id="absolute-existing"),
    pytest.param("/nonexistent/file.onnx", id="absolute-missing"),
    pytest.param("sub/model.onnx", id="subdirectory"),
])
def test_default_model_filename_is_a_file_name_and_nothing_else(wire: Wire, filename: str) -> None:
    config = json.dumps({"name": "m", "max_batch_size": 8, "default_model_filename": filename})
    status, message = wire.load("m", config)
    assert status == LOAD_FAILED[wire.protocol]
    assert f"default_model_filename {filename!r}: must be a file name" in message
    assert "PROTOBUF" not in message and "No such file" not in message  # no file-existence oracle


@pytest.mark.parametrize("key", [
    pytest.param("file:1/mo\x00del.onnx", id="nul-byte"),
    pytest.param("file:1/" + "a" * 300, id="300-character-name"),
    pytest.param("file:1/" + "d/" * 2000 + "model.onnx", id="2000-folders"),
    pytest.param("file:1/../../escaped.onnx", id="climbs-out"),
    pytest.param("file:-1/model.onnx", id="negative-version"),
])
def test_malformed_file_keys_are_invalid_argument_and_leave_nothing(wire: Wire, tmp_path: Path, key: str) -> None:
    status, message = wire.load("m", CONFIG, {key: b"x"})
    assert status == INVALID[wire.protocol] and message.startswith("file override"), message
    assert len(message) < 400
    assert _override_leftovers(tmp_path) == []


def test_a_failed_load_leaves_no_files_and_names_no_server_path(wire: Wire, tmp_path: Path) -> None:
    for _ in range(3):
        status, message = wire.load("garbage", json.dumps({"name": "garbage", "max_batch_size": 8}),
                                    {"file:1/model.onnx": b"not an onnx graph" * 1000})
        assert status == LOAD_FAILED[wire.protocol]
        assert "garbage" in message and str(tmp_path) not in message and "/tmp" not in message, message
    assert _override_leftovers(tmp_path) == []
    metrics = http.client.HTTPConnection(wire.server.http_url, timeout=30)
    metrics.request("GET", "/metrics")
    text = metrics.getresponse().read().decode()
    metrics.close()
    assert 'tessera_model_load_failures_total{model="garbage"}' in text
    assert str(tmp_path) not in text


def test_a_failed_reload_with_a_new_version_keeps_the_serving_version(wire: Wire, tmp_path: Path) -> None:
    status, _ = wire.load("m", CONFIG, {"file:2/model.onnx": b"garbage"})
    assert status == LOAD_FAILED[wire.protocol]
    assert wire.metadata("m", "1")[0] in ("OK", "200")
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(wire.server.grpc_url) as client:
        item = grpcclient.InferInput("x", [1, 8], "FP32")
        item.set_data_from_numpy(np.ones((1, 8), np.float32))
        assert client.infer("m", [item]).get_response().model_version == "1"
    assert _override_leftovers(tmp_path) == []


def test_version_minus_one_is_an_invalid_argument_not_a_stale_failure(wire: Wire) -> None:
    wire.load("m", json.dumps({"name": "m", "platform": "tensorflow_savedmodel"}))  # a model-level failure
    for version in ("-1", "abc", "1e3"):
        status, message = wire.metadata("m", version)
        assert status == INVALID[wire.protocol], version
        assert message == f"invalid model version {version!r}: a version is a non-negative integer"


def test_a_deep_hostile_path_logs_a_line_not_a_page(wire: Wire, caplog: pytest.LogCaptureFixture) -> None:
    key = "file:1/" + "d/" * 2000 + "model.onnx"  # a 4 KB path
    with caplog.at_level(logging.DEBUG):
        status, _ = wire.load("m", CONFIG, {key: b"x"})
    assert status == INVALID[wire.protocol]
    ours = [caplog.handler.format(r) for r in caplog.records if r.name.startswith("server")]  # tracebacks too
    assert sum(map(len, ours)) < 4000, ours
