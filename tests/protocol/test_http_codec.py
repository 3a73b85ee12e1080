"""The HTTP codec, called directly: tritonclient builds the request bodies and parses our responses."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import pytest
import tritonclient.http as httpclient

from server.errors import InvalidInput, Unsupported
from server.protocol.http_codec import (
    EncodedResponse,
    decode_infer_request,
    encode_infer_response,
    parse_json_object,
)
from server.tensors import InferRequest, InferResponse, Parameters, RequestedOutput

Client = httpclient.InferenceServerClient

NUMERIC = [
    pytest.param("BOOL", np.array([[True, False, True]]), id="BOOL"),
    pytest.param("UINT8", np.array([[0, 7, 255]], np.uint8), id="UINT8"),
    pytest.param("UINT16", np.array([[0, 7, 65535]], np.uint16), id="UINT16"),
    pytest.param("UINT32", np.array([[0, 7, 2**32 - 1]], np.uint32), id="UINT32"),
    pytest.param("UINT64", np.array([[0, 7, 2**64 - 1]], np.uint64), id="UINT64"),
    pytest.param("INT8", np.array([[-128, 0, 127]], np.int8), id="INT8"),
    pytest.param("INT16", np.array([[-32768, 0, 32767]], np.int16), id="INT16"),
    pytest.param("INT32", np.array([[-(2**31), 0, 2**31 - 1]], np.int32), id="INT32"),
    pytest.param("INT64", np.array([[-(2**63), 0, 2**63 - 1]], np.int64), id="INT64"),
    pytest.param("FP16", np.array([[-1.5, 0.0, 65504.0]], np.float16), id="FP16"),
    pytest.param("FP32", np.array([[-1.5, 0.25, 3.4e38]], np.float32), id="FP32"),
    pytest.param("FP64", np.array([[-1.5, 0.1, 1e300]], np.float64), id="FP64"),
]
BYTES = np.array([[b"hello", b"", "\u00e9t\u00e9".encode()]], dtype=np.object_)


def _body(inputs: list[httpclient.InferInput], **kwargs: Any) -> tuple[bytes, str | None]:
    body, json_size = Client.generate_request_body(inputs, **kwargs)
    return body, None if json_size is None else str(json_size)


def _input(name: str, datatype: str, array: npt.NDArray[Any], binary: bool) -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def _decode(body: bytes | str, header_length: str | None = None) -> InferRequest:
    raw = body.encode() if isinstance(body, str) else body
    return decode_infer_request(raw, header_length, "m", None)


DROP = object()


def _json_request(**input_fields: Any) -> bytes:
    tensor = {"name": "x", "datatype": "FP32", "shape": [2], "data": [1.0, 2.0]} | input_fields
    return orjson.dumps({"inputs": [{k: v for k, v in tensor.items() if v is not DROP}]})


def _with(**fields: Any) -> bytes:
    return orjson.dumps({"inputs": []} | fields)


def _result(encoded: EncodedResponse) -> Any:
    header = None if encoded.header_length is None else encoded.header_length
    return Client.parse_response_body(encoded.body, header_length=header)


# -- request decoding --------------------------------------------------------------------------
@pytest.mark.parametrize("binary", [pytest.param(True, id="binary"), pytest.param(False, id="json")])
@pytest.mark.parametrize(("datatype", "array"), NUMERIC)
def test_every_fixed_size_datatype_decodes_to_the_same_array(datatype: str, array: npt.NDArray[Any],
                                                             binary: bool) -> None:
    request = _decode(*_body([_input("x", datatype, array, binary)]))
    assert request.datatypes == {"x": datatype}
    decoded = request.inputs["x"]
    assert decoded.dtype == array.dtype and decoded.shape == array.shape
    np.testing.assert_array_equal(decoded, array)


@pytest.mark.parametrize("binary", [pytest.param(True, id="binary"), pytest.param(False, id="json")])
def test_bytes_input_decodes_to_its_elements(binary: bool) -> None:
    # ASCII-only BYTES become a compact fixed-width str array; others bytes (binary) or str (JSON).
    request = _decode(*_body([_input("s", "BYTES", BYTES, binary)]))
    decoded = request.inputs["s"]
    assert decoded.shape == (1, 3)
    as_bytes = [v if isinstance(v, bytes) else v.encode() for v in decoded.reshape(-1).tolist()]
    assert as_bytes == BYTES.reshape(-1).tolist()


def test_binary_bf16_input_is_a_uint16_view_of_the_bit_patterns() -> None:
    values = np.array([[1.0, -2.5, 0.15625]], dtype=np.float32)
    request = _decode(*_body([_input("b", "BF16", values, True)]))
    bits = request.inputs["b"]
    assert request.datatypes["b"] == "BF16" and bits.dtype == np.uint16
    np.testing.assert_array_equal((bits.astype(np.uint32) << 16).view(np.float32), values)


def test_binary_input_is_a_view_of_the_body_without_a_copy() -> None:
    array = np.arange(8, dtype=np.float32).reshape(2, 4)
    body, header_length = _body([_input("x", "FP32", array, True)])
    decoded = _decode(body, header_length).inputs["x"]
    assert not decoded.flags.owndata and not decoded.flags.writeable


def test_json_and_binary_inputs_mix_in_one_request_in_input_order() -> None:
    a, b, c = np.arange(4, dtype=np.int32), np.ones(3, np.float32), np.array([b"z"], np.object_)
    request = _decode(*_body([_input("a", "INT32", a, True), _input("b", "FP32", b, False),
                              _input("c", "BYTES", c, True)]))
    np.testing.assert_array_equal(request.inputs["a"], a)
    np.testing.assert_array_equal(request.inputs["b"], b)
    assert request.inputs["c"].tolist() == ["z"]  # ASCII BYTES decode to a compact str array


@pytest.mark.parametrize("data", [
    pytest.param([1, 2, 3, 4, 5, 6], id="flat"),
    pytest.param([[1, 2, 3], [4, 5, 6]], id="nested"),
])
def test_json_data_may_be_flat_or_nested(data: list[Any]) -> None:
    request = _decode(_json_request(datatype="INT64", shape=[2, 3], data=data))
    np.testing.assert_array_equal(request.inputs["x"], np.arange(1, 7).reshape(2, 3))


def test_nested_json_bytes_are_flattened_row_major() -> None:
    request = _decode(_json_request(datatype="BYTES", shape=[2, 2], data=[["a", "b"], ["c", "d"]]))
    assert request.inputs["x"].tolist() == [["a", "b"], ["c", "d"]]


def test_request_fields_and_parameters_are_decoded() -> None:
    outputs = [httpclient.InferRequestedOutput("p", binary_data=False), httpclient.InferRequestedOutput("q")]
    body, header_length = _body([_input("x", "FP32", np.zeros(2, np.float32), False)], outputs=outputs,
                                request_id="r-1", timeout=2500, parameters={"tag": "t"})
    request = decode_infer_request(body, header_length, "model", "3", "user-7")
    assert (request.model_name, request.model_version, request.id) == ("model", "3", "r-1")
    assert request.timeout_us == 2500 and request.parameters["tag"] == "t"
    assert request.routing_key == "user-7"
    assert [(o.name, o.binary) for o in request.outputs] == [("p", False), ("q", True)]


def test_empty_version_means_the_server_chooses() -> None:
    assert decode_infer_request(_json_request(), None, "m", "").model_version is None


def test_binary_data_output_is_the_default_for_outputs_without_their_own_choice() -> None:
    body = orjson.dumps({"inputs": [], "parameters": {"binary_data_output": True},
                         "outputs": [{"name": "a"}, {"name": "b", "parameters": {"binary_data": False}}]})
    assert [o.binary for o in _decode(body).outputs] == [True, False]


# -- request errors ----------------------------------------------------------------------------
def _binary_request(size: int, payload: bytes, datatype: str = "FP32", shape: list[int] | None = None
                    ) -> tuple[bytes, str]:
    header = orjson.dumps({"inputs": [{"name": "x", "datatype": datatype, "shape": shape or [2],
                                       "parameters": {"binary_data_size": size}}]})
    return header + payload, str(len(header))


BAD_REQUESTS = [
    pytest.param(b"{not json", None, "malformed JSON in inference request", id="malformed-json"),
    pytest.param(b"[1, 2]", None, "inference request must be a JSON object, got array", id="not-an-object"),
    pytest.param(b"{}", None, "inference request: missing required field 'inputs'", id="no-inputs"),
    pytest.param(b'{"inputs": {}}', None, "field 'inputs' must be an array, got object",
                 id="inputs-not-list"),
    pytest.param(b'{"inputs": [3]}', None, "inputs[0] must be a JSON object, got number",
                 id="input-not-object"),
    pytest.param(b'{"inputs": [{"datatype": "FP32"}]}', None, "inputs[0]: missing required field 'name'",
                 id="input-without-name"),
    pytest.param(_json_request(datatype=None), None, "input 'x': field 'datatype' must be a string, got null",
                 id="datatype-null"),
    pytest.param(_json_request(datatype="FLOAT"), None, "input 'x': unknown datatype 'FLOAT'",
                 id="unknown-datatype"),
    pytest.param(_json_request(shape=[2, -1]), None,
                 "input 'x': shape must be a list of non-negative integers", id="negative-dim"),
    pytest.param(_json_request(shape=[True]), None, "shape must be a list of non-negative integers",
                 id="boolean-dim"),
    pytest.param(_json_request(shape=[3]), None, "input 'x': shape [3] needs 3 elements, 'data' has 2",
                 id="too-few-elements"),
    pytest.param(_json_request(data=[[1.0], [2.0, 3.0]]), None, "input 'x': 'data' is a ragged nested list",
                 id="ragged"),
    pytest.param(_json_request(data=["a", "b"]), None, "input 'x': float32 'data' must hold numbers only",
                 id="strings-for-fp32"),
    pytest.param(_json_request(datatype="INT32", data=[1.5, 2]), None,
                 "input 'x': int32 'data' must hold integers only", id="floats-for-int32"),
    pytest.param(_json_request(datatype="BOOL", data=[1, 0]), None,
                 "input 'x': bool 'data' must hold booleans only", id="numbers-for-bool"),
    pytest.param(_json_request(datatype="UINT8", data=[1, 256]), None,
                 "input 'x': 'data' holds values outside the range of uint8", id="out-of-range"),
    pytest.param(_json_request(datatype="FP16", data=[1.0, 65520]), None,
                 "input 'x': 'data' holds values outside the range of float16", id="fp16-overflow"),
    pytest.param(_json_request(data=[1.0, -1e39]), None,
                 "input 'x': 'data' holds values outside the range of float32", id="fp32-overflow"),
    pytest.param(_json_request(datatype="BYTES", data=["a", 1]), None,
                 "input 'x': BYTES 'data' must hold strings, got number", id="number-for-bytes"),
    pytest.param(_json_request(datatype="BF16"), None,
                 "input 'x': BF16 data must be sent as binary data (binary_data_size)", id="json-bf16"),
    pytest.param(_json_request(data=DROP), None,
                 "input 'x': has neither 'data' nor 'binary_data_size'", id="no-data"),
    pytest.param(orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}] * 2}),
                 None, "input 'x' appears more than once", id="duplicate-input"),
    pytest.param(*_binary_request(8, b"\0" * 4),
                 "input 'x': binary_data_size 8 runs past the end of the body (4 bytes remain)",
                 id="binary-size-past-end"),
    pytest.param(*_binary_request(4, b"\0" * 4), "input 'x': FP32[2] needs 8 bytes of raw data, got 4",
                 id="binary-size-short"),
    pytest.param(*_binary_request(8, b"\0" * 12),
                 "the inputs declare 8 bytes of binary data, the body carries 12", id="trailing-bytes"),
    pytest.param(*_binary_request(-1, b""), "input 'x': 'binary_data_size' must be a non-negative integer",
                 id="negative-binary-size"),
    pytest.param(*_binary_request(6, struct.pack("<I", 9) + b"ab", "BYTES", [1]),
                 "input 'x': BYTES element 0 declares 9 bytes, only 2 remain", id="bytes-element-truncated"),
    pytest.param(_binary_request(8, b"\0" * 8)[0], "x", "Inference-Header-Content-Length must be an integer, "
                 "got 'x'", id="header-length-not-integer"),
    pytest.param(_binary_request(8, b"\0" * 8)[0], "1000", "Inference-Header-Content-Length is 1000, outside "
                 "the body's", id="header-length-too-large"),
    pytest.param(_binary_request(8, b"\0" * 8)[0], "5", "malformed JSON in inference request",
                 id="header-length-too-small"),
    pytest.param(_binary_request(8, b"\0" * 8)[0], None, "malformed JSON in inference request",
                 id="binary-without-header-length"),
    pytest.param(_with(parameters={"timeout": -5}), None,
                 "parameter 'timeout' must be a non-negative integer of microseconds, got -5",
                 id="negative-timeout"),
    pytest.param(_with(parameters={"p": [1]}), None,
                 "inference request: parameter 'p' must be a boolean, number or string, got array",
                 id="list-parameter"),
    pytest.param(_with(parameters={"binary_data_output": "yes"}), None,
                 "parameter 'binary_data_output' must be a boolean", id="binary-data-output-not-bool"),
    pytest.param(_with(outputs=[{"name": "y", "parameters": {"binary_data": 1}}]), None,
                 "output 'y': parameter 'binary_data' must be a boolean", id="binary-data-not-bool"),
    pytest.param(_with(id=5), None,
                 "inference request: field 'id' must be a string, got number", id="id-not-string"),
]


@pytest.mark.parametrize(("body", "header_length", "message"), BAD_REQUESTS)
def test_malformed_request_is_invalid_input_naming_the_problem(body: bytes, header_length: str | None,
                                                               message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        _decode(body, header_length)
    assert message in caught.value.message


@pytest.mark.parametrize("body", [
    pytest.param(_json_request(parameters={"shared_memory_region": "r"}), id="input-shared-memory"),
    pytest.param(_with(outputs=[{"name": "y", "parameters": {"classification": 2}}]), id="classification"),
])
def test_shared_memory_and_classification_are_unsupported(body: bytes) -> None:
    with pytest.raises(Unsupported, match="is not supported by this server"):
        _decode(body)


def test_parse_json_object_names_what_it_parsed() -> None:
    with pytest.raises(InvalidInput, match="load request must be a JSON object, got string"):
        parse_json_object(b'"x"', "load request")


# -- response encoding -------------------------------------------------------------------------
def _response(outputs: dict[str, npt.NDArray[Any]], datatypes: dict[str, str]) -> InferResponse:
    return InferResponse(model_name="m", model_version="1", outputs=outputs, datatypes=datatypes, id="r-9")


def _asking(binary: bool | None, default: bool | None = None) -> InferRequest:
    """A request naming output 'y' with that binary choice (naming none when None)."""
    params: Parameters = {} if default is None else {"binary_data_output": default}
    outputs = [RequestedOutput("y", binary)] if binary is not None else []
    return InferRequest(model_name="m", inputs={}, datatypes={}, outputs=outputs, parameters=params)


@pytest.mark.parametrize("binary", [pytest.param(True, id="binary"), pytest.param(False, id="json")])
@pytest.mark.parametrize(("datatype", "array"), NUMERIC)
def test_every_fixed_size_datatype_round_trips_through_tritonclient(datatype: str, array: npt.NDArray[Any],
                                                                    binary: bool) -> None:
    encoded = encode_infer_response(_response({"y": array}, {"y": datatype}), _asking(binary))
    assert (encoded.header_length is not None) == binary
    result = _result(encoded)
    decoded = result.as_numpy("y")
    assert decoded.dtype == array.dtype
    np.testing.assert_array_equal(decoded, array)
    assert result.get_response()["model_version"] == "1" and result.get_response()["id"] == "r-9"


def test_binary_bytes_output_round_trips_through_tritonclient() -> None:
    encoded = encode_infer_response(_response({"y": BYTES}, {"y": "BYTES"}), _asking(True))
    assert _result(encoded).as_numpy("y").tolist() == BYTES.tolist()


def test_json_bytes_output_is_utf8_strings() -> None:
    encoded = encode_infer_response(_response({"y": BYTES}, {"y": "BYTES"}), _asking(False))
    assert _result(encoded).as_numpy("y").tolist() == [["hello", "", "\u00e9t\u00e9"]]


def test_bytes_output_that_is_not_utf8_goes_binary_even_when_json_was_asked() -> None:
    array = np.array([b"\xff\xfe"], dtype=np.object_)
    encoded = encode_infer_response(_response({"y": array}, {"y": "BYTES"}), _asking(False))
    assert encoded.header_length is not None
    assert _result(encoded).as_numpy("y").tolist() == [b"\xff\xfe"]


@pytest.mark.parametrize("binary", [pytest.param(True, id="binary"), pytest.param(False, id="json")])
def test_bf16_output_round_trips_through_tritonclient_as_float32(binary: bool) -> None:
    values = np.array([[1.0, -2.5, 0.15625]], dtype=np.float32)
    bits = (values.view(np.uint32) >> 16).astype(np.uint16)
    encoded = encode_infer_response(_response({"y": bits}, {"y": "BF16"}), _asking(binary))
    np.testing.assert_array_equal(_result(encoded).as_numpy("y").reshape(values.shape), values)


def test_outputs_are_json_unless_binary_is_asked_for() -> None:
    encoded = encode_infer_response(_response({"y": np.ones(2, np.float32)}, {"y": "FP32"}), _asking(None))
    assert encoded.header_length is None and encoded.media_type == "application/json"
    assert orjson.loads(encoded.body)["outputs"][0]["data"] == [1.0, 1.0]


def test_binary_data_output_parameter_makes_unnamed_outputs_binary() -> None:
    outputs: dict[str, npt.NDArray[Any]] = {"y": np.ones(2, np.float32), "z": np.zeros(3, np.int64)}
    encoded = encode_infer_response(_response(outputs, {"y": "FP32", "z": "INT64"}), _asking(None, True))
    assert encoded.header_length is not None and encoded.media_type == "application/octet-stream"
    header = orjson.loads(encoded.body[: encoded.header_length])
    assert [o["parameters"]["binary_data_size"] for o in header["outputs"]] == [8, 24]
    assert len(encoded.body) == encoded.header_length + 32


def test_an_output_choice_overrides_binary_data_output() -> None:
    outputs: dict[str, npt.NDArray[Any]] = {"y": np.ones(2, np.float32), "z": np.zeros(3, np.int64)}
    request = _asking(None, True)
    request.outputs = [RequestedOutput("y", False), RequestedOutput("z", None)]
    result = _result(encode_infer_response(_response(outputs, {"y": "FP32", "z": "INT64"}), request))
    assert "data" in result.get_output("y") and "data" not in result.get_output("z")
    np.testing.assert_array_equal(result.as_numpy("z"), np.zeros(3, np.int64))


def test_non_contiguous_and_big_endian_outputs_are_encoded_little_endian() -> None:
    array = np.arange(12, dtype=">i4").reshape(3, 4)[:, ::2]
    for binary in (True, False):
        encoded = encode_infer_response(_response({"y": array}, {"y": "INT32"}), _asking(binary))
        np.testing.assert_array_equal(_result(encoded).as_numpy("y"), array)


def test_empty_output_round_trips() -> None:
    encoded = encode_infer_response(_response({"y": np.zeros((0, 3), np.float32)}, {"y": "FP32"}),
                                    _asking(True))
    assert _result(encoded).as_numpy("y").shape == (0, 3)
