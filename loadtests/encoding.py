"""Encode samples once, before load starts: serialized ModelInferRequest bytes for gRPC, or a whole
HTTP/1.1 request (JSON tensors or the binary tensor extension) for HTTP.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from server._generated import grpc_service_pb2 as pb
from server.datatypes import NUMPY_TO_V2

from .inputs import Sample
from .spec import Target

__all__ = ["encode_payloads", "grpc_payload", "http_payload"]

_NUMPY_TO_V2 = NUMPY_TO_V2


def encode_payloads(target: Target, samples: Sequence[Sample], outputs: Sequence[str] = ()) -> list[bytes]:
    """One wire payload per sample, for the target's protocol and encoding."""
    if target.protocol == "grpc":
        return [grpc_payload(target, s, outputs) for s in samples]
    return [http_payload(target, s, outputs) for s in samples]


def grpc_payload(target: Target, sample: Sample, outputs: Sequence[str] = ()) -> bytes:
    request = pb.ModelInferRequest(model_name=target.model, model_version=target.model_version)
    for name, array in sample.items():
        request.inputs.add(name=name, datatype=_datatype(array), shape=array.shape)
        request.raw_input_contents.append(_raw(array))
    for name in outputs:
        request.outputs.add(name=name)
    return request.SerializeToString()


def http_payload(target: Target, sample: Sample, outputs: Sequence[str] = ()) -> bytes:
    """A complete keep-alive HTTP/1.1 POST to /v2/models/<model>[/versions/<v>]/infer."""
    path = f"/v2/models/{target.model}"
    if target.model_version:
        path += f"/versions/{target.model_version}"
    path += "/infer"
    binary = target.http_encoding == "binary"
    inputs: list[dict[str, Any]] = []
    raws: list[bytes] = []
    for name, array in sample.items():
        entry: dict[str, Any] = {"name": name, "shape": list(array.shape), "datatype": _datatype(array)}
        if binary:
            raws.append(_raw(array))
            entry["parameters"] = {"binary_data_size": len(raws[-1])}
        else:
            entry["data"] = _json_data(array)
        inputs.append(entry)
    header: dict[str, Any] = {"inputs": inputs}
    if outputs:
        header["outputs"] = [{"name": n, "parameters": {"binary_data": binary}} for n in outputs]
    elif binary:
        header["parameters"] = {"binary_data_output": True}
    head = json.dumps(header, separators=(",", ":")).encode()
    body = head + b"".join(raws)
    lines = [f"POST {path} HTTP/1.1", f"Host: {target.authority}", f"Content-Length: {len(body)}"]
    if binary:
        lines += ["Content-Type: application/octet-stream", f"Inference-Header-Content-Length: {len(head)}"]
    else:
        lines.append("Content-Type: application/json")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _datatype(array: npt.NDArray[Any]) -> str:
    try:
        return _NUMPY_TO_V2[array.dtype]
    except KeyError:
        raise ValueError(f"no V2 datatype for numpy {array.dtype}") from None


def _raw(array: npt.NDArray[Any]) -> bytes:
    if array.dtype == np.object_:  # BYTES: each element with a 4-byte little-endian length prefix
        items = [e if isinstance(e, bytes) else str(e).encode() for e in array.ravel()]
        return b"".join(struct.pack("<I", len(e)) + e for e in items)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _json_data(array: npt.NDArray[Any]) -> list[Any]:
    if array.dtype == np.object_:
        return [e.decode() if isinstance(e, bytes) else str(e) for e in array.ravel()]
    return list(array.ravel().tolist())
