"""V2 datatypes and their numpy, config.pbtxt and ONNX counterparts, as lookup tables.

BYTES elements travel with Triton's 4-byte little-endian length prefix.
BF16 has no numpy dtype: it is carried as uint16 bit patterns and only in raw form.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterable
from itertools import islice
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import InvalidInput
from .tensors import Tensor

__all__ = [
    "CONFIG_TO_V2",
    "NUMPY_TO_V2",
    "ONNX_TO_V2",
    "V2_TO_CONFIG",
    "V2_TO_NUMPY",
    "bytes_elements_to_tensor",
    "deserialize_bytes_tensor",
    "element_size",
    "fixed_width_is_cheaper",
    "serialize_bytes_tensor",
    "text_array",
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
    """Split length-prefixed BYTES elements; exactly `count` must fill `buffer`. Runs in O(count).

    ASCII elements (the common case: ids, tokens, text) come back as one fixed-width numpy str
    array, a few bytes per element, built with vectorised numpy when every element has the same
    length; others as an object array of `bytes`. Never more than `count` elements are walked.
    """
    view = memoryview(buffer).cast("B")
    if count == 0:
        if len(view):
            raise InvalidInput(f"input '{name}': expected 0 BYTES elements, got {len(view)} bytes of data")
        return np.empty(0, dtype=np.object_)
    octets = np.frombuffer(view, dtype=np.uint8)
    uniform = _uniform_lengths(octets, count)
    if uniform:
        text = _uniform_ascii(octets, count, uniform)
        if text is not None:
            return text
    starts, lengths = _walk_prefixes(view, count, name)
    return _strings(view, octets, starts, lengths)


def _uniform_lengths(octets: npt.NDArray[np.uint8], count: int) -> int | None:
    """The common element length when every prefix declares the same one and they fill the buffer."""
    if len(octets) < 4 or len(octets) % count:
        return None
    stride = len(octets) // count
    first = int(octets[:4].view("<u4")[0])
    if first != stride - 4:
        return None
    prefixes = np.ascontiguousarray(octets.reshape(count, stride)[:, :4]).view("<u4")
    return int(first) if bool((prefixes == first).all()) else None


def bytes_elements_to_tensor(values: Iterable[bytes], count: int) -> Tensor:
    """BYTES elements already split (gRPC `bytes_contents`, JSON strings encoded) as a flat tensor,
    in the same cheap form as `deserialize_bytes_tensor`. Works a step of elements at a time, so
    at most one step's worth of Python objects is alive beside the result. `values` holds `count`."""
    if count == 0:
        return np.empty(0, dtype=np.object_)
    payload = bytearray()
    lengths = np.empty(count, dtype=np.int64)
    elements = iter(values)
    for first in range(0, count, _ROWS_PER_STEP):
        step = list(islice(elements, _ROWS_PER_STEP))
        lengths[first : first + len(step)] = np.fromiter(map(len, step), dtype=np.int64, count=len(step))
        payload += b"".join(step)
    octets = np.frombuffer(payload, dtype=np.uint8)
    width = int(lengths[0])
    if width and bool((lengths == width).all()):
        text = _ascii_rows(octets.reshape(count, width))
        if text is not None:
            return text
    starts = np.zeros(count, dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    return _strings(memoryview(payload), octets, starts, lengths)


def _uniform_ascii(octets: npt.NDArray[np.uint8], count: int, width: int) -> Tensor | None:
    """Elements of one length as a `<U{width}` array (None when one is not ASCII or ends in NUL)."""
    return _ascii_rows(octets.reshape(count, 4 + width)[:, 4:])


def _ascii_rows(chars: npt.NDArray[np.uint8]) -> Tensor | None:
    """Rows of element bytes as a `<U{width}` array (None when one is not ASCII or ends in NUL)."""
    if chars.max() >= 0x80 or not bool(chars[:, -1].all()):
        return None
    return _widen(chars, chars.shape[1])


def _widen(chars: npt.NDArray[np.uint8], width: int) -> Tensor:
    """ASCII codes (rows of `width`, NUL-padded) -> one `<U{width}` element per row (UCS-4 code points)."""
    return chars.astype("<u4").view(f"<U{width}").reshape(-1)


def _walk_prefixes(view: memoryview, count: int, name: str) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Offsets and lengths of `count` elements that must fill `view` exactly."""
    starts = array("q")
    lengths = array("q")
    offset = 0
    end = len(view)
    unpack = _LENGTH.unpack_from
    while offset < end:
        if len(starts) == count:
            raise InvalidInput(f"input '{name}': expected {count} BYTES elements, the data holds more")
        if offset + 4 > end:
            raise InvalidInput(f"input '{name}': BYTES element {len(starts)} has a truncated length prefix")
        (length,) = unpack(view, offset)
        offset += 4
        if offset + length > end:
            raise InvalidInput(
                f"input '{name}': BYTES element {len(starts)} declares {length} bytes, "
                f"only {end - offset} remain"
            )
        starts.append(offset)
        lengths.append(length)
        offset += length
    if len(starts) != count:
        raise InvalidInput(f"input '{name}': expected {count} BYTES elements, got {len(starts)}")
    return np.frombuffer(starts, dtype=np.int64), np.frombuffer(lengths, dtype=np.int64)


_ROWS_PER_STEP = 1 << 16
# What one element costs as a Python object in an object array: the pointer and a small str/bytes
# object's header (its characters come on top).
_OBJECT_ELEMENT_BYTES = 56


def fixed_width_is_cheaper(count: int, width: int, payload: int) -> bool:
    """Whether `count` elements (the longest `width` characters, `payload` in all) take less memory
    as one `<U{width}` array (4 bytes per character of the longest, for every element) than as objects."""
    return width > 0 and 4 * count * width <= _OBJECT_ELEMENT_BYTES * count + payload


def _strings(view: memoryview, octets: npt.NDArray[np.uint8], starts: npt.NDArray[np.int64],
             lengths: npt.NDArray[np.int64]) -> Tensor:
    count = len(starts)
    width = int(lengths.max())
    payload = int(lengths.sum())
    if fixed_width_is_cheaper(count, width, payload):
        text = _fixed_width_ascii(octets, starts, lengths, width)
        if text is not None:
            return text
    spans = list(zip(starts.tolist(), lengths.tolist(), strict=True))
    try:  # UTF-8 text is decoded here, on the decoding thread, rather than for ONNX Runtime on the loop
        items: list[str] | list[bytes] = [str(view[s : s + n], "utf-8") for s, n in spans]
    except UnicodeDecodeError:
        items = [bytes(view[s : s + n]) for s, n in spans]
    return text_array(items)


def text_array(items: list[str] | list[bytes]) -> Tensor:
    """Decoded elements as a flat tensor: one fixed-width str array when they are text, none ends in
    NUL (numpy would drop it) and that is cheaper than objects; otherwise an object array of them."""
    if items and isinstance(items[0], str):
        width = max(map(len, items))
        if fixed_width_is_cheaper(len(items), width, sum(map(len, items))) and not any(
                value.endswith("\x00") for value in items):
            return np.array(items, dtype=f"<U{width}")
    out = np.empty(len(items), dtype=np.object_)
    out[:] = items
    return out


def _fixed_width_ascii(octets: npt.NDArray[np.uint8], starts: npt.NDArray[np.int64],
                       lengths: npt.NDArray[np.int64], width: int) -> Tensor | None:
    """A `<U{width}` array of the elements, or None when one is not ASCII or ends in NUL (which
    fixed-width numpy strings cannot keep). Built a step of rows at a time to bound temporaries."""
    count = len(starts)
    out = np.empty(count, dtype=f"<U{width}")
    columns = np.arange(width, dtype=np.int64)
    for first in range(0, count, _ROWS_PER_STEP):
        step_starts = starts[first : first + _ROWS_PER_STEP]
        step_lengths = lengths[first : first + _ROWS_PER_STEP]
        inside = columns[None, :] < step_lengths[:, None]
        index = np.where(inside, step_starts[:, None] + columns[None, :], 0)
        chars = np.where(inside, octets[index], 0).astype(np.uint8)
        if chars.max(initial=0) >= 0x80:
            return None
        last = chars[np.arange(len(step_lengths)), np.maximum(step_lengths - 1, 0)]
        if bool(((last == 0) & (step_lengths > 0)).any()):
            return None
        out[first : first + len(step_starts)] = _widen(chars, width)
    return out
