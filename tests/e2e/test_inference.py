"""End-to-end with unmodified tritonclient, once per transport: both gRPC servers and HTTP answer the
same health, metadata and inference calls the same way (sync and aio clients).

What only one transport has stays in its own module: test_grpc.py (streaming, typed contents, the
health service) and test_http.py (JSON and binary bodies, limits, repository and statistics routes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
from tritonclient.utils import InferenceServerException, np_to_triton_dtype, triton_to_np_dtype

from ..conftest import GRPC_SERVERS, RunningServer
from .reference import run_reference, sample_inputs

SAMPLES = ["tabular", "two_input", "fixed"]
DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16",
             "FP32", "FP64", "BYTES"]
TRANSPORTS = [*GRPC_SERVERS, pytest.param("http", id="http")]
HTTP_STATUS = {grpc.StatusCode.NOT_FOUND: "404"}
Feeds = dict[str, npt.NDArray[Any]]


def per_transport(*http_variants: Any) -> list[Any]:
    """Every transport, HTTP once per variant: its JSON and binary encodings, which gRPC does not have
    (gRPC gets None for each variant value)."""
    width = len(http_variants[0].values)
    grpc_params = [pytest.param(p.values[0], *[None] * width, id=p.id) for p in GRPC_SERVERS]
    return [*grpc_params, *(pytest.param("http", *v.values, id=f"http-{v.id}") for v in http_variants)]


class HttpClient(httpclient.InferenceServerClient):  # type: ignore[misc]
    def __del__(self) -> None:  # the base joins a gevent pool, which fails on the GC's thread
        pass


class Transport:
    """tritonclient's sync client of one protocol (and its aio client on demand) with the protocols'
    differences in one place: gRPC getters answer JSON with as_json=True, responses are protobuf,
    errors carry "StatusCode.X" where HTTP has the number."""

    def __init__(self, kind: str, server: RunningServer) -> None:
        self.kind, self.server = kind, server
        self.grpc = kind != "http"
        self.module: Any = grpcclient if self.grpc else httpclient
        self.raw: Any = (grpcclient.InferenceServerClient(server.grpc_url) if self.grpc
                         else HttpClient(server.http_url))

    def __getattr__(self, name: str) -> Any:  # is_server_live, is_model_ready, infer, ...
        return getattr(self.raw, name)

    def aio(self) -> Any:
        """A new aio client of the same protocol, to use with `async with`."""
        return (grpcaio.InferenceServerClient(self.server.grpc_url) if self.grpc
                else httpaio.InferenceServerClient(self.server.http_url))

    def server_metadata(self) -> dict[str, Any]:
        return self.raw.get_server_metadata(**self._json)

    def model_metadata(self, model: str, version: str = "") -> dict[str, Any]:
        return self.raw.get_model_metadata(model, version, **self._json)

    def model_config(self, model: str, version: str = "") -> dict[str, Any]:
        config = self.raw.get_model_config(model, version, **self._json)
        return config["config"] if self.grpc else config

    def inputs(self, feeds: Feeds, binary: bool | None = None, aio: bool = False) -> list[Any]:
        """InferInputs of this protocol (aio's module when `aio`); `binary` is HTTP's binary_data."""
        module: Any = (grpcaio if self.grpc else httpaio) if aio else self.module
        out = []
        for name, array in feeds.items():
            item = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            if binary is None:
                item.set_data_from_numpy(array)
            else:
                item.set_data_from_numpy(array, binary_data=binary)
            out.append(item)
        return out

    def output(self, name: str, binary: bool | None = None) -> Any:
        """An InferRequestedOutput of this protocol; `binary` is HTTP's binary_data."""
        return self.module.InferRequestedOutput(name) if binary is None else self.module.InferRequestedOutput(
            name, binary_data=binary)

    def response(self, result: Any) -> dict[str, Any]:
        """The whole response as the JSON document (the protobuf's fields by their proto names on gRPC)."""
        return result.get_response(**self._json)

    def status(self, code: grpc.StatusCode) -> str:
        """The status tritonclient's InferenceServerException carries for `code` on this protocol."""
        return f"StatusCode.{code.name}" if self.grpc else HTTP_STATUS[code]

    def assert_serving(self) -> None:
        result = self.raw.infer("tabular", self.inputs(sample_inputs("tabular")))
        assert result.as_numpy("label").shape == (3, 1)

    @property
    def _json(self) -> dict[str, bool]:
        return {"as_json": True} if self.grpc else {}

    def close(self) -> None:
        self.raw.close()


def _failure(call: Callable[[], Any]) -> tuple[str, str]:
    """(status, message) of the InferenceServerException a client call raises."""
    try:
        call()
    except InferenceServerException as exc:
        return str(exc.status()), str(exc.message())
    raise AssertionError("the call did not fail")


@pytest.fixture(scope="module")
def connect(servers_by_grpc_server: Callable[[str], RunningServer],
            running_server: RunningServer) -> Iterator[Callable[[str], Transport]]:
    """The module's client of a transport: gRPC on that gRPC server's shared server, HTTP on the
    session's default one (whose HTTP side is the same for either gRPC server)."""
    opened: dict[str, Transport] = {}

    def get(kind: str) -> Transport:
        if kind not in opened:
            opened[kind] = Transport(kind, running_server if kind == "http" else servers_by_grpc_server(kind))
        return opened[kind]

    yield get
    for transport in opened.values():
        transport.close()


# -- health, metadata, configuration ---------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_health_and_server_metadata(connect: Callable[[str], Transport], transport: str) -> None:
    client = connect(transport)
    assert client.is_server_live() and client.is_server_ready()
    meta = client.server_metadata()
    assert meta["name"] == "tessera"
    # HTTP's fuller list of extensions, checked on gRPC too: it is the same server's metadata.
    assert {"binary_tensor_data", "statistics", "model_repository"} <= set(meta["extensions"])


@pytest.mark.parametrize("model", SAMPLES)
# HTTP's latest ("") and explicit ("1") versions and its platform check, on gRPC too.
@pytest.mark.parametrize("version", [pytest.param("", id="latest"), pytest.param("1", id="v1")])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_model_metadata_and_config_describe_the_model(connect: Callable[[str], Transport], transport: str,
                                                      model: str, version: str) -> None:
    client = connect(transport)
    assert client.is_model_ready(model, version)
    meta = client.model_metadata(model, version)
    assert meta["name"] == model and meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
    config = client.model_config(model, version)
    assert config["name"] == model
    assert [i["name"] for i in meta["inputs"]] == [i["name"] for i in config["input"]]


# -- inference -------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", SAMPLES)
# HTTP: inputs and requested outputs as binary data or JSON. gRPC has one encoding and requests no
# outputs (binary_out None), so its default of every output stays covered.
@pytest.mark.parametrize(("transport", "binary_in", "binary_out"), per_transport(
    pytest.param(True, True, id="in-binary-out-binary"), pytest.param(True, False, id="in-binary-out-json"),
    pytest.param(False, True, id="in-json-out-binary"), pytest.param(False, False, id="in-json-out-json")))
def test_sync_infer_matches_in_process_onnxruntime(connect: Callable[[str], Transport], transport: str,
                                                   model: str, binary_in: bool | None,
                                                   binary_out: bool | None) -> None:
    client = connect(transport)
    feeds = sample_inputs(model)
    expected = run_reference(client.server.repository, model, feeds)
    outputs = None if binary_out is None else [client.output(name, binary_out) for name in expected]
    result = client.infer(model, client.inputs(feeds, binary_in), outputs=outputs, request_id="r-1")
    for name, value in expected.items():
        got = result.as_numpy(name)
        assert got.dtype == value.dtype
        np.testing.assert_allclose(got, value, rtol=0, atol=1e-6)
    # HTTP's request id check, on gRPC too.
    assert client.response(result)["model_version"] == "1" and client.response(result)["id"] == "r-1"


@pytest.mark.parametrize("model", SAMPLES)
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_aio_infer_matches_in_process_onnxruntime(connect: Callable[[str], Transport], transport: str,
                                                        model: str) -> None:
    client = connect(transport)
    feeds = sample_inputs(model, seed=5)
    async with client.aio() as c:
        assert await c.is_server_ready()  # HTTP's readiness check, on gRPC too
        result = await c.infer(model, client.inputs(feeds, aio=True))
    for name, value in run_reference(client.server.repository, model, feeds).items():
        np.testing.assert_allclose(result.as_numpy(name), value, rtol=0, atol=1e-6)


@pytest.mark.parametrize("datatype", DATATYPES)
# HTTP: binary data or JSON both ways; gRPC has one encoding.
@pytest.mark.parametrize(("transport", "binary"), per_transport(
    pytest.param(True, id="binary"), pytest.param(False, id="json")))
def test_every_datatype_round_trips(connect: Callable[[str], Transport], transport: str, datatype: str,
                                    binary: bool | None) -> None:
    client = connect(transport)
    rng = np.random.default_rng(1)
    if datatype == "BYTES":
        data = np.array([[f"row{r}-{c}".encode() for c in range(4)] for r in range(2)], dtype=np.object_)
    elif datatype == "BOOL":
        data = rng.integers(0, 2, (2, 4)).astype(bool)
    else:
        data = (rng.random((2, 4)) * 100).astype(triton_to_np_dtype(datatype))
    item = client.module.InferInput("INPUT0", [2, 4], datatype)
    if binary is None:
        item.set_data_from_numpy(data)
        outputs = None
    else:
        item.set_data_from_numpy(data, binary_data=binary)
        outputs = [client.output("OUTPUT0", binary)]
    got = client.infer(f"identity_{datatype.lower()}", [item], outputs=outputs).as_numpy("OUTPUT0")
    if datatype == "BYTES" and binary is False:
        data = data.astype(str).astype(np.object_)  # JSON carries BYTES as strings
    np.testing.assert_array_equal(got, data)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_requested_output_subset(connect: Callable[[str], Transport], transport: str) -> None:
    client = connect(transport)
    result = client.infer("two_input", client.inputs(sample_inputs("two_input")),
                          outputs=[client.output("product")])
    assert [o["name"] for o in client.response(result)["outputs"]] == ["product"]
    assert result.as_numpy("sum") is None


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_unknown_version_is_not_found(connect: Callable[[str], Transport], transport: str) -> None:
    client = connect(transport)
    call = lambda: client.infer("tabular", client.inputs(sample_inputs("tabular")), model_version="7")  # noqa: E731
    # HTTP's exact message and keeps-serving check, on gRPC too (gRPC checked a substring before).
    assert _failure(call) == (client.status(grpc.StatusCode.NOT_FOUND), "unknown version '7' of model 'tabular'")
    client.assert_serving()
