"""Parquet columns <-> model tensors: which columns feed which input (as `tessera profile` maps them),
schema checks before any compute, per-row checks of each batch, and outputs back to Arrow columns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from ..datatypes import V2_TO_NUMPY
from ..drift.profiles import config_feature_names
from ..errors import InvalidInput
from ..spec import ModelSpec, TensorSpec

__all__ = ["ColumnPlan", "InputColumns", "Prepared", "plan_columns"]

REJECT_REASON = "_reject_reason"
REJECT_ROW = "_row"
SHAPE_METADATA = b"tessera.shape"


def _numeric_kind(t: pa.DataType) -> str | None:
    if pa.types.is_boolean(t):
        return "b"
    if pa.types.is_integer(t):
        return "i"
    if pa.types.is_floating(t):
        return "f"
    return None


def _accepts(dtype: np.dtype[Any], t: pa.DataType) -> bool:
    """Whether values of Arrow type `t` may feed a tensor of `dtype` (no float -> int, no text)."""
    kind = _numeric_kind(t)
    if dtype.kind == "f":
        return kind in ("i", "f")
    if dtype.kind in "iu":
        return kind == "i"
    return bool(kind == "b" and dtype.kind == "b")


def _is_list(t: pa.DataType) -> bool:
    return bool(pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t))


@dataclass(frozen=True, slots=True)
class InputColumns:
    """How one model input is assembled: one list column, or one scalar column per value."""

    tensor: TensorSpec
    columns: tuple[str, ...]
    from_list: bool
    width: int
    dtype: np.dtype[Any]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.tensor.reshape if self.tensor.reshape is not None else self.tensor.dims

    def describe(self) -> str:
        what = f"list column '{self.columns[0]}'" if self.from_list else f"columns {', '.join(self.columns)}"
        return f"input '{self.tensor.name}' ({self.tensor.describe()}) <- {what}"

    def check_field(self, field: pa.Field | None, column: str, where: str) -> None:
        """Raise InvalidInput naming `column` when the file's field cannot feed this input."""
        if field is None:
            raise InvalidInput(f"{where}: column '{column}' (for input '{self.tensor.name}') is missing")
        want = f"{self.tensor.datatype} values"
        if self.from_list:
            if not _is_list(field.type):
                raise InvalidInput(f"{where}: column '{column}' is {field.type}, but input '{self.tensor.name}' "
                                   f"takes {self.width} values per row: a list column of {want}")
            if pa.types.is_fixed_size_list(field.type) and field.type.list_size != self.width:
                raise InvalidInput(f"{where}: column '{column}' holds {field.type.list_size} values per row; "
                                   f"input '{self.tensor.name}' takes {self.width}")
            value_type = field.type.value_type
            if _is_list(value_type):
                raise InvalidInput(f"{where}: column '{column}' is a nested list ({field.type}); give the "
                                   f"{self.width} values of each row as one flat list")
        else:
            value_type = field.type
        if not _accepts(self.dtype, value_type):
            raise InvalidInput(f"{where}: column '{column}' has type {field.type}, which cannot feed input "
                               f"'{self.tensor.name}' ({want})")


@dataclass(slots=True)
class Prepared:
    """One batch made ready for the model: its feeds (good rows only) and what was rejected."""

    rows: int
    feeds: dict[str, npt.NDArray[Any]]
    keep: pa.RecordBatch
    """The kept columns of the good rows."""

    rejects: pa.RecordBatch | None
    """Kept columns + `_row` (index in the file) + `_reject_reason` of the rejected rows."""


class _Rejections:
    def __init__(self, rows: int) -> None:
        self.reasons: npt.NDArray[np.object_] = np.full(rows, None, dtype=object)
        self.any = False

    def add(self, mask: npt.NDArray[np.bool_], reason: str) -> None:
        fresh = mask & (self.reasons == None)  # noqa: E711 - elementwise comparison on an object array
        if fresh.any():
            self.reasons[fresh] = reason
            self.any = True

    @property
    def bad(self) -> npt.NDArray[np.bool_]:
        return self.reasons != None  # type: ignore[no-any-return]  # noqa: E711


@dataclass(frozen=True, slots=True)
class OutputColumn:
    tensor: TensorSpec
    shape: tuple[int, ...]
    """Per row."""

    field: pa.Field


@dataclass(frozen=True, slots=True)
class ColumnPlan:
    """The mapping of one job: checked against every file's schema before any compute."""

    inputs: tuple[InputColumns, ...]
    keep: tuple[str, ...]
    outputs: tuple[OutputColumn, ...]
    batched: bool

    @property
    def scalar_columns(self) -> list[str]:
        """Kept columns and one-value outputs: the columns whose statistics can serve a filter."""
        return [*self.keep, *(o.field.name for o in self.outputs if not _is_list(o.field.type))]

    @property
    def read_columns(self) -> list[str]:
        names = [*self.keep, *(c for i in self.inputs for c in i.columns)]
        return list(dict.fromkeys(names))

    def describe(self) -> list[str]:
        return [i.describe() for i in self.inputs]

    def check_schema(self, schema: pa.Schema, where: str) -> None:
        """Raise InvalidInput naming the first column that is missing or cannot feed its input."""
        for name in self.keep:
            if name not in schema.names:
                raise InvalidInput(f"{where}: --keep column '{name}' is missing")
        for item in self.inputs:
            for column in item.columns:
                field = schema.field(column) if column in schema.names else None
                item.check_field(field, column, where)

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        """Kept fields as the input file has them, then one field per output."""
        return pa.schema([*(schema.field(k) for k in self.keep), *(o.field for o in self.outputs)])

    def rejects_schema(self, schema: pa.Schema) -> pa.Schema:
        return pa.schema([*(schema.field(k) for k in self.keep), pa.field(REJECT_ROW, pa.int64()),
                          pa.field(REJECT_REASON, pa.string())])

    # -- per batch -------------------------------------------------------------------------------
    def prepare(self, batch: pa.RecordBatch, first_row: int | None) -> Prepared:
        """Feeds for the batch's scorable rows. `first_row` is the batch's first row index in its file
        (None when unknown: `_row` is then null).

        Rows with a null, a null element or a list of the wrong length are rejected, with a reason that
        names the column. Runs on a reader thread.
        """
        rows = batch.num_rows
        rejections = _Rejections(rows)
        for item in self.inputs:
            for column in item.columns:
                _check_rows(batch.column(column), item, column, rejections)
        keep = batch.select(list(self.keep))
        rejects = None
        if rejections.any:
            bad = rejections.bad
            good = pa.array(~bad)
            index = np.flatnonzero(bad)
            where = pa.nulls(len(index), pa.int64()) if first_row is None else pa.array(index + first_row, pa.int64())
            rejects = pa.RecordBatch.from_arrays(
                [*keep.filter(pa.array(bad)).columns, where,
                 pa.array(rejections.reasons[index].tolist(), pa.string())],
                schema=pa.schema([*keep.schema, pa.field(REJECT_ROW, pa.int64()),
                                  pa.field(REJECT_REASON, pa.string())]))
            batch = batch.filter(good)
            keep = keep.filter(good)
        feeds = {item.tensor.name: _tensor(batch, item) for item in self.inputs}
        return Prepared(batch.num_rows, feeds, keep, rejects)

    def to_arrow(self, keep: pa.RecordBatch, outputs: dict[str, npt.NDArray[Any]]) -> pa.RecordBatch:
        """The output batch: kept columns, then one column per output (fixed-size list when a row has
        more than one value; row-major, with the row shape in the field metadata when it has 2+ dims)."""
        arrays = list(keep.columns)
        for out in self.outputs:
            values = np.ascontiguousarray(outputs[out.tensor.name]).reshape(-1)
            flat = pa.array(values, type=out.field.type.value_type if _is_list(out.field.type) else out.field.type)
            width = math.prod(out.shape)
            arrays.append(pa.FixedSizeListArray.from_arrays(flat, width) if _is_list(out.field.type) else flat)
        return pa.RecordBatch.from_arrays(arrays, schema=pa.schema([*keep.schema, *(o.field for o in self.outputs)]))


def _check_rows(column: pa.Array, item: InputColumns, name: str, rejections: _Rejections) -> None:
    if column.null_count:
        rejections.add(np.asarray(column.is_null()), f"null in column '{name}'")
    if not item.from_list:
        return
    if pa.types.is_fixed_size_list(column.type):  # its size was checked against the schema
        lengths = np.full(len(column), item.width)
    else:
        lengths = pc.list_value_length(column).fill_null(item.width).to_numpy(zero_copy_only=False)
        wrong = lengths != item.width
        if wrong.any():
            rejections.add(wrong, f"column '{name}' does not hold {item.width} values")
    flat = column.flatten()
    if flat.null_count:
        # flatten() skips null rows, so element positions map to rows through the non-null lengths.
        valid = np.asarray(column.is_valid())
        owners = np.repeat(np.flatnonzero(valid), lengths[valid])
        hit = np.zeros(len(column), dtype=bool)
        hit[owners[np.asarray(flat.is_null())]] = True
        rejections.add(hit, f"null value in column '{name}'")


def _values(array: pa.Array, dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    target = pa.from_numpy_dtype(dtype)
    if array.type != target:
        # Integer narrowing is checked (an overflow is an error naming nothing silently wrapped);
        # float narrowing and int -> float follow numpy's rounding.
        array = pc.cast(array, target, safe=dtype.kind in "iu")
    return array.to_numpy(zero_copy_only=False)  # type: ignore[no-any-return]


def _tensor(batch: pa.RecordBatch, item: InputColumns) -> npt.NDArray[Any]:
    rows = batch.num_rows
    if item.from_list:
        flat = _values(batch.column(item.columns[0]).flatten(), item.dtype)
        return flat.reshape(rows, *item.shape)
    matrix = np.empty((rows, item.width), dtype=item.dtype)
    for j, column in enumerate(item.columns):
        matrix[:, j] = _values(batch.column(column), item.dtype)
    return matrix.reshape(rows, *item.shape)


# -- planning -------------------------------------------------------------------------------------
def _width(spec: ModelSpec, tensor: TensorSpec, what: str) -> int:
    if any(d < 0 for d in tensor.dims):
        raise InvalidInput(f"{what} '{tensor.name}' of model '{spec.name}' has a variable dimension "
                           f"({tensor.describe()}); tessera batch needs fixed per-row dims")
    if tensor.datatype in ("BYTES", "BF16"):
        raise InvalidInput(f"{what} '{tensor.name}' of model '{spec.name}' is {tensor.datatype}; tessera batch "
                           "scores numeric and boolean tensors")
    return math.prod(tensor.dims)


def _output_column(spec: ModelSpec, tensor: TensorSpec) -> OutputColumn:
    width = _width(spec, tensor, "output")
    value_type = pa.from_numpy_dtype(V2_TO_NUMPY[tensor.datatype])
    if width == 1 and len(tensor.dims) <= 1:
        return OutputColumn(tensor, tensor.dims, pa.field(tensor.name, value_type))
    metadata = {SHAPE_METADATA: ",".join(str(d) for d in tensor.dims).encode()} if len(tensor.dims) > 1 else None
    return OutputColumn(tensor, tensor.dims, pa.field(tensor.name, pa.list_(value_type, width), metadata=metadata))


def _numeric_columns(schema: pa.Schema, taken: set[str]) -> list[str]:
    return [f.name for f in schema if f.name not in taken and _numeric_kind(f.type) is not None]


def plan_columns(spec: ModelSpec, schema: pa.Schema, *, input_name: str | None = None,
                 columns: Sequence[str] | None = None, keep: Sequence[str] = ()) -> ColumnPlan:
    """Map the columns of `schema` (the first file's) to the inputs of `spec`.

    Each input takes, in this order: `--columns` when it is the `--input-name` target (or the only input);
    a column named after it (a list column, or a scalar one for a one-value input); the config's
    `feature_names.<input>` (`feature_names` for the first input); else, for the one input still
    unmapped, every numeric column not kept or used, in file order. Raises InvalidInput when the
    mapping is ambiguous or a width does not match.
    """
    names = [t.name for t in spec.inputs]
    if input_name is not None and input_name not in names:
        raise InvalidInput(f"--input-name '{input_name}': model '{spec.name}' has inputs {', '.join(names)}")
    target = input_name or (names[0] if len(names) == 1 else None)
    if columns and target is None:
        raise InvalidInput(f"model '{spec.name}' has inputs {', '.join(names)}: say which one --columns "
                           "feeds with --input-name")
    features = config_feature_names(spec.parameters, names)
    mapped: dict[str, InputColumns] = {}
    for tensor in spec.inputs:
        width = _width(spec, tensor, "input")
        dtype = V2_TO_NUMPY[tensor.datatype]
        if columns and tensor.name == target:
            mapped[tensor.name] = InputColumns(tensor, tuple(columns), False, width, dtype)
        elif tensor.name in schema.names:
            from_list = _is_list(schema.field(tensor.name).type) or width != 1
            mapped[tensor.name] = InputColumns(tensor, (tensor.name,), from_list, width, dtype)
        else:
            named = [features[(tensor.name, j)] for j in range(width) if (tensor.name, j) in features]
            if named:
                mapped[tensor.name] = InputColumns(tensor, tuple(named), False, width, dtype)
    free = [t for t in spec.inputs if t.name not in mapped]
    if len(free) > 1:
        raise InvalidInput(f"model '{spec.name}': inputs {', '.join(t.name for t in free)} have no column named "
                           "after them and no feature_names.<input> in the config; name the columns after "
                           "the inputs, or map one input with --input-name and --columns")
    if free:
        tensor = free[0]
        taken = {*keep, *(c for i in mapped.values() for c in i.columns)}
        plain = tuple(_numeric_columns(schema, taken))
        mapped[tensor.name] = InputColumns(tensor, plain, False, _width(spec, tensor, "input"),
                                           V2_TO_NUMPY[tensor.datatype])
    plan_inputs = tuple(mapped[n] for n in names)
    for item in plan_inputs:
        if not item.from_list and len(item.columns) != item.width:
            raise InvalidInput(f"input '{item.tensor.name}' ({item.tensor.describe()}) takes {item.width} values "
                               f"per row but {len(item.columns)} columns map to it "
                               f"({', '.join(item.columns) or 'none'}); choose them with --columns")
    outputs = tuple(_output_column(spec, t) for t in spec.outputs)
    clash = [c for c in keep if c in {o.tensor.name for o in outputs}]
    if clash:
        raise InvalidInput(f"--keep column '{clash[0]}' has the name of an output of model '{spec.name}'")
    return ColumnPlan(plan_inputs, tuple(keep), outputs, spec.batched)
