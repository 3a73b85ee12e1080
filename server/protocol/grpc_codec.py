"""gRPC messages <-> InferRequest / InferResponse, decoding tensors straight to numpy.

`raw_input_contents` become numpy views of the message's bytes where infer_wire reads the message (no
copy), of protobuf's bytes where protobuf parses it; typed `contents` go through np.asarray.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import numpy as np
from google.protobuf.message import DecodeError, Message

from .._generated import grpc_service_pb2 as pb
from ..datatypes import (
    V2_TO_NUMPY,
    V2_TO_WIRE_DTYPE,
    bytes_elements_to_tensor,
    serialize_bytes_tensor,
)
from ..errors import InvalidInput
from ..model_statistics import Duration, ModelStatistics
from ..tensors import InferRequest, InferResponse, Parameters, RequestedOutput, Tensor
from .infer_wire import WireRequest, read_infer_request
from .limits import DEFAULT_LIMITS, DecodeLimits, ShapeCheck
from .protobuf_wire import append_varint
from .request_core import check_new_input, raw_tensor, shape_text, timeout_us

__all__ = [
    "decode_infer_request", "encode_infer_response", "encode_statistics", "infer_response_bytes", "parse_message",
    "read_infer_message",
]

_M = TypeVar("_M", bound=Message)

# Which typed field of InferTensorContents carries each datatype (FP16/BF16: raw only).
_CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def parse_message(message: type[_M], data: bytes) -> _M:
    """Parse a request message; raises InvalidInput naming the message when the bytes are malformed."""
    try:
        return message.FromString(data)
    except DecodeError:
        raise InvalidInput(f"malformed {message.DESCRIPTOR.name} message") from None


def read_infer_message(data: bytes) -> pb.ModelInferRequest | WireRequest:
    """A ModelInferRequest read straight from its bytes where `infer_wire` reads it (the messages clients
    send every request), else parsed by protobuf; either goes to `decode_infer_request`. Raises
    InvalidInput when the bytes are malformed."""
    return read_infer_request(data) or parse_message(pb.ModelInferRequest, data)


def _parameters(params: object) -> Parameters:
    out: Parameters = {}
    for key, value in params.items():  # type: ignore[attr-defined]
        which = value.WhichOneof("parameter_choice")
        if which is not None:
            out[key] = getattr(value, which)
    return out


def _from_contents(tensor: pb.ModelInferRequest.InferInputTensor, datatype: str,
                   shape: tuple[int, ...]) -> Tensor:
    field = _CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(f"input '{tensor.name}': {datatype} must be sent in raw_input_contents")
    values = getattr(tensor.contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise InvalidInput(f"input '{tensor.name}': {len(values)} values in contents, but "
                           f"{shape_text(datatype, shape)} needs {count}")
    if datatype == "BYTES":
        return bytes_elements_to_tensor(values, count).reshape(shape)
    dtype = V2_TO_NUMPY[datatype]
    if dtype.itemsize < 4 and dtype.kind in "iu" and count:
        # int_contents / uint_contents are 32-bit: narrower datatypes must not wrap (70000 as UINT16).
        wide = np.asarray(values, dtype=np.int64)
        info = np.iinfo(dtype)
        if wide.min() < info.min or wide.max() > info.max:
            raise InvalidInput(f"input '{tensor.name}': contents hold values outside the range of {datatype}")
    return np.asarray(values, dtype=dtype).reshape(shape)


def _payload_bytes(tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None) -> int:
    """Bytes a BYTES input carries (its payload is not known from the shape)."""
    if raw is not None:
        return len(raw)
    return tensor.contents.ByteSize()


def decode_infer_request(msg: pb.ModelInferRequest | WireRequest, routing_key: str | None = None,
                         limits: DecodeLimits = DEFAULT_LIMITS, model_check: ShapeCheck | None = None
                         ) -> InferRequest:
    """Build an InferRequest from a ModelInferRequest, parsed or read from the wire (`infer_wire`).
    Raises InvalidInput with the exact problem.

    Every input's declared shape passes `limits` (and the model's check) before its data is decoded.
    CPU-bound for big messages: transports call it off the event loop above a size threshold.
    """
    if isinstance(msg, WireRequest):
        return _decode_read(msg, routing_key, limits, model_check)
    raw = msg.raw_input_contents
    # Repeated fields are read as slices (lists, made in C): iterating the container itself ends on an
    # IndexError whose message protobuf formats, 1.5% of a one-row request's CPU (BENCHMARKS.md).
    tensors = msg.inputs[:]
    _check_raw_count(len(raw), len(tensors))
    declared = _declare([(t.name, t.datatype, t.shape[:]) for t in tensors],
                        lambda index: _payload_bytes(tensors[index], raw[index] if raw else None), limits, model_check)
    inputs: dict[str, Tensor] = {}
    datatypes: dict[str, str] = {}
    for index, (name, datatype, shape) in enumerate(declared):
        check_new_input(name, inputs)
        if raw:
            if tensors[index].HasField("contents"):
                raise InvalidInput(f"input '{name}': contents and raw_input_contents are exclusive")
            inputs[name] = raw_tensor(name, datatype, shape, raw[index])
        else:
            inputs[name] = _from_contents(tensors[index], datatype, shape)
        datatypes[name] = datatype
    return _request(msg.model_name, msg.model_version, msg.id, inputs, datatypes,
                    _parameters(msg.parameters) if msg.parameters else {},
                    [RequestedOutput(o.name) for o in msg.outputs[:]] if msg.outputs else [], routing_key)


def _decode_read(msg: WireRequest, routing_key: str | None, limits: DecodeLimits,
                 model_check: ShapeCheck | None) -> InferRequest:
    """decode_infer_request of a message read from the wire: every input is in raw_input_contents."""
    raw = msg.raw_input_contents
    _check_raw_count(len(raw), len(msg.inputs))
    declared = _declare([(t.name, t.datatype, t.shape) for t in msg.inputs], lambda index: len(raw[index]),
                        limits, model_check)
    inputs: dict[str, Tensor] = {}
    datatypes: dict[str, str] = {}
    for index, (name, datatype, shape) in enumerate(declared):
        check_new_input(name, inputs)
        inputs[name] = raw_tensor(name, datatype, shape, raw[index])
        datatypes[name] = datatype
    return _request(msg.model_name, msg.model_version, msg.id, inputs, datatypes, msg.parameters,
                    [RequestedOutput(name) for name in msg.outputs], routing_key)


def _check_raw_count(raw: int, inputs: int) -> None:
    if raw and raw != inputs:
        raise InvalidInput(f"raw_input_contents has {raw} entries for {inputs} inputs")


def _declare(heads: list[tuple[str, str, list[int]]], payload_bytes: Callable[[int], int], limits: DecodeLimits,
             model_check: ShapeCheck | None) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, datatype, shape) of each input, once its declared shape and the request's totals so far pass
    `limits`; `payload_bytes(index)` is what a BYTES input carries (its shape does not say)."""
    declared: list[tuple[str, str, tuple[int, ...]]] = []
    elements = nbytes = 0
    for index, (name, datatype, dims) in enumerate(heads):
        numpy_type = V2_TO_NUMPY.get(datatype)
        if numpy_type is None:
            raise InvalidInput(f"input '{name}': unknown datatype '{datatype}'")
        shape = limits.check(name, datatype, dims, model_check, (elements, nbytes))
        count = math.prod(shape)
        elements += count
        nbytes += count * numpy_type.itemsize if datatype != "BYTES" else payload_bytes(index)
        limits.check_bytes(name, nbytes)
        declared.append((name, datatype, shape))
    return declared


def _request(model_name: str, model_version: str, request_id: str, inputs: dict[str, Tensor],
             datatypes: dict[str, str], parameters: Parameters, outputs: list[RequestedOutput],
             routing_key: str | None) -> InferRequest:
    return InferRequest(model_name, inputs, datatypes, model_version or None, request_id, outputs, parameters,
                        timeout_us(parameters) if parameters else 0, routing_key)


def encode_infer_response(response: InferResponse) -> pb.ModelInferResponse:
    """ModelInferResponse with every output in raw_output_contents, in the response's order."""
    msg = pb.ModelInferResponse(model_name=response.model_name, model_version=response.model_version,
                                id=response.id)
    raw = msg.raw_output_contents
    for name, array in response.outputs.items():
        datatype = response.datatypes[name]
        msg.outputs.add(name=name, datatype=datatype, shape=array.shape)
        if datatype == "BYTES":
            raw.append(serialize_bytes_tensor(array))
        else:
            raw.append(np.ascontiguousarray(array, dtype=V2_TO_WIRE_DTYPE[datatype]).tobytes())
    return msg


def infer_response_bytes(response: InferResponse) -> bytes:
    """The serialized ModelInferResponse of `response`: the bytes `encode_infer_response(response)
    .SerializeToString()` gives, written directly. Building the message object, then serializing it,
    took a twentieth of a one-row request's CPU and copied every output twice (BENCHMARKS.md)."""
    head = bytearray()
    _text_field(head, 0x0A, response.model_name)  # field 1, length-delimited
    _text_field(head, 0x12, response.model_version)  # 2
    _text_field(head, 0x1A, response.id)  # 3
    parts: list[bytes | bytearray | memoryview] = [b""]  # joined once: each output's bytes are copied only there
    for name, array in response.outputs.items():
        datatype = response.datatypes[name]
        tensor = bytearray()
        _text_field(tensor, 0x0A, name)
        _text_field(tensor, 0x12, datatype)
        if array.ndim:  # shape, packed: proto3 writes repeated int64 that way
            dims = bytearray()
            for dim in array.shape:
                append_varint(dims, dim)
            tensor.append(0x1A)
            append_varint(tensor, len(dims))
            tensor += dims
        head.append(0x2A)  # 5: outputs, in order
        append_varint(head, len(tensor))
        head += tensor
        data = (memoryview(serialize_bytes_tensor(array)) if datatype == "BYTES"
                else np.ascontiguousarray(array, dtype=V2_TO_WIRE_DTYPE[datatype]).data)
        prefix = bytearray(b"\x32")  # 6: raw_output_contents, one per output, after every output's metadata
        append_varint(prefix, data.nbytes)
        parts.append(prefix)
        parts.append(data)
    parts[0] = head
    return b"".join(parts)


def _text_field(out: bytearray, tag: int, text: str) -> None:
    if text:  # proto3 leaves empty strings out
        data = text.encode()
        out.append(tag)
        append_varint(out, len(data))
        out += data


def _duration(target: pb.StatisticDuration, source: Duration) -> None:
    target.count = source.count
    target.ns = source.ns


def encode_statistics(stats: list[ModelStatistics]) -> pb.ModelStatisticsResponse:
    msg = pb.ModelStatisticsResponse()
    for s in stats:
        item = msg.model_stats.add(name=s.name, version=s.version, last_inference=s.last_inference_ms,
                                   inference_count=s.inference_count, execution_count=s.execution_count)
        inf = item.inference_stats
        for field in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
            _duration(getattr(inf, field), getattr(s, field))
        for size, batch in sorted(s.batches.items()):
            entry = item.batch_stats.add(batch_size=size)
            _duration(entry.compute_input, batch.compute_input)
            _duration(entry.compute_infer, batch.compute_infer)
            _duration(entry.compute_output, batch.compute_output)
    return msg
