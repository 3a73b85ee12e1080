"""Checks a decoded request against its model version and prepares the feeds for the batcher.

Messages name the tensor, what the model expects and what arrived, e.g.
"input 'x': expected FP32[-1,4], got INT64[2,3]".
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from .errors import InvalidInput, TesseraError
from .protocol.limits import ShapeCheck
from .protocol.request_core import shape_text
from .spec import ModelSpec, TensorSpec
from .tensors import InferRequest, Tensor

__all__ = ["declared_shape_check", "model_shape_check", "prepare_inputs", "select_outputs"]


def _expected(spec: ModelSpec, tensor: TensorSpec) -> str:
    dims = ((-1,) if spec.batched else ()) + tensor.dims
    return shape_text(tensor.datatype, dims)


def _check_tensor(spec: ModelSpec, tensor: TensorSpec, shape: tuple[int, ...], datatype: str) -> int:
    """Validate one input's shape and datatype; return its batch size (1 for unbatched models)."""
    # Runs twice per request (declared shape, then decoded array): the messages are built only on failure.
    if datatype != tensor.datatype:
        raise _mismatch(spec, tensor, shape, datatype)
    if spec.max_batch_size > 0:
        if len(shape) != len(tensor.dims) + 1 or not _dims_match(tensor.dims, shape, 1):
            raise _mismatch(spec, tensor, shape, datatype)
        rows = int(shape[0])
        if rows < 1:
            raise InvalidInput(f"input '{tensor.name}': batch size must be at least 1, got "
                               f"{shape_text(datatype, shape)}")
        if rows > spec.max_batch_size:
            raise InvalidInput(
                f"input '{tensor.name}': batch size {rows} exceeds the model's max_batch_size "
                f"{spec.max_batch_size}"
            )
        return rows
    if len(shape) != len(tensor.dims) or not _dims_match(tensor.dims, shape, 0):
        raise _mismatch(spec, tensor, shape, datatype)
    return 1


def _mismatch(spec: ModelSpec, tensor: TensorSpec, shape: tuple[int, ...], datatype: str) -> InvalidInput:
    return InvalidInput(f"input '{tensor.name}': expected {_expected(spec, tensor)}, got "
                        f"{shape_text(datatype, shape)}")


def _dims_match(expected: tuple[int, ...], got: tuple[int, ...], offset: int) -> bool:
    """Whether `got[offset:]` fits `expected` (-1: any size); the lengths are already known to agree."""
    for index, dim in enumerate(expected, offset):  # noqa: SIM110 - all() over a generator costs more here
        if dim != -1 and dim != got[index]:
            return False
    return True


def _as_onnx_strings(name: str, array: Tensor) -> Tensor:
    """ONNX string tensors hold text: ORT would feed `bytes` items through str() (b'...').

    Fixed-width str arrays (what the codecs make of ASCII elements) are fed as they are."""
    if array.dtype.kind == "U":
        return array
    flat = array.reshape(-1)
    out = np.empty(flat.shape, dtype=np.object_)
    try:
        out[:] = [item.decode() if isinstance(item, bytes) else str(item) for item in flat]
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"input '{name}': BYTES element is not UTF-8 text, which ONNX string tensors "
                           f"need ({exc.reason} at byte {exc.start})") from exc
    return out.reshape(array.shape)


def declared_shape_check(spec: ModelSpec) -> ShapeCheck:
    """The model's check of a declared (not yet decoded) input shape, for the codecs' DecodeLimits:
    datatype, dims and rows against max_batch_size, before anything is allocated for the input. It
    answers the rows the shape declares; inputs the model does not take (None) are left to
    `prepare_inputs`, which names them."""

    def check(name: str, datatype: str, shape: tuple[int, ...]) -> int | None:
        tensor = spec.input(name)
        return None if tensor is None else _check_tensor(spec, tensor, shape, datatype)

    return check


class _Versions(Protocol):
    def get(self, name: str, version: str | None = None) -> Any: ...


def model_shape_check(models: _Versions, name: str, version: str | None) -> ShapeCheck | None:
    """`declared_shape_check` for the version a request names (or the serving one); None when the
    model cannot be resolved now, leaving the answer to the DataPlane's own lookup."""
    try:
        spec = models.get(name, version or None).spec
    except TesseraError:
        return None
    return declared_shape_check(spec)


def prepare_inputs(spec: ModelSpec, request: InferRequest) -> tuple[dict[str, Tensor], int]:
    """Validate inputs and requested outputs; return the feeds in model order and the row count."""
    for name in request.inputs:
        if spec.input(name) is None:
            expected = ", ".join(t.name for t in spec.inputs)
            raise InvalidInput(f"unexpected input '{name}' for model '{spec.name}'; it takes: {expected}")
    for requested in request.outputs:
        if spec.output(requested.name) is None:
            expected = ", ".join(t.name for t in spec.outputs)
            raise InvalidInput(
                f"unknown output '{requested.name}' requested from model '{spec.name}'; it has: {expected}"
            )
    feeds: dict[str, Tensor] = {}
    rows = -1
    for tensor in spec.inputs:
        array = request.inputs.get(tensor.name)
        if array is None:
            if tensor.optional:
                continue
            raise InvalidInput(f"missing input '{tensor.name}' ({_expected(spec, tensor)}) "
                               f"for model '{spec.name}'")
        batch = _check_tensor(spec, tensor, tuple(array.shape), request.datatypes.get(tensor.name, ""))
        if rows not in (-1, batch):
            raise InvalidInput(
                f"input '{tensor.name}': batch size {batch} differs from the other inputs' {rows}"
            )
        rows = batch
        if tensor.reshape is not None:
            array = array.reshape(((batch,) if spec.batched else ()) + tensor.reshape)
        if tensor.datatype == "BYTES":
            array = _as_onnx_strings(tensor.name, array)
        feeds[tensor.name] = array
    return feeds, max(rows, 1)


def select_outputs(spec: ModelSpec, request: InferRequest, outputs: dict[str, Tensor]) -> dict[str, Tensor]:
    """The outputs the client asked for (all, when it named none), reshaped to the config's dims."""
    names = [o.name for o in request.outputs] or [t.name for t in spec.outputs]
    selected: dict[str, Tensor] = {}
    for name in names:
        array = outputs[name]
        tensor = spec.output(name)
        if tensor is not None and tensor.reshape is not None:
            lead = (array.shape[0],) if spec.batched else ()
            array = array.reshape(lead + tuple(d if d != -1 else -1 for d in tensor.dims))
        selected[name] = array
    return selected
