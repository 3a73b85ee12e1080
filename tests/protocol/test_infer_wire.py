"""ModelInferRequest read from its wire bytes (infer_wire) decodes exactly as protobuf's parse of the same
bytes does, for every message: valid, odd (fields repeated, shapes unpacked, maps merged) or malformed."""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from server._generated import grpc_service_pb2 as pb
from server.errors import TesseraError
from server.protocol import grpc_codec
from server.protocol.infer_wire import read_infer_request

from .test_codec_fuzz import FUZZ, grpc_requests


def _outcome_of(decode: Any) -> tuple[Any, ...]:
    """What a decode gave, comparable: the request's every field (arrays as dtype, shape and bytes; parameters
    with their types, NaN as a string), or the error's type and message."""
    try:
        request = decode()
    except TesseraError as exc:
        return ("error", type(exc).__name__, str(exc))
    inputs = [(name, array.dtype.str, array.shape, array.tobytes() if array.dtype != object else array.tolist())
              for name, array in request.inputs.items()]
    parameters = sorted((key, type(value).__name__, "nan" if value != value else value)
                        for key, value in request.parameters.items())
    return (request.model_name, request.model_version, request.id, inputs, request.datatypes, parameters,
            [(o.name, o.binary, o.parameters) for o in request.outputs], request.timeout_us, request.routing_key)


def _both(data: bytes) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """(read from the wire where it can be, then decoded; parsed by protobuf, then decoded)."""
    return (_outcome_of(lambda: grpc_codec.decode_infer_request(grpc_codec.read_infer_message(data), "k")),
            _outcome_of(lambda: grpc_codec.decode_infer_request(
                grpc_codec.parse_message(pb.ModelInferRequest, data), "k")))


@FUZZ
@given(message=grpc_requests())
def test_messages_clients_build_decode_alike(message: pb.ModelInferRequest) -> None:
    wire, parsed = _both(message.SerializeToString())
    assert wire == parsed


@FUZZ
@given(message=grpc_requests(), data=st.data())
def test_damaged_messages_decode_or_fail_alike(message: pb.ModelInferRequest, data: st.DataObject) -> None:
    """Bytes cut, dropped, overwritten or inserted anywhere: both give the same request or the same error."""
    body = bytearray(message.SerializeToString())
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(body)))
        edit = data.draw(st.sampled_from(["cut", "drop", "set", "insert"]))
        if edit == "cut":
            del body[at:]
        elif edit == "drop" and at < len(body):
            del body[at]
        elif edit == "set" and at < len(body):
            body[at] = data.draw(st.integers(0, 255))
        elif edit == "insert":
            body[at:at] = data.draw(st.binary(min_size=1, max_size=3))
    wire, parsed = _both(bytes(body))
    assert wire == parsed


@FUZZ
@given(data=st.binary(max_size=80))
def test_random_bytes_decode_or_fail_alike(data: bytes) -> None:
    wire, parsed = _both(data)
    assert wire == parsed


# Hand-built wire forms protobuf's own writer never makes, but a parser must take.
def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _scalar(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _entry(key: str, *values: bytes) -> bytes:
    return _field(4, _field(1, key.encode()) + b"".join(_field(2, v) for v in values))


FP32_INPUT = _field(5, _field(1, b"x") + _field(2, b"FP32") + _field(3, _varint(1) + _varint(2)))
FP32_DATA = _field(7, struct.pack("<2f", 1.5, -2.0))

FORMS = {
    "as clients send it": _field(1, b"m") + _entry("triton_enable_empty_final_response", _scalar(1, 1))
    + FP32_INPUT + _field(6, _field(1, b"y")) + FP32_DATA,
    "shape unpacked": _field(1, b"m") + _field(5, _field(1, b"x") + _field(2, b"FP32") + _scalar(3, 1)
                                               + _scalar(3, 2)) + FP32_DATA,
    "shape half packed, half not": _field(1, b"m") + _field(5, _field(1, b"x") + _field(2, b"FP32")
                                                            + _field(3, _varint(1)) + _scalar(3, 2)) + FP32_DATA,
    "a string field twice: the last wins": _field(1, b"a") + _field(3, b"i1") + _field(1, b"m") + _field(3, b"i2")
    + FP32_INPUT + FP32_DATA,
    "a key given twice: the last wins": _entry("timeout", _scalar(2, 5)) + _entry("timeout", _scalar(2, 7))
    + _field(1, b"m"),
    "a value given twice: merged": _entry("p", _scalar(1, 1), _field(3, b"s")) + _entry("q", _scalar(2, 3), b"")
    + _field(1, b"m"),
    "an entry without a value removes the key": _entry("p", _scalar(1, 1)) + _entry("p") + _field(1, b"m"),
    "every parameter type": _entry("b", _scalar(1, 0)) + _entry("i", _scalar(2, -3)) + _entry("s", _field(3, b"v"))
    + _entry("d", _varint(4 << 3 | 1) + struct.pack("<d", 2.5)) + _entry("u", _scalar(5, (1 << 64) - 1))
    + _field(1, b"m"),
    "a negative dimension": _field(1, b"m") + _field(5, _field(1, b"x") + _field(2, b"FP32")
                                                     + _field(3, _varint(-1) + _varint(2))) + FP32_DATA,
    "an empty message": b"",
}


def test_the_forms_a_parser_must_take_are_read_from_the_wire_and_decode_as_protobuf_decodes_them() -> None:
    for form, data in FORMS.items():
        assert read_infer_request(data) is not None, form
        wire, parsed = _both(data)
        assert wire == parsed, form


def test_what_the_reader_leaves_to_protobuf() -> None:
    leave = {
        "typed contents": _field(1, b"m") + _field(5, _field(1, b"x") + _field(2, b"INT32") + _field(3, _varint(1))
                                                   + _field(5, _field(2, _varint(7)))),
        "an input's parameters": _field(1, b"m") + _field(5, _field(1, b"x") + _field(4, _field(1, b"k"))),
        "an output's parameters": _field(1, b"m") + _field(6, _field(1, b"y") + _field(2, _field(1, b"k"))),
        "a field this server does not know": _field(1, b"m") + _field(9, b"?"),
        "a known field of another wire type": _scalar(1, 5),
        "a string that is not UTF-8": _field(1, b"\xff"),
        "a field cut short": _field(1, b"model")[:-1],
        "a varint of eleven bytes": _field(1, b"m") + _field(5, _field(3, b"\xff" * 10 + b"\x01")),
        "a key padded to two bytes (protobuf takes it)": b"\x8a\x00" + _varint(1) + b"m",
        "a key padded to six bytes (protobuf refuses it)": b"\x8a\x80\x80\x80\x80\x00" + _varint(1) + b"m",
        "a parameter's key padded": _field(4, _field(1, b"k") + _field(2, b"\x88\x00\x01")) + _field(1, b"m"),
        "inputs with no raw contents": _field(1, b"m") + FP32_INPUT,
    }
    for form, data in leave.items():
        assert read_infer_request(data) is None, form
        wire, parsed = _both(data)
        assert wire == parsed, form


def test_raw_inputs_are_views_of_the_message_not_copies() -> None:
    data = FORMS["as clients send it"]
    request = grpc_codec.decode_infer_request(grpc_codec.read_infer_message(data))
    assert request.inputs["x"].tolist() == [[1.5, -2.0]]
    assert np.shares_memory(request.inputs["x"], np.frombuffer(data, dtype=np.uint8))


def test_a_big_message_is_read_without_touching_its_tensor_bytes() -> None:
    rows = 1 << 16
    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(name="x", datatype="FP32", shape=[rows, 64])
    message.raw_input_contents.append(np.arange(rows * 64, dtype=np.float32).tobytes())
    data = message.SerializeToString()
    request = grpc_codec.decode_infer_request(grpc_codec.read_infer_message(data))
    assert request.inputs["x"].shape == (rows, 64) and math.isclose(float(request.inputs["x"][-1, -1]), rows * 64 - 1)
    assert np.shares_memory(request.inputs["x"], np.frombuffer(data, dtype=np.uint8))
