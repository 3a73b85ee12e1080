"""Bounds on what one request may make the server allocate, checked on the declared shape first.

Both codecs call `DecodeLimits.check` with each input's declared shape before they touch its data,
so a request that declares more than the caps (or a shape numpy cannot hold) is refused with
InvalidInput and nothing is allocated for it. `timeout_us` decides the `timeout` parameter for
both transports, so they answer the same status and message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from math import prod
from typing import ParamSpec, TypeVar

from ..datatypes import V2_TO_NUMPY
from ..errors import InvalidInput
from ..tensors import InferResponse

__all__ = ["DEFAULT_LIMITS", "MAX_DIMS", "DecodeLimits", "ShapeCheck", "response_bytes"]

_P = ParamSpec("_P")
_R = TypeVar("_R")

MAX_DIMS = 64
"""numpy's own limit on dimensions; the protocol has none, so we state it."""

ShapeCheck = Callable[[str, str, tuple[int, ...]], int | None]
"""(input name, datatype, declared shape) -> the rows the shape declares (1 for a model without a
batch dimension), or None for an input the model does not take; raises InvalidInput. A model's
check (validation.py)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DecodeLimits:
    """Per-request caps; every input's declared shape is checked against them before decoding."""

    max_elements: int = 1 << 24
    """Elements per request, all inputs together (16,777,216: 64 MiB of FP32)."""

    max_bytes: int = 128 << 20
    """Decoded tensor bytes per request, all inputs together (BYTES count their payload)."""

    max_dims: int = MAX_DIMS
    """Dimensions per input shape."""

    max_strings_per_row: int = 1 << 18
    """BYTES elements per row of a model's input (per tensor, for a model without a batch dimension);
    0: no cap. ONNX Runtime holds the GIL while it converts a string tensor (about 35 ns an element
    here) and a batch can only be split into whole rows, so one row's strings are one stall of every
    other request in the process: 262,144 keep it near 10 ms."""

    off_loop_bytes: int = 1 << 20
    """Bodies, messages and responses at least this big are decoded / encoded on a worker thread."""

    async def off_loop(self, size: int, work: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
        """`work(*args, **kwargs)` (a decode or an encode), on a worker thread when `size` bytes reach
        `off_loop_bytes`, so a big request never holds the event loop for long (numpy releases the
        GIL for most of its work; pure-Python steps share it with the loop in switch intervals)."""
        if size >= self.off_loop_bytes:
            return await asyncio.to_thread(work, *args, **kwargs)
        return work(*args, **kwargs)

    def check(self, name: str, datatype: str, shape: Sequence[object], model_check: ShapeCheck | None = None,
              spent: tuple[int, int] = (0, 0)) -> tuple[int, ...]:
        """The declared shape as a tuple of ints, once it is known to fit; raises InvalidInput.

        `spent` is (elements, bytes) already declared by earlier inputs of the same request.
        """
        if len(shape) > self.max_dims:
            raise InvalidInput(f"input '{name}': shape has {len(shape)} dimensions, more than the {self.max_dims} "
                               f"allowed")
        dims = _dims(shape, name)
        count = 1
        for dim in dims:  # one pass per request and input: messages are built only on failure
            if dim > self.max_elements:
                index = dims.index(dim)
                raise InvalidInput(f"input '{name}': dimension {index} is {dim}, over the limit of "
                                   f"{self.max_elements} elements per request")
            count *= dim
        if spent[0] + count > self.max_elements:
            raise InvalidInput(f"input '{name}': shape {list(dims)} declares {count} elements; the request may "
                               f"carry at most {self.max_elements}")
        if datatype in V2_TO_NUMPY and datatype != "BYTES":
            self.check_bytes(name, spent[1] + count * V2_TO_NUMPY[datatype].itemsize)
        self.check_model(name, datatype, dims, model_check)
        return dims

    def check_model(self, name: str, datatype: str, dims: tuple[int, ...], model_check: ShapeCheck | None) -> None:
        """The model's check of a declared shape, then the cap on one row's strings (rows are the
        model's to say); raises InvalidInput."""
        if model_check is None:
            return
        rows = model_check(name, datatype, dims)
        if datatype != "BYTES" or not rows or not self.max_strings_per_row:
            return
        per_row = prod(dims) // rows
        if per_row > self.max_strings_per_row:
            raise InvalidInput(f"input '{name}': shape {list(dims)} puts {per_row} BYTES elements in one row; a "
                               f"row may carry at most {self.max_strings_per_row} (--max-strings-per-row): send "
                               f"them as more rows or in several requests")

    def check_bytes(self, name: str, total: int) -> None:
        """Raise InvalidInput when `total` decoded bytes (this input and earlier ones) exceed the cap."""
        if total > self.max_bytes:
            raise InvalidInput(f"input '{name}': the request's tensors need {total} bytes, over the limit "
                               f"of {self.max_bytes} bytes")


def _dims(shape: Sequence[object], name: str) -> tuple[int, ...]:
    dims = tuple(shape)
    for dim in dims:
        if type(dim) is not int and (isinstance(dim, bool) or not isinstance(dim, int)):
            raise InvalidInput(f"input '{name}': shape must be a list of non-negative integers, got "
                               f"{_clip(list(shape))}")
        if dim < 0:
            raise InvalidInput(f"input '{name}': shape must be a list of non-negative integers, got "
                               f"{_clip(list(shape))} (a negative dimension)")
    return dims  # type: ignore[return-value]


def _clip(value: object, limit: int = 200) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "..."


DEFAULT_LIMITS = DecodeLimits()


def response_bytes(response: InferResponse) -> int:
    """Roughly what encoding `response` walks (an object element counts as 8 bytes)."""
    return sum(array.nbytes for array in response.outputs.values())
