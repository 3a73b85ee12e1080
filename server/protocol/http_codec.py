"""HTTP/REST V2 inference codec: JSON bodies and the binary tensor extension <-> InferRequest/Response.

A binary request is `Inference-Header-Content-Length` bytes of JSON, then the raw tensors of the
inputs whose parameters carry `binary_data_size`, in input order. Binary inputs become
`numpy.frombuffer` views of the body (no copy); JSON `data` goes through `np.asarray` once.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Any

import numpy as np
import orjson

from ..datatypes import (
    V2_TO_NUMPY,
    V2_TO_WIRE_DTYPE,
    serialize_bytes_tensor,
    text_array,
)
from ..errors import InvalidInput, Unsupported
from ..tensors import InferRequest, InferResponse, Parameters, RequestedOutput, Tensor
from .limits import DEFAULT_LIMITS, DecodeLimits, ShapeCheck
from .request_core import check_new_input, raw_tensor, timeout_us

__all__ = [
    "HEADER_LENGTH",
    "EncodedResponse",
    "decode_infer_request",
    "encode_infer_response",
    "parse_json_object",
]

HEADER_LENGTH = "Inference-Header-Content-Length"
"""The binary extension's HTTP header: bytes of JSON at the start of the body."""

# Which numpy kinds (as inferred from JSON numbers and booleans) each target kind accepts.
_JSON_KINDS: dict[str, frozenset[str]] = {
    "b": frozenset("b"),
    "i": frozenset("iu"),
    "u": frozenset("iu"),
    "f": frozenset("iuf"),
}
_UNSUPPORTED_PARAMETERS = ("shared_memory_region", "classification")


@dataclass(frozen=True, slots=True)
class EncodedResponse:
    """An encoded infer response; `header_length` is None when the body is plain JSON."""

    body: bytes
    header_length: int | None

    @property
    def media_type(self) -> str:
        return "application/json" if self.header_length is None else "application/octet-stream"


# -- generic JSON ------------------------------------------------------------------------------
def parse_json_object(data: bytes | memoryview, what: str = "request body") -> dict[str, Any]:
    """Parse a JSON object; raise InvalidInput naming `what` when it is malformed or not an object."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON in {what}: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object, got {_json_type(value)}")
    return value


def _json_type(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number",
             float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


_REQUIRED: Any = object()
_EXAMPLES: dict[type, object] = {str: "", list: [], dict: {}}


def _field(obj: dict[str, Any], key: str, kind: type, where: str, default: Any = _REQUIRED) -> Any:
    """obj[key] checked against a JSON type (str, list or dict); missing fields raise unless defaulted."""
    if key not in obj:
        if default is _REQUIRED:
            raise InvalidInput(f"{where}: missing required field '{key}'")
        return default
    value = obj[key]
    if not isinstance(value, kind):
        expected = _json_type(_EXAMPLES[kind])
        article = "an" if expected[0] in "aeiou" else "a"
        raise InvalidInput(f"{where}: field '{key}' must be {article} {expected}, got {_json_type(value)}")
    return value


def _parameters(obj: dict[str, Any], where: str) -> Parameters:
    params: dict[str, Any] = _field(obj, "parameters", dict, where, {})
    for key, value in params.items():
        if not isinstance(value, bool | int | float | str):
            raise InvalidInput(f"{where}: parameter '{key}' must be a boolean, number or string, "
                               f"got {_json_type(value)}")
    return params


# -- request -----------------------------------------------------------------------------------
def decode_infer_request(body: bytes | bytearray, header_length: str | None, model_name: str,
                         model_version: str | None = None, routing_key: str | None = None,
                         limits: DecodeLimits = DEFAULT_LIMITS,
                         model_check: ShapeCheck | None = None) -> InferRequest:
    """Decode an infer request body; `header_length` is the raw Inference-Header-Content-Length.

    Binary tensors are read-only views of `body`. Every input's declared shape passes `limits` (and
    the model's check) before its data is touched. Raises InvalidInput for anything malformed,
    Unsupported for shared memory and classification. CPU-bound for big bodies: the route calls it
    off the event loop above a size threshold.
    """
    json_end = _json_length(header_length, len(body))
    view = memoryview(body)
    header = parse_json_object(view[:json_end], "inference request")
    entries: list[Any] = _field(header, "inputs", list, "inference request")
    parameters = _parameters(header, "inference request")
    inputs: dict[str, Tensor] = {}
    datatypes: dict[str, str] = {}
    offset = json_end
    budget = _Budget(limits, model_check)
    for index, entry in enumerate(entries):
        name, datatype, array, used = _decode_input(entry, index, view, offset, budget)
        check_new_input(name, inputs)
        inputs[name], datatypes[name] = array, datatype
        offset += used
    if offset != len(body):
        raise InvalidInput(f"the inputs declare {offset - json_end} bytes of binary data, "
                           f"the body carries {len(body) - json_end}")
    return InferRequest(
        model_name=model_name,
        model_version=model_version or None,
        inputs=inputs,
        datatypes=datatypes,
        id=_field(header, "id", str, "inference request", ""),
        outputs=_decode_outputs(header, parameters),
        parameters=parameters,
        timeout_us=timeout_us(parameters),
        routing_key=routing_key,
    )


def _json_length(header_length: str | None, body_length: int) -> int:
    if header_length is None:
        return body_length
    try:
        length = int(header_length)
    except ValueError:
        raise InvalidInput(f"{HEADER_LENGTH} must be an integer, got '{header_length}'") from None
    if not 0 <= length <= body_length:
        raise InvalidInput(f"{HEADER_LENGTH} is {length}, outside the body's {body_length} bytes")
    return length


@dataclass(slots=True)
class _Budget:
    """What the request's inputs have declared so far, against the per-request limits."""

    limits: DecodeLimits
    model_check: ShapeCheck | None
    elements: int = 0
    nbytes: int = 0

    def shape(self, name: str, datatype: str, shape: list[Any]) -> tuple[int, ...]:
        dims = self.limits.check(name, datatype, shape, None, (self.elements, self.nbytes))
        count = prod(dims)
        self.elements += count
        if datatype != "BYTES":
            self.nbytes += count * V2_TO_NUMPY[datatype].itemsize
        return dims

    def model(self, name: str, datatype: str, shape: tuple[int, ...]) -> None:
        """The model's check, after the entry's own structure is known good, before its data is read."""
        self.limits.check_model(name, datatype, shape, self.model_check)

    def payload(self, name: str, size: int) -> None:
        self.nbytes += size
        self.limits.check_bytes(name, self.nbytes)


def _decode_input(entry: Any, index: int, body: memoryview, offset: int,
                  budget: _Budget) -> tuple[str, str, Tensor, int]:
    """One input: (name, datatype, array, binary bytes consumed from `offset`)."""
    if not isinstance(entry, dict):
        raise InvalidInput(f"inputs[{index}] must be a JSON object, got {_json_type(entry)}")
    name = _field(entry, "name", str, f"inputs[{index}]")
    where = f"input '{name}'"
    datatype = _field(entry, "datatype", str, where)
    if datatype not in V2_TO_NUMPY:
        raise InvalidInput(f"{where}: unknown datatype '{datatype}'")
    shape = budget.shape(name, datatype, _field(entry, "shape", list, where))
    params = _parameters(entry, where)
    _reject_unsupported(params, where)
    size = params.get("binary_data_size")
    if size is not None:
        if "data" in entry:
            raise InvalidInput(f"{where}: has both 'data' and 'binary_data_size'")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidInput(f"{where}: 'binary_data_size' must be a non-negative integer")
        if offset + size > len(body):
            raise InvalidInput(f"{where}: binary_data_size {size} runs past the end of the body "
                               f"({len(body) - offset} bytes remain)")
        if datatype == "BYTES":
            budget.payload(name, size)
        budget.model(name, datatype, shape)
        return name, datatype, raw_tensor(name, datatype, shape, body[offset : offset + size]), size
    if "data" not in entry:
        raise InvalidInput(f"{where}: has neither 'data' nor 'binary_data_size'")
    if datatype == "BF16":
        raise InvalidInput(f"{where}: BF16 data must be sent as binary data (binary_data_size)")
    budget.model(name, datatype, shape)
    return name, datatype, _json_array(entry["data"], datatype, shape, where), 0


def _reject_unsupported(params: Parameters, where: str) -> None:
    for key in _UNSUPPORTED_PARAMETERS:
        if key in params:
            raise Unsupported(f"{where}: parameter '{key}' is not supported by this server")


def _json_array(data: Any, datatype: str, shape: tuple[int, ...], where: str) -> Tensor:
    if datatype == "BYTES":
        array = _json_bytes(data, where)
    else:
        array = _json_numbers(data, V2_TO_NUMPY[datatype], where)
    if array.size != prod(shape):
        raise InvalidInput(f"{where}: shape {list(shape)} needs {prod(shape)} elements, "
                           f"'data' has {array.size}")
    return array.reshape(shape)


def _json_numbers(data: Any, dtype: np.dtype[Any], where: str) -> Tensor:
    try:
        raw = np.asarray(data)
    except ValueError:
        raise InvalidInput(f"{where}: 'data' is a ragged nested list") from None
    if raw.size and raw.dtype.kind not in _JSON_KINDS[dtype.kind]:
        if dtype.kind in "iu" and raw.dtype.kind in "fO":
            # numpy infers float64 (or object) for integers beyond int64: check them one by one.
            return _json_big_integers(data, dtype, where)
        wanted = {"b": "booleans", "i": "integers", "u": "integers", "f": "numbers"}[dtype.kind]
        raise InvalidInput(f"{where}: {dtype} 'data' must hold {wanted} only")
    if raw.size and dtype.kind in "iu":
        info = np.iinfo(dtype)
        if raw.min() < info.min or raw.max() > info.max:
            raise InvalidInput(f"{where}: 'data' holds values outside the range of {dtype}")
    if dtype.kind != "f":
        return raw.astype(dtype, copy=False)
    with np.errstate(over="ignore"):  # JSON numbers are finite: one that overflows the datatype is refused
        out = raw.astype(dtype, copy=False)
    if not np.isfinite(out).all():
        raise InvalidInput(f"{where}: 'data' holds values outside the range of {dtype}")
    return out


def _json_big_integers(data: Any, dtype: np.dtype[Any], where: str) -> Tensor:
    values = _leaves(data)
    if not all(type(v) is int for v in values):
        raise InvalidInput(f"{where}: {dtype} 'data' must hold integers only")
    try:
        return np.asarray(values, dtype=dtype)
    except OverflowError:
        raise InvalidInput(f"{where}: 'data' holds values outside the range of {dtype}") from None


def _leaves(data: Any) -> list[Any]:
    """The non-list values of a nested list, row-major."""
    leaves: list[Any] = []
    pending = [data]
    while pending:
        value = pending.pop()
        if isinstance(value, list):
            pending.extend(reversed(value))
        else:
            leaves.append(value)
    return leaves


def _json_bytes(data: Any, where: str) -> Tensor:
    """JSON strings as one fixed-width str array (a few bytes per element) where that is cheaper than
    objects (not when one long string makes it wide), unless a string ends in NUL (numpy drops it)."""
    items = _leaves(data)
    for value in items:
        if not isinstance(value, str):
            raise InvalidInput(f"{where}: BYTES 'data' must hold strings, got {_json_type(value)}")
    return text_array(items)


def _decode_outputs(header: dict[str, Any], parameters: Parameters) -> list[RequestedOutput]:
    entries: list[Any] = _field(header, "outputs", list, "inference request", [])
    default = parameters.get("binary_data_output")
    if default is not None and not isinstance(default, bool):
        raise InvalidInput("parameter 'binary_data_output' must be a boolean")
    outputs: list[RequestedOutput] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise InvalidInput(f"outputs[{index}] must be a JSON object, got {_json_type(entry)}")
        name = _field(entry, "name", str, f"outputs[{index}]")
        params = _parameters(entry, f"output '{name}'")
        _reject_unsupported(params, f"output '{name}'")
        binary = params.pop("binary_data", default)
        if binary is not None and not isinstance(binary, bool):
            raise InvalidInput(f"output '{name}': parameter 'binary_data' must be a boolean")
        outputs.append(RequestedOutput(name=name, binary=binary, parameters=params))
    return outputs


# -- response ----------------------------------------------------------------------------------
def encode_infer_response(response: InferResponse, request: InferRequest) -> EncodedResponse:
    """Encode outputs as JSON `data`, or as binary blobs where the request asked for binary data.

    BYTES outputs that are not valid UTF-8 go binary even when JSON was asked for.
    """
    default = request.parameters.get("binary_data_output") is True
    wants_binary = {o.name: o.binary for o in request.outputs}
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes | memoryview] = []
    for name, array in response.outputs.items():
        datatype = response.datatypes[name]
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        binary = wants_binary.get(name)
        data = _json_data(array, datatype) if not (default if binary is None else binary) else None
        if data is None:
            blob = _binary_data(array, datatype)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = data
        outputs.append(entry)
    document: dict[str, Any] = {"model_name": response.model_name,
                                "model_version": response.model_version, "outputs": outputs}
    if response.id:
        document["id"] = response.id
    if response.parameters:
        document["parameters"] = response.parameters
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return EncodedResponse(header, None)
    return EncodedResponse(b"".join([header, *blobs]), len(header))


def _json_data(array: Tensor, datatype: str) -> Any:
    """A flat JSON-able form of the array, or None when it can only travel as binary."""
    if datatype == "BYTES":
        try:
            return [v.decode() if isinstance(v, bytes) else str(v) for v in array.reshape(-1).tolist()]
        except UnicodeDecodeError:
            return None
    if datatype == "BF16":
        bits = np.ascontiguousarray(array, dtype=np.uint16).reshape(-1)
        return (bits.astype(np.uint32) << 16).view(np.float32)
    return np.ascontiguousarray(array, dtype=V2_TO_NUMPY[datatype].newbyteorder("=")).reshape(-1)


def _binary_data(array: Tensor, datatype: str) -> bytes | memoryview:
    if datatype == "BYTES":
        return serialize_bytes_tensor(array)
    contiguous = np.ascontiguousarray(array, dtype=V2_TO_WIRE_DTYPE[datatype])
    return contiguous.reshape(-1).view(np.uint8).data
