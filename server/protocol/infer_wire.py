"""ModelInferRequest read straight from its wire bytes, for the messages clients send every request.

protobuf's Python objects cost a one-row request more than all of its numpy work: the parse, a Python
object for every field read, and a copy of each `raw_input_contents` entry (BENCHMARKS.md). Here the
fields the server uses are read in one pass, and each raw input is a memoryview of the message's bytes.

It reads the common shape of the message only: strings, the request's parameters, inputs with a
datatype and shape, outputs by name, raw contents. A message with anything else (typed `contents`,
parameters on an input or output, a field this server does not know, a wire type other than the
field's, a field key padded to more than one byte, bytes that are not UTF-8 where a string is, a
truncated field) gets None, and the caller parses it with protobuf as before: the same answer for every
message, valid or not (tests/protocol/test_infer_wire.py compares the two on generated, damaged and
random messages).
"""

from __future__ import annotations

import struct
from typing import Final

from ..tensors import Parameters

__all__ = ["WireInput", "WireRequest", "read_infer_request"]

# Final: mypyc then compiles the constants in, where a plain module global is a dict lookup per read.
_DOUBLE: Final = struct.Struct("<d")
_INT64_SIGN: Final = 1 << 63
_UINT64: Final = 1 << 64
_VARINT: Final = 0  # wire types
_FIXED64: Final = 1
_LENGTH: Final = 2


class _Unread(Exception):
    """Something this reader leaves to protobuf."""


class WireInput:
    """One of the request's inputs as it was declared."""

    __slots__ = ("datatype", "name", "shape")

    def __init__(self) -> None:
        self.name = ""
        self.datatype = ""
        self.shape: list[int] = []


class WireRequest:
    """The fields of a ModelInferRequest the server reads, under the message's own names."""

    __slots__ = ("id", "inputs", "model_name", "model_version", "outputs", "parameters", "raw_input_contents")

    def __init__(self) -> None:
        self.model_name = ""
        self.model_version = ""
        self.id = ""
        self.parameters: Parameters = {}
        self.inputs: list[WireInput] = []
        self.outputs: list[str] = []
        self.raw_input_contents: list[memoryview] = []


def read_infer_request(data: bytes) -> WireRequest | None:
    """The message's fields, or None when it holds anything this reader leaves to protobuf."""
    view = memoryview(data)
    request = WireRequest()
    try:
        position, end = 0, len(data)
        while position < end:
            field, wire, position = _field(data, position, end)
            if wire != _LENGTH:
                raise _Unread
            length, position = _varint(data, position, end)
            stop = position + length
            if stop > end:
                raise _Unread
            if field == 7:
                request.raw_input_contents.append(view[position:stop])
            elif field == 5:
                request.inputs.append(_input(data, position, stop))
            elif field == 1:
                request.model_name = _text(data, position, stop)
            elif field == 2:
                request.model_version = _text(data, position, stop)
            elif field == 3:
                request.id = _text(data, position, stop)
            elif field == 4:
                _parameter_entry(data, position, stop, request.parameters)
            elif field == 6:
                request.outputs.append(_output(data, position, stop))
            else:
                raise _Unread
            position = stop
    except _Unread:
        return None
    if request.inputs and not request.raw_input_contents:  # typed contents, or none at all: protobuf's
        return None
    return request


def _varint(data: bytes, position: int, end: int) -> tuple[int, int]:
    """(value, position after it): a value's varint (lengths, numbers) of at most 10 bytes, ending before
    `end`."""
    value = shift = 0
    while True:
        if position >= end or shift > 63:
            raise _Unread
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if value >= _UINT64:  # a tenth byte carrying more than the 64th bit
                raise _Unread
            return value, position
        shift += 7


def _text(data: bytes, start: int, stop: int) -> str:
    try:
        return data[start:stop].decode()
    except UnicodeDecodeError:
        raise _Unread from None


def _field(data: bytes, position: int, end: int) -> tuple[int, int, int]:
    """(field number, wire type, position after the key) of the field at `position`.

    One byte: every field read here has a number under 16. A key padded to more bytes is protobuf's to
    judge (it takes up to five and refuses more)."""
    if position >= end:
        raise _Unread
    key = data[position]
    if key >= 0x80:
        raise _Unread
    return key >> 3, key & 7, position + 1


def _length(data: bytes, position: int, end: int) -> tuple[int, int]:
    """(start, stop) of a length-delimited field's bytes whose length is at `position`."""
    length, start = _varint(data, position, end)
    stop = start + length
    if stop > end:
        raise _Unread
    return start, stop


def _input(data: bytes, position: int, end: int) -> WireInput:
    tensor = WireInput()
    while position < end:
        field, wire, position = _field(data, position, end)
        if field == 3 and wire == _VARINT:  # shape, one dimension unpacked
            value, position = _varint(data, position, end)
            tensor.shape.append(_signed(value))
            continue
        if wire != _LENGTH:
            raise _Unread
        start, stop = _length(data, position, end)
        if field == 1:
            tensor.name = _text(data, start, stop)
        elif field == 2:
            tensor.datatype = _text(data, start, stop)
        elif field == 3:  # shape, packed
            while start < stop:
                value, start = _varint(data, start, stop)
                tensor.shape.append(_signed(value))
        else:  # parameters, contents: protobuf's
            raise _Unread
        position = stop
    return tensor


def _output(data: bytes, position: int, end: int) -> str:
    name = ""
    while position < end:
        field, wire, position = _field(data, position, end)
        if field != 1 or wire != _LENGTH:
            raise _Unread
        start, stop = _length(data, position, end)
        name = _text(data, start, stop)
        position = stop
    return name


def _parameter_entry(data: bytes, position: int, end: int, parameters: Parameters) -> None:
    """One map entry: a key, and an InferParameter whose set choice is the value (none: no entry).

    As protobuf reads it: the last key wins, a value given twice is merged (the last choice set wins),
    and a later entry for the same key replaces an earlier one.
    """
    key = ""
    value: bool | int | float | str | None = None
    while position < end:
        field, wire, position = _field(data, position, end)
        if wire != _LENGTH:
            raise _Unread
        start, stop = _length(data, position, end)
        if field == 1:
            key = _text(data, start, stop)
        elif field == 2:
            value = _parameter(data, start, stop, value)
        else:
            raise _Unread
        position = stop
    if value is None:
        parameters.pop(key, None)
    else:
        parameters[key] = value


def _parameter(data: bytes, position: int, end: int,
               value: bool | int | float | str | None) -> bool | int | float | str | None:
    while position < end:
        field, wire, position = _field(data, position, end)
        if field == 4 and wire == _FIXED64:
            if position + 8 > end:
                raise _Unread
            value = _DOUBLE.unpack_from(data, position)[0]
            position += 8
        elif field in (1, 2, 5) and wire == _VARINT:
            number, position = _varint(data, position, end)
            # Statements, not one conditional expression: mypyc types `bool if ... else int` as int,
            # and bool_param true arrived as 1.
            if field == 1:
                value = number != 0
            elif field == 2:
                value = _signed(number)
            else:
                value = number
        elif field == 3 and wire == _LENGTH:
            start, stop = _length(data, position, end)
            value = _text(data, start, stop)
            position = stop
        else:
            raise _Unread
    return value


def _signed(value: int) -> int:
    """A varint read as int64 (two's complement in 64 bits)."""
    return value - _UINT64 if value >= _INT64_SIGN else value
