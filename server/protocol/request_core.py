"""What both codecs decide alike, so the same mistake gets the same status and message on gRPC and HTTP:
the `timeout` parameter, inputs named twice, the size of raw (binary) tensor bytes, and how a shape
is written in messages."""

from __future__ import annotations

import math
from collections.abc import Container, Sequence

import numpy as np

from ..datatypes import V2_TO_WIRE_DTYPE, deserialize_bytes_tensor
from ..errors import InvalidInput
from ..tensors import Parameters, Tensor

__all__ = ["check_new_input", "raw_tensor", "shape_text", "timeout_us"]


def shape_text(datatype: str, shape: Sequence[int]) -> str:
    """`FP32[2,8]`: how every message writes a tensor's type and shape."""
    return f"{datatype}[{','.join(str(d) for d in shape)}]"


def check_new_input(name: str, seen: Container[str]) -> None:
    """Raises InvalidInput when an input `name` was already given in the same request."""
    if name in seen:
        raise InvalidInput(f"input '{name}' appears more than once")


def raw_tensor(name: str, datatype: str, shape: tuple[int, ...], data: bytes | memoryview) -> Tensor:
    """A view of `data` (gRPC raw_input_contents, or an HTTP binary section) as the declared tensor.

    Fixed-width datatypes must carry exactly shape x itemsize bytes; BYTES elements are length-prefixed.
    """
    count = math.prod(shape)
    if datatype == "BYTES":
        return deserialize_bytes_tensor(data, count, name).reshape(shape)
    wire = V2_TO_WIRE_DTYPE[datatype]
    expected = count * wire.itemsize
    if len(data) != expected:
        raise InvalidInput(f"input '{name}': {shape_text(datatype, shape)} needs {expected} bytes of raw "
                           f"data, got {len(data)}")
    # One constructor, not frombuffer + reshape (0.30 against 0.69 us here); still a view of `data`.
    return np.ndarray(shape, wire, data)


def timeout_us(parameters: Parameters) -> int:
    """The `timeout` parameter in microseconds (0 when absent); raises InvalidInput for anything else
    than a non-negative integer (floats, inf, NaN, booleans, strings, negatives)."""
    timeout = parameters.get("timeout", 0)
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 0:
        raise InvalidInput(f"parameter 'timeout' must be a non-negative integer of microseconds, "
                           f"got {timeout!r}")
    return timeout
