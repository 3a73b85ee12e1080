"""Request inputs: read the model's metadata, then make tensors at random or take rows from a file.

A sample is one request's inputs, `{input name: ndarray}`; a small pool of them is encoded once and
sent round-robin, so no tensor is built while load runs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

from server._generated import grpc_service_pb2 as pb
from server.datatypes import V2_TO_NUMPY

from .spec import Target
from .transports import http_get

__all__ = [
    "V2_TO_NUMPY",
    "ModelInfo",
    "Sample",
    "TensorInfo",
    "fetch_model_info",
    "grpc_channel",
    "random_samples",
    "samples_from_file",
]

# The protocol's datatype table is the server's own (BF16 travels as uint16 bit patterns).
Sample = dict[str, npt.NDArray[Any]]

METADATA_PATH = "/inference.GRPCInferenceService/ModelMetadata"


@dataclass(frozen=True, slots=True)
class TensorInfo:
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]


def fetch_model_info(target: Target, timeout_s: float = 10.0) -> ModelInfo:
    """The model's V2 metadata over the target's protocol, with its TLS settings and headers.
    Raises OSError / grpc.RpcError."""
    if target.protocol == "http":
        path = f"/v2/models/{target.model}"
        if target.model_version:
            path += f"/versions/{target.model_version}"
        body = json.loads(http_get(target.base_url + path, target, timeout_s))
        return ModelInfo(body["name"], _tensors(body.get("inputs", [])), _tensors(body.get("outputs", [])))
    request = pb.ModelMetadataRequest(name=target.model, version=target.model_version)
    with grpc_channel(target) as channel:
        call = channel.unary_unary(
            METADATA_PATH,
            request_serializer=pb.ModelMetadataRequest.SerializeToString,
            response_deserializer=pb.ModelMetadataResponse.FromString,
        )
        reply = call(request, timeout=timeout_s, metadata=[(k.lower(), v) for k, v in target.headers] or None)
    return ModelInfo(reply.name, _tensors_pb(reply.inputs), _tensors_pb(reply.outputs))


def grpc_channel(target: Target) -> grpc.Channel:
    """A grpcio channel to the target: insecure, or TLS with its CA, client certificate and
    server name (`grpc.ssl_target_name_override`). Metadata is per call. Raises OSError on a file."""
    address = f"[{target.host}]:{target.port}" if ":" in target.host else f"{target.host}:{target.port}"
    if target.tls is None:
        return grpc.insecure_channel(address)
    tls = target.tls

    def read(path: Path | None) -> bytes | None:
        return path.read_bytes() if path is not None else None

    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(tls.ca_file), private_key=read(tls.key_file), certificate_chain=read(tls.cert_file)
    )
    options = [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else []
    return grpc.secure_channel(address, credentials, options=options)


def random_samples(
    info: ModelInfo,
    *,
    batch_size: int = 1,
    count: int = 64,
    seed: int = 0,
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> list[Sample]:
    """`count` requests of random data shaped by the metadata; -1 dims become `batch_size` (first)
    or 1 (others), unless `shapes` gives an input's full shape."""
    if not info.inputs:
        raise ValueError(f"model {info.name!r} publishes no inputs; give --input-file or --shape")
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(count):
        sample: Sample = {}
        for tensor in info.inputs:
            shape = (
                tuple(shapes[tensor.name]) if shapes and tensor.name in shapes else _concrete(tensor.shape, batch_size)
            )
            sample[tensor.name] = _random_array(rng, tensor.datatype, shape)
        samples.append(sample)
    return samples


def samples_from_file(path: Path, info: ModelInfo, *, batch_size: int = 1, limit: int = 1024) -> list[Sample]:
    """Samples from a JSON or Parquet file.

    JSON: a V2 request body (`{"inputs": [...]}`), a list of them, or a list of row objects.
    Rows (JSON objects or Parquet rows) map to inputs by column name when every input is a column,
    else, for a model with one input of shape [-1, F], the file's F columns in order form a row.
    `batch_size` consecutive rows make one request.
    """
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        columns: dict[str, list[Any]] = pq.read_table(path).slice(0, limit * batch_size).to_pydict()
        return _rows_to_samples(columns, info, batch_size)
    data = json.loads(path.read_text())
    bodies = [data] if isinstance(data, dict) else data
    if bodies and isinstance(bodies[0], dict) and "inputs" in bodies[0]:
        return [_v2_body_to_sample(body) for body in bodies[:limit]]
    rows = bodies[: limit * batch_size]
    names = list(rows[0]) if rows else []
    return _rows_to_samples({n: [row[n] for row in rows] for n in names}, info, batch_size)


def _rows_to_samples(columns: Mapping[str, Sequence[Any]], info: ModelInfo, batch_size: int) -> list[Sample]:
    n_rows = len(next(iter(columns.values()), []))
    if n_rows < batch_size:
        raise ValueError(f"need at least {batch_size} rows, the file has {n_rows}")
    by_name = {t.name: t for t in info.inputs}
    if by_name and set(by_name) <= set(columns):
        arrays = {n: np.asarray(columns[n], dtype=V2_TO_NUMPY[t.datatype]) for n, t in by_name.items()}
        arrays = {n: a.reshape(n_rows, -1) if len(by_name[n].shape) > 1 else a for n, a in arrays.items()}
    elif len(info.inputs) == 1 and len(info.inputs[0].shape) == 2:
        only = info.inputs[0]
        if only.shape[1] not in (-1, len(columns)):
            raise ValueError(f"input {only.name!r} takes {only.shape[1]} features, the file has {len(columns)} columns")
        matrix = np.column_stack([np.asarray(c, dtype=V2_TO_NUMPY[only.datatype]) for c in columns.values()])
        arrays = {only.name: matrix}
    else:
        raise ValueError(f"cannot map columns {sorted(columns)} to inputs {sorted(by_name)}")
    return [
        {n: np.ascontiguousarray(a[i : i + batch_size]) for n, a in arrays.items()}
        for i in range(0, n_rows - batch_size + 1, batch_size)
    ]


def _v2_body_to_sample(body: Mapping[str, Any]) -> Sample:
    sample: Sample = {}
    for tensor in body["inputs"]:
        dtype = V2_TO_NUMPY[tensor["datatype"]]
        data = tensor["data"]
        if tensor["datatype"] == "BYTES":
            data = [d.encode() if isinstance(d, str) else d for d in np.ravel(np.asarray(data, dtype=object))]
        sample[tensor["name"]] = np.asarray(data, dtype=dtype).reshape(tensor["shape"])
    return sample


def _random_array(rng: np.random.Generator, datatype: str, shape: tuple[int, ...]) -> npt.NDArray[Any]:
    if datatype not in V2_TO_NUMPY:
        raise ValueError(f"cannot generate {datatype} data; give --input-file")
    dtype = V2_TO_NUMPY[datatype]
    if datatype == "BYTES":
        flat = [rng.bytes(8).hex().encode() for _ in range(int(np.prod(shape)))]
        return np.asarray(flat, dtype=object).reshape(shape)
    if datatype == "BOOL":
        return rng.integers(0, 2, size=shape).astype(dtype)
    if dtype.kind == "f":
        return rng.random(size=shape).astype(dtype)
    return rng.integers(0, 100, size=shape).astype(dtype)


def _concrete(shape: Sequence[int], batch_size: int) -> tuple[int, ...]:
    return tuple((batch_size if i == 0 else 1) if d < 0 else d for i, d in enumerate(shape))


def _tensors(items: Sequence[Mapping[str, Any]]) -> tuple[TensorInfo, ...]:
    return tuple(TensorInfo(t["name"], t["datatype"], tuple(int(d) for d in t["shape"])) for t in items)


def _tensors_pb(items: Sequence[pb.ModelMetadataResponse.TensorMetadata]) -> tuple[TensorInfo, ...]:
    return tuple(TensorInfo(t.name, t.datatype, tuple(t.shape)) for t in items)
