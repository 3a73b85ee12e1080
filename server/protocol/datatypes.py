"""V2 datatypes and their numpy, config.pbtxt and ONNX counterparts, as lookup tables.

BYTES elements travel with Triton's 4-byte little-endian length prefix.
BF16 has no numpy dtype: it is carried as uint16 bit patterns and only in raw form.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from ..errors import InvalidInput
from ..tensors import Tensor

__all__ = [
    "CONFIG_TO_V2",
    "NUMPY_TO_V2",
    "ONNX_TO_V2",
    "V2_TO_CONFIG",
    "V2_TO_NUMPY",
    "deserialize_bytes_tensor",
    "element_size",
    "serialize_bytes_tensor",
]

V2_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
    "BF16": np.dtype(np.uint16),
}

# Little-endian wire dtypes (the protocol's raw form is little-endian).
V2_TO_WIRE_DTYPE: dict[str, np.dtype[Any]] = {
    name: dtype.newbyteorder("<") for name, dtype in V2_TO_NUMPY.items() if name != "BYTES"
}

NUMPY_TO_V2: dict[np.dtype[Any], str] = {
    dtype: name for name, dtype in V2_TO_NUMPY.items() if name not in ("BF16",)
}

CONFIG_TO_V2: dict[str, str] = {
    "TYPE_BOOL": "BOOL",
    "TYPE_UINT8": "UINT8",
    "TYPE_UINT16": "UINT16",
    "TYPE_UINT32": "UINT32",
    "TYPE_UINT64": "UINT64",
    "TYPE_INT8": "INT8",
    "TYPE_INT16": "INT16",
    "TYPE_INT32": "INT32",
    "TYPE_INT64": "INT64",
    "TYPE_FP16": "FP16",
    "TYPE_FP32": "FP32",
    "TYPE_FP64": "FP64",
    "TYPE_STRING": "BYTES",
    "TYPE_BF16": "BF16",
}
V2_TO_CONFIG: dict[str, str] = {v2: cfg for cfg, v2 in CONFIG_TO_V2.items()}

ONNX_TO_V2: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
    "tensor(bfloat16)": "BF16",
}

_LENGTH = struct.Struct("<I")


def element_size(datatype: str) -> int:
    """Bytes per element of a fixed-size datatype (BYTES has none)."""
    return V2_TO_NUMPY[datatype].itemsize


def serialize_bytes_tensor(array: Tensor) -> bytes:
    """Flatten a BYTES tensor row-major into length-prefixed elements."""
    parts: list[bytes] = []
    for item in array.reshape(-1):
        data = item if isinstance(item, bytes) else str(item).encode()
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def deserialize_bytes_tensor(buffer: bytes | memoryview, count: int, name: str) -> Tensor:
    """Split length-prefixed BYTES elements; exactly `count` must fill `buffer`."""
    view = memoryview(buffer)
    items: list[bytes] = []
    offset = 0
    end = len(view)
    while offset < end:
        if offset + 4 > end:
            raise InvalidInput(f"input '{name}': BYTES element {len(items)} has a truncated length prefix")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > end:
            raise InvalidInput(
                f"input '{name}': BYTES element {len(items)} declares {length} bytes, "
                f"only {end - offset} remain"
            )
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if len(items) != count:
        raise InvalidInput(f"input '{name}': expected {count} BYTES elements, got {len(items)}")
    out = np.empty(count, dtype=np.object_)
    out[:] = items
    return out
