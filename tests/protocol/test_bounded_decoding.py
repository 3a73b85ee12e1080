"""Bounded decoding, called directly: declared shapes meet the per-request caps and the model's check
before any data is decoded, on every path (HTTP JSON, HTTP binary, gRPC raw, gRPC typed contents);
BYTES decode to a compact form; the `timeout` parameter has one rule for both transports."""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from server.datatypes import (
    bytes_elements_to_tensor,
    deserialize_bytes_tensor,
    serialize_bytes_tensor,
)
from server.errors import InvalidInput
from server.protocol import grpc_codec, http_codec
from server.protocol.limits import DecodeLimits
from server.protocol.request_core import timeout_us

SMALL = DecodeLimits(max_elements=1000, max_bytes=2000)


def _http_json(shape: list[Any], datatype: str = "FP32", data: Any = None, parameters: Any = None) -> bytes:
    entry: dict[str, Any] = {"name": "x", "datatype": datatype, "shape": shape, "data": data or [1.0]}
    body: dict[str, Any] = {"inputs": [entry]}
    if parameters is not None:
        body["parameters"] = parameters
    return json.dumps(body).encode()


def _http_binary(shape: list[Any], datatype: str = "FP32", blob: bytes = b"\0" * 4) -> tuple[bytes, str]:
    header = json.dumps({"inputs": [{"name": "x", "datatype": datatype, "shape": shape,
                                     "parameters": {"binary_data_size": len(blob)}}]}).encode()
    return header + blob, str(len(header))


def _decode_all(shape: list[int]) -> list[Callable[[], object]]:
    """The same declared shape through every decoding path (limits: SMALL)."""
    grpc_raw = service_pb2.ModelInferRequest(model_name="m")
    grpc_raw.inputs.add(name="x", datatype="FP32", shape=[min(d, 2**63 - 1) for d in shape])
    grpc_raw.raw_input_contents.append(b"\0" * 4)
    grpc_typed = service_pb2.ModelInferRequest(model_name="m")
    grpc_typed.inputs.add(name="x", datatype="FP32", shape=[min(d, 2**63 - 1) for d in shape])
    grpc_typed.inputs[0].contents.fp32_contents.append(1.0)
    body, length = _http_binary(shape)
    return [
        lambda: http_codec.decode_infer_request(_http_json(shape), None, "m", limits=SMALL),
        lambda: http_codec.decode_infer_request(body, length, "m", limits=SMALL),
        lambda: grpc_codec.decode_infer_request(grpc_raw, limits=SMALL),
        lambda: grpc_codec.decode_infer_request(grpc_typed, limits=SMALL),
    ]


PATHS = ["http-json", "http-binary", "grpc-raw", "grpc-contents"]
HUGE = 2**63


@pytest.mark.parametrize("path", range(4), ids=PATHS)
@pytest.mark.parametrize(("shape", "message"), [
    pytest.param([1] * 65, "65 dimensions, more than the 64 allowed", id="65-dims"),
    pytest.param([HUGE - 1, HUGE - 1, 0], "over the limit of 1000 elements", id="2^63-2^63-0"),
    pytest.param([2, -3], "negative dimension", id="negative"),
    pytest.param([40, 40], "declares 1600 elements; the request may carry at most 1000", id="elements"),
    pytest.param([600], "need 2400 bytes, over the limit of 2000 bytes", id="bytes"),
])
def test_declared_shape_over_the_limits_is_invalid_input_before_decoding(path: int, shape: list[int],
                                                                       message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        _decode_all(shape)[path]()
    assert message in caught.value.message


def test_json_shape_beyond_int64_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="over the limit"):
        http_codec.decode_infer_request(_http_json([HUGE, HUGE, 0]), None, "m", limits=SMALL)


@pytest.mark.parametrize("path", range(4), ids=PATHS)
def test_the_model_check_sees_the_declared_shape_before_the_data(path: int) -> None:
    seen: list[tuple[str, str, tuple[int, ...]]] = []

    def refuse(name: str, datatype: str, shape: tuple[int, ...]) -> None:
        seen.append((name, datatype, shape))
        raise InvalidInput("refused by the model")

    # The data (one element) does not fit the declared shape: the model's refusal comes first.
    grpc_raw = service_pb2.ModelInferRequest(model_name="m")
    grpc_raw.inputs.add(name="x", datatype="FP32", shape=[3, 7])
    grpc_raw.raw_input_contents.append(b"\0" * 4)
    grpc_typed = service_pb2.ModelInferRequest(model_name="m")
    grpc_typed.inputs.add(name="x", datatype="FP32", shape=[3, 7]).contents.fp32_contents.append(1.0)
    body, length = _http_binary([3, 7])
    calls = [
        lambda: http_codec.decode_infer_request(_http_json([3, 7]), None, "m", model_check=refuse),
        lambda: http_codec.decode_infer_request(body, length, "m", model_check=refuse),
        lambda: grpc_codec.decode_infer_request(grpc_raw, model_check=refuse),
        lambda: grpc_codec.decode_infer_request(grpc_typed, model_check=refuse),
    ]
    with pytest.raises(InvalidInput, match="refused by the model"):
        calls[path]()
    assert seen == [("x", "FP32", (3, 7))]


@pytest.mark.parametrize("path", range(4), ids=PATHS)
def test_a_bytes_row_over_the_string_cap_is_refused_before_the_data(path: int) -> None:
    def two_rows(name: str, datatype: str, shape: tuple[int, ...]) -> int:
        return shape[0]

    limits = DecodeLimits(max_strings_per_row=10)
    # Declared: 2 rows of 11 strings; the data (one short element) is never looked at.
    grpc_raw = service_pb2.ModelInferRequest(model_name="m")
    grpc_raw.inputs.add(name="x", datatype="BYTES", shape=[2, 11])
    grpc_raw.raw_input_contents.append(b"\1\0\0\0a")
    grpc_typed = service_pb2.ModelInferRequest(model_name="m")
    grpc_typed.inputs.add(name="x", datatype="BYTES", shape=[2, 11]).contents.bytes_contents.append(b"a")
    body, length = _http_binary([2, 11], "BYTES", b"\1\0\0\0a")
    calls = [
        lambda: http_codec.decode_infer_request(_http_json([2, 11], "BYTES", ["a"]), None, "m", limits=limits,
                                                model_check=two_rows),
        lambda: http_codec.decode_infer_request(body, length, "m", limits=limits, model_check=two_rows),
        lambda: grpc_codec.decode_infer_request(grpc_raw, limits=limits, model_check=two_rows),
        lambda: grpc_codec.decode_infer_request(grpc_typed, limits=limits, model_check=two_rows),
    ]
    with pytest.raises(InvalidInput, match=r"puts 11 BYTES elements in one row; a row may carry at most 10"):
        calls[path]()


def test_the_string_cap_counts_rows_and_can_be_turned_off() -> None:
    def rows(name: str, datatype: str, shape: tuple[int, ...]) -> int:
        return shape[0]

    def unbatched(name: str, datatype: str, shape: tuple[int, ...]) -> int:
        return 1

    capped = DecodeLimits(max_strings_per_row=10)
    assert capped.check("x", "BYTES", [3, 10], rows) == (3, 10)  # 30 strings, 10 a row
    assert capped.check("x", "FP32", [1, 11], rows) == (1, 11)  # only BYTES are converted by ORT
    with pytest.raises(InvalidInput, match="puts 30 BYTES elements in one row"):
        capped.check("x", "BYTES", [3, 10], unbatched)  # no batch dimension: the tensor is one run
    assert DecodeLimits(max_strings_per_row=0).check("x", "BYTES", [1, 1000], rows) == (1, 1000)


def test_bytes_payload_counts_against_the_byte_cap() -> None:
    blob = serialize_bytes_tensor(np.array([b"x" * 3000], dtype=np.object_))
    body, length = _http_binary([1], "BYTES", blob)
    with pytest.raises(InvalidInput, match="over the limit of 2000 bytes"):
        http_codec.decode_infer_request(body, length, "m", limits=SMALL)
    msg = service_pb2.ModelInferRequest(model_name="m")
    msg.inputs.add(name="x", datatype="BYTES", shape=[1])
    msg.raw_input_contents.append(blob)
    with pytest.raises(InvalidInput, match="over the limit of 2000 bytes"):
        grpc_codec.decode_infer_request(msg, limits=SMALL)


@pytest.mark.parametrize(("value", "grpc_field"), [
    pytest.param(-1, "int64_param", id="negative"),
    pytest.param(1.5, "double_param", id="fraction"),
    pytest.param(math.inf, "double_param", id="inf"),
    pytest.param(math.nan, "double_param", id="nan"),
    pytest.param("10", "string_param", id="string"),
    pytest.param(True, "bool_param", id="bool"),
])
def test_invalid_timeout_is_the_same_invalid_input_on_both_codecs(value: Any, grpc_field: str) -> None:
    msg = service_pb2.ModelInferRequest(model_name="m")
    setattr(msg.parameters["timeout"], grpc_field, value)
    with pytest.raises(InvalidInput) as grpc_error:
        grpc_codec.decode_infer_request(msg)
    with pytest.raises(InvalidInput) as direct:
        timeout_us({"timeout": value})
    assert grpc_error.value.message == direct.value.message
    assert grpc_error.value.message.startswith("parameter 'timeout' must be a non-negative integer")
    if isinstance(value, float) and not math.isfinite(value):
        return  # JSON has no inf or NaN
    body = json.dumps({"inputs": [], "parameters": {"timeout": value}}).encode()
    with pytest.raises(InvalidInput) as http_error:
        http_codec.decode_infer_request(body, None, "m")
    assert http_error.value.message == grpc_error.value.message


def test_valid_timeout_is_microseconds() -> None:
    msg = service_pb2.ModelInferRequest(model_name="m")
    msg.parameters["timeout"].int64_param = 2500
    assert grpc_codec.decode_infer_request(msg).timeout_us == 2500


def test_malformed_grpc_bytes_name_the_message() -> None:
    with pytest.raises(InvalidInput, match=r"^malformed ModelInferRequest message$"):
        grpc_codec.parse_message(service_pb2.ModelInferRequest, b"\xff\xff\xff\xff")


@pytest.mark.parametrize("items", [
    pytest.param([b"ab", b"cd", b"ef"], id="uniform-ascii"),
    pytest.param([b"a", b"bcd", b""], id="varied-ascii"),
    pytest.param(["\u00e9t\u00e9".encode(), b"x"], id="utf8"),
    pytest.param([b"a\x00", b"b"], id="trailing-nul"),
    pytest.param([b"\xff\xfe"], id="binary"),
    pytest.param([b"", b""], id="empty-elements"),
    pytest.param([b"x" * 5000] + [b"y"] * 10, id="one-long"),
])
def test_bytes_elements_round_trip_in_every_form(items: list[bytes]) -> None:
    array = np.array(items, dtype=np.object_)
    for decoded in (deserialize_bytes_tensor(serialize_bytes_tensor(array), len(items), "x"),
                    bytes_elements_to_tensor(items, len(items))):
        as_bytes = [v if isinstance(v, bytes) else v.encode() for v in decoded.tolist()]
        assert as_bytes == items


def test_many_small_ascii_bytes_decode_to_a_compact_array() -> None:
    count = 1_000_000
    buffer = struct.pack("<I", 2) + b"ab"
    decoded = deserialize_bytes_tensor(buffer * count, count, "x")
    assert decoded.dtype == np.dtype("<U2") and decoded.nbytes == 8 * count  # not an object per element
    varied = serialize_bytes_tensor(np.array([b"a", b"bc"] * (count // 2), dtype=np.object_))
    assert deserialize_bytes_tensor(varied, count, "x").dtype == np.dtype("<U2")


def test_bytes_with_more_elements_than_declared_stop_at_the_declared_count() -> None:
    varied = serialize_bytes_tensor(np.array([b"a", b"bc"] * 25, dtype=np.object_))
    with pytest.raises(InvalidInput, match="expected 3 BYTES elements, the data holds more"):
        deserialize_bytes_tensor(varied, 3, "x")
    with pytest.raises(InvalidInput, match="expected 3 BYTES elements, got 2"):
        deserialize_bytes_tensor(varied[:11], 3, "x")
