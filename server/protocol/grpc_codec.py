"""gRPC messages <-> InferRequest / InferResponse, decoding tensors straight to numpy.

`raw_input_contents` become np.frombuffer views (no copy); typed `contents` go through np.asarray.
"""

from __future__ import annotations

import math

import numpy as np

from .._generated import grpc_service_pb2 as pb
from ..errors import InvalidInput
from ..statistics import Duration, ModelStatistics
from ..tensors import InferRequest, InferResponse, Parameters, RequestedOutput, Tensor
from .datatypes import V2_TO_NUMPY, V2_TO_WIRE_DTYPE, deserialize_bytes_tensor, serialize_bytes_tensor

__all__ = ["decode_infer_request", "encode_infer_response", "encode_statistics"]

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


def _parameters(params: object) -> Parameters:
    out: Parameters = {}
    for key, value in params.items():  # type: ignore[attr-defined]
        which = value.WhichOneof("parameter_choice")
        if which is not None:
            out[key] = getattr(value, which)
    return out


def _shape(tensor: pb.ModelInferRequest.InferInputTensor) -> tuple[int, ...]:
    shape = tuple(tensor.shape)
    if any(d < 0 for d in shape):
        raise InvalidInput(f"input '{tensor.name}': shape {list(shape)} has a negative dimension")
    return shape


def _from_raw(name: str, datatype: str, shape: tuple[int, ...], raw: bytes) -> Tensor:
    count = math.prod(shape)
    if datatype == "BYTES":
        return deserialize_bytes_tensor(raw, count, name).reshape(shape)
    dtype = V2_TO_WIRE_DTYPE[datatype]
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidInput(f"input '{name}': raw content is {len(raw)} bytes but {datatype}"
                           f"{list(shape)} needs {expected}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _from_contents(tensor: pb.ModelInferRequest.InferInputTensor, datatype: str,
                   shape: tuple[int, ...]) -> Tensor:
    field = _CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(f"input '{tensor.name}': {datatype} must be sent in raw_input_contents")
    values = getattr(tensor.contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise InvalidInput(f"input '{tensor.name}': {len(values)} values in contents, but "
                           f"{datatype}{list(shape)} needs {count}")
    if datatype == "BYTES":
        array = np.empty(count, dtype=np.object_)
        array[:] = list(values)
        return array.reshape(shape)
    dtype = V2_TO_NUMPY[datatype]
    if dtype.itemsize < 4 and dtype.kind in "iu" and count:
        # int_contents / uint_contents are 32-bit: narrower datatypes must not wrap (70000 as UINT16).
        wide = np.asarray(values, dtype=np.int64)
        info = np.iinfo(dtype)
        if wide.min() < info.min or wide.max() > info.max:
            raise InvalidInput(f"input '{tensor.name}': contents hold values outside the range of {datatype}")
    return np.asarray(values, dtype=dtype).reshape(shape)


def decode_infer_request(msg: pb.ModelInferRequest, routing_key: str | None = None) -> InferRequest:
    """Build an InferRequest from a ModelInferRequest. Raises InvalidInput with the exact problem."""
    raw = msg.raw_input_contents
    if raw and len(raw) != len(msg.inputs):
        raise InvalidInput(f"raw_input_contents has {len(raw)} entries for {len(msg.inputs)} inputs")
    inputs: dict[str, Tensor] = {}
    datatypes: dict[str, str] = {}
    for index, tensor in enumerate(msg.inputs):
        datatype = tensor.datatype
        if datatype not in V2_TO_NUMPY:
            raise InvalidInput(f"input '{tensor.name}': unknown datatype '{datatype}'")
        if tensor.name in inputs:
            raise InvalidInput(f"input '{tensor.name}' is given twice")
        shape = _shape(tensor)
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInput(f"input '{tensor.name}': contents and raw_input_contents are exclusive")
            inputs[tensor.name] = _from_raw(tensor.name, datatype, shape, raw[index])
        else:
            inputs[tensor.name] = _from_contents(tensor, datatype, shape)
        datatypes[tensor.name] = datatype
    parameters = _parameters(msg.parameters)
    timeout = parameters.get("timeout", 0)
    return InferRequest(
        model_name=msg.model_name,
        model_version=msg.model_version or None,
        id=msg.id,
        inputs=inputs,
        datatypes=datatypes,
        outputs=[RequestedOutput(o.name) for o in msg.outputs],
        parameters=parameters,
        timeout_us=int(timeout) if isinstance(timeout, int | float) and not isinstance(timeout, bool) else 0,
        routing_key=routing_key,
    )


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
