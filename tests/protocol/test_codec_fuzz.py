"""Property tests of both infer codecs, called directly: any input decodes or raises a TesseraError.

Decoding either succeeds, with arrays of exactly the declared shapes whose bytes are the ones sent,
or raises a TesseraError subclass (which the transports map to 400 / INVALID_ARGUMENT and friends);
any other exception would be a 500 / INTERNAL. Valid tensors of every datatype round-trip through
decode then encode. Runs are bounded and derandomized so CI is fast and reproducible.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server._generated import grpc_service_pb2 as pb
from server.datatypes import V2_TO_NUMPY, V2_TO_WIRE_DTYPE, serialize_bytes_tensor
from server.errors import InvalidInput, TesseraError
from server.protocol import grpc_codec, http_codec
from server.tensors import InferRequest, InferResponse, RequestedOutput, Tensor

# Bounded and reproducible: the same examples on every run, and no example database kept between runs.
FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                       HealthCheck.data_too_large])
ROUND_TRIP = settings(FUZZ, max_examples=25)  # per datatype

DATATYPES = sorted(V2_TO_NUMPY)
JSON_DATATYPES = [d for d in DATATYPES if d != "BF16"]  # BF16 travels only as binary data
NAMES = ["x", "y", ""]
# The typed field of InferTensorContents for each datatype (FP16 and BF16 travel raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}
MAX_DIMS = 64  # numpy's limit; the codecs must reject more with a TesseraError, not a ValueError

# -- shared strategies -------------------------------------------------------------------------
json_leaves = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
               | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=6))
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=16,
)
small_shapes = st.lists(st.integers(0, 3), max_size=4)
# Shapes a client may send: small, huge, negative, too many dimensions, products that overflow.
hostile_shapes = st.one_of(
    small_shapes,
    st.lists(st.integers(-(2**63), 2**63 - 1), max_size=4),
    st.lists(st.integers(-2, 3), max_size=4),
    st.lists(st.just(1), min_size=MAX_DIMS - 1, max_size=MAX_DIMS + 6),
    st.lists(st.sampled_from([0, 2**31, 2**62, 2**63 - 1]), min_size=2, max_size=4),
)


@st.composite
def tensors(draw: st.DrawFn, datatypes: list[str] = DATATYPES) -> tuple[str, Tensor]:
    """A valid (datatype, array) of a small random shape, every element representable on the wire."""
    datatype = draw(st.sampled_from(datatypes))
    shape = tuple(draw(small_shapes))
    count = math.prod(shape)
    if datatype == "BYTES":
        items = draw(st.lists(st.binary(max_size=6), min_size=count, max_size=count))
        array = np.empty(count, dtype=np.object_)
        array[:] = items
        return datatype, array.reshape(shape)
    wire = V2_TO_WIRE_DTYPE[datatype]
    raw = draw(st.binary(min_size=count * wire.itemsize, max_size=count * wire.itemsize))
    array = np.frombuffer(raw, dtype=wire).reshape(shape)
    if datatype == "BOOL":
        array = array.view(np.uint8).astype(bool)  # only 0/1 bytes are booleans
    return datatype, array


def _wire_bytes(array: Tensor, datatype: str) -> bytes:
    if datatype == "BYTES":
        return serialize_bytes_tensor(array)
    return np.ascontiguousarray(array, dtype=V2_TO_WIRE_DTYPE[datatype]).tobytes()


def _assert_same_values(got: Tensor, want: Tensor, datatype: str) -> None:
    """Equal shapes and equal wire bytes (so NaN payloads and -0.0 count as sent)."""
    assert got.shape == want.shape
    assert _wire_bytes(got, datatype) == _wire_bytes(want, datatype)


# -- HTTP: JSON documents ----------------------------------------------------------------------
def _json_data(array: Tensor, datatype: str, nested: bool) -> Any:
    """The `data` a client sends for `array`: flat or nested, strings for BYTES."""
    if datatype == "BYTES":
        flat: list[Any] = [v.decode("utf-8", "replace") for v in array.reshape(-1)]
    else:
        flat = array.reshape(-1).tolist()
    if not nested or array.ndim < 2:
        return flat
    return np.array(flat, dtype=object).reshape(array.shape).tolist() if flat else flat


def _json_safe(datatype: str, array: Tensor) -> Tensor:
    """What JSON can carry: finite numbers (no NaN or infinity) and UTF-8 text."""
    if datatype in ("FP16", "FP32", "FP64"):
        return np.nan_to_num(array, nan=0.0, posinf=1.0, neginf=-1.0)
    if datatype == "BYTES":
        out = np.empty(array.shape, dtype=np.object_)
        out.reshape(-1)[:] = [v.decode("utf-8", "replace").encode() for v in array.reshape(-1)]
        return out
    return array


input_fields = st.fixed_dictionaries({}, optional={
    "name": st.sampled_from(NAMES) | json_values,
    "datatype": st.sampled_from([*DATATYPES, "FLOAT", "fp32", ""]) | json_values,
    "shape": hostile_shapes | json_values,
    "data": json_values,
    "parameters": st.dictionaries(
        st.sampled_from(["binary_data_size", "binary_data", "shared_memory_region", "classification", "p"]),
        json_leaves, max_size=2) | json_values,
})


@st.composite
def json_inputs(draw: st.DrawFn) -> Any:
    """An input entry: valid, valid with one field replaced, or random fields."""
    kind = draw(st.sampled_from(["valid", "valid", "mutated", "fitted", "fitted", "random"]))
    if kind == "random":
        return draw(input_fields | json_values)
    if kind == "fitted":  # a hostile shape with as many values as it declares, of any JSON type
        datatype = draw(st.sampled_from(JSON_DATATYPES))
        shape = draw(hostile_shapes)
        count = _small_count(shape)
        values = {"BOOL": st.booleans(), "BYTES": st.text(max_size=4)}.get(datatype, json_leaves)
        return {"name": draw(st.sampled_from(NAMES)), "datatype": datatype, "shape": shape,
                "data": draw(st.lists(values, min_size=count, max_size=count))}
    datatype, array = draw(tensors(JSON_DATATYPES))
    array = _json_safe(datatype, array)
    entry: dict[str, Any] = {"name": draw(st.sampled_from(NAMES)), "datatype": datatype,
                             "shape": list(array.shape), "data": _json_data(array, datatype, draw(st.booleans()))}
    if kind == "mutated":
        entry.update(draw(input_fields.filter(bool)))
    return entry


def _mostly(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`good` three times in four, any JSON value otherwise."""
    return st.one_of(good, good, good, json_values)


request_documents = st.fixed_dictionaries({"inputs": st.lists(json_inputs(), max_size=3)}, optional={
    "id": _mostly(st.text(max_size=4)),
    "parameters": _mostly(st.dictionaries(st.sampled_from(["timeout", "binary_data_output", "p"]),
                                          json_leaves | st.integers(-(2**63), 2**63), max_size=2)),
    "outputs": _mostly(st.lists(_mostly(st.fixed_dictionaries({"name": st.sampled_from(NAMES)}, optional={
        "parameters": st.dictionaries(st.sampled_from(["binary_data", "classification"]), json_leaves,
                                      max_size=2)})), max_size=2)),
})
http_documents = _mostly(request_documents)


def _decode_http(body: bytes, header_length: str | None) -> InferRequest | None:
    """Decode; None when the codec refused with a TesseraError (anything else propagates: a bug)."""
    try:
        return http_codec.decode_infer_request(body, header_length, "m", None)
    except TesseraError:
        return None


def _check_http_inputs(request: InferRequest, header: dict[str, Any]) -> None:
    """Every input of a decoded request has the declared name, datatype and shape."""
    entries = header["inputs"]
    assert len(request.inputs) == len(entries)
    for entry in entries:
        array = request.inputs[entry["name"]]
        assert request.datatypes[entry["name"]] == entry["datatype"]
        assert array.shape == tuple(entry["shape"])
        if entry["datatype"] == "BYTES":  # objects, or a compact fixed-width str array for ASCII text
            assert array.dtype == np.object_ or array.dtype.kind == "U"
        else:
            assert array.dtype == V2_TO_NUMPY[entry["datatype"]]


@FUZZ
@given(document=http_documents)
def test_http_json_documents_decode_to_declared_shapes_or_raise_tessera_errors(document: Any) -> None:
    body = orjson.dumps(document)
    request = _decode_http(body, None)
    if request is not None:
        _check_http_inputs(request, document)


@FUZZ
@given(datatype=st.sampled_from(JSON_DATATYPES), shape=hostile_shapes, data=st.data())
def test_http_hostile_shapes_with_matching_data_decode_or_raise_tessera_errors(datatype: str, shape: list[int],
                                                                               data: st.DataObject) -> None:
    """Huge, overflowing or too many dimensions, with as many JSON values as the shape declares."""
    count = _small_count(shape)
    values = {"BOOL": st.booleans(), "BYTES": st.text(max_size=4)}.get(datatype, json_leaves)
    document = {"inputs": [{"name": "x", "datatype": datatype, "shape": shape,
                            "data": data.draw(st.lists(values, min_size=count, max_size=count))}]}
    request = _decode_http(orjson.dumps(document), None)
    if request is not None:
        _check_http_inputs(request, document)


json_numbers = st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False)


@FUZZ
@given(datatype=st.sampled_from([d for d in JSON_DATATYPES if d != "BYTES"]), shape=small_shapes, data=st.data())
def test_http_json_numbers_arrive_as_sent_or_raise_tessera_errors(datatype: str, shape: list[int],
                                                                  data: st.DataObject) -> None:
    """Any JSON number or boolean: it fits the datatype and arrives as sent (finite, unwrapped), or is refused."""
    count = math.prod(shape)
    values = data.draw(st.lists(json_numbers, min_size=count, max_size=count))
    document = {"inputs": [{"name": "x", "datatype": datatype, "shape": shape, "data": values}]}
    request = _decode_http(orjson.dumps(document), None)
    if request is None:
        return
    _check_http_inputs(request, document)
    array = request.inputs["x"].reshape(-1)
    if datatype.startswith("FP"):
        assert np.isfinite(array).all()  # JSON has no infinity: an overflowing number must be refused
        np.testing.assert_array_equal(array, np.array(values, dtype=np.float64).astype(array.dtype))
    else:
        assert array.tolist() == values


@FUZZ
@given(body=st.binary(max_size=64), header_length=st.none() | st.text(max_size=4) | st.integers().map(str))
def test_http_random_bytes_decode_or_raise_tessera_errors(body: bytes, header_length: str | None) -> None:
    _decode_http(body, header_length)


@FUZZ
@given(document=http_documents, cut=st.integers(0, 200))
def test_http_truncated_json_documents_raise_tessera_errors(document: Any, cut: int) -> None:
    body = orjson.dumps(document)
    if cut < len(body):
        _decode_http(body[:cut], None)


@FUZZ
@given(items=st.lists(tensors() | st.tuples(st.sampled_from(DATATYPES), st.just(np.zeros(1))), max_size=3),
       names=st.lists(st.sampled_from(NAMES), min_size=3, max_size=3),
       shapes=st.lists(st.none() | hostile_shapes, min_size=3, max_size=3),
       sizes=st.lists(st.none() | st.integers(-2, 2**64 - 1) | st.integers(0, 64), min_size=3, max_size=3),
       refit=st.lists(st.booleans(), min_size=3, max_size=3),
       truncate=st.none() | st.integers(0, 400), extra=st.binary(max_size=8),
       header_length=st.sampled_from(["right", "none", "text"]) | st.integers(-1, 500).map(str))
def test_http_binary_extension_decodes_to_declared_shapes_or_raises_tessera_errors(
        items: list[tuple[str, Tensor]], names: list[str], shapes: list[list[int] | None],
        sizes: list[int | None], refit: list[bool], truncate: int | None, extra: bytes,
        header_length: str) -> None:
    """Binary tensors with shapes, binary_data_size, Inference-Header-Content-Length or body mutated."""
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for (datatype, array), name, shape, size, fit in zip(items, names, shapes, sizes, refit, strict=False):
        blob = _wire_bytes(array, datatype)
        if fit and shape is not None:  # zero bytes, as many as the mutated shape declares
            count = _small_count(shape)
            blob = bytes(count * (4 if datatype == "BYTES" else V2_TO_WIRE_DTYPE[datatype].itemsize))
        entries.append({"name": name, "datatype": datatype,
                        "shape": list(array.shape) if shape is None else shape,
                        "parameters": {"binary_data_size": len(blob) if size is None else size}})
        blobs.append(blob)
    header = orjson.dumps({"inputs": entries})
    body = header + b"".join(blobs) + extra
    if truncate is not None:
        body = body[:truncate]
    length = {"right": str(len(header)), "none": None, "text": "12a"}.get(header_length, header_length)
    request = _decode_http(body, length)
    if request is None:
        return
    # It decoded: the header that was read declares every input, and the blobs are the bytes sent.
    declared = orjson.loads(body[: int(length)]) if length is not None else orjson.loads(body)
    _check_http_inputs(request, declared)
    offset = int(length) if length is not None else len(body)
    for entry in declared["inputs"]:
        size = entry.get("parameters", {}).get("binary_data_size")
        if size is not None:
            assert _wire_bytes(request.inputs[entry["name"]], entry["datatype"]) == body[offset : offset + size]
            offset += size
    assert offset == len(body)


@pytest.mark.parametrize("datatype", DATATYPES)
@ROUND_TRIP
@given(data=st.data(), others=st.lists(tensors(), max_size=3), binary=st.booleans())
def test_http_valid_tensors_round_trip_through_decode_and_encode(datatype: str, data: st.DataObject,
                                                                 others: list[tuple[str, Tensor]],
                                                                 binary: bool) -> None:
    """encode(decode(x)) gives back x, as binary data or as JSON data, for every datatype."""
    items = [data.draw(tensors([datatype])), *others]
    entries, blobs, sent = [], [], {}
    for index, (datatype, array) in enumerate(items):
        name = f"t{index}"
        if binary or datatype == "BF16":
            blob = _wire_bytes(array, datatype)
            entries.append({"name": name, "datatype": datatype, "shape": list(array.shape),
                            "parameters": {"binary_data_size": len(blob)}})
            blobs.append(blob)
        else:
            array = _json_safe(datatype, array)
            entries.append({"name": name, "datatype": datatype, "shape": list(array.shape),
                            "data": _json_data(array, datatype, nested=True)})
        sent[name] = (datatype, array)
    header = orjson.dumps({"inputs": entries, "parameters": {"binary_data_output": True}})
    request = http_codec.decode_infer_request(header + b"".join(blobs), str(len(header)) if blobs else None, "m")
    for name, (datatype, array) in sent.items():
        _assert_same_values(request.inputs[name], array, datatype)
    response = InferResponse("m", "1", outputs=request.inputs, datatypes=request.datatypes)
    encoded = http_codec.encode_infer_response(response, request)
    assert encoded.header_length is not None
    outputs = orjson.loads(encoded.body[: encoded.header_length])["outputs"]
    offset = encoded.header_length
    for output in outputs:
        datatype, array = sent[output["name"]]
        assert (output["datatype"], output["shape"]) == (datatype, list(array.shape))
        size = output["parameters"]["binary_data_size"]
        assert encoded.body[offset : offset + size] == _wire_bytes(array, datatype)
        offset += size
    assert offset == len(encoded.body)


# -- gRPC: ModelInferRequest messages ----------------------------------------------------------
int64s = st.integers(-(2**63), 2**63 - 1)
uint64s = st.integers(0, 2**64 - 1)
doubles = st.floats(allow_nan=True, allow_infinity=True)
# Every InferParameter type; timeout gets every one of them, including inf and NaN doubles.
parameter_values = st.one_of(
    st.tuples(st.just("bool_param"), st.booleans()),
    st.tuples(st.just("int64_param"), int64s),
    st.tuples(st.just("string_param"), st.text(max_size=6)),
    st.tuples(st.just("double_param"), doubles),
    st.tuples(st.just("uint64_param"), uint64s),
    st.just(None),  # an InferParameter with no choice set
)
parameter_maps = st.dictionaries(st.sampled_from(["timeout", "priority", "binary_data_output", "p"]),
                                 parameter_values, max_size=3)
timeouts = st.one_of(
    st.tuples(st.just("double_param"), st.sampled_from([math.inf, -math.inf, math.nan, 1e300, -1.0, 0.5])),
    parameter_values,
)
# Values for each typed contents field, within the field's protobuf type.
contents_values: dict[str, st.SearchStrategy[Any]] = {
    "bool_contents": st.booleans(),
    "int_contents": st.integers(-(2**31), 2**31 - 1),
    "int64_contents": int64s,
    "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": uint64s,
    "fp32_contents": st.floats(width=32),
    "fp64_contents": doubles,
    "bytes_contents": st.binary(max_size=6),
}


def _small_count(shape: Any) -> int:
    """Elements a declared shape holds, when few enough to send (else 0: the sizes will not match)."""
    count = math.prod(shape) if all(d >= 0 for d in shape) else 0
    return count if count <= 64 else 0


def _set_parameters(target: Any, params: dict[str, tuple[str, Any] | None]) -> None:
    for key, choice in params.items():
        if choice is None:
            target[key].SetInParent()
        else:
            setattr(target[key], choice[0], choice[1])


RAW_FORMS = ["raw", "raw", "fitted-raw", "fitted-raw", "random-raw"]
CONTENTS_FORMS = ["contents", "contents", "fitted-contents", "fitted-contents", "random-contents"]


@st.composite
def grpc_inputs(draw: st.DrawFn, message: pb.ModelInferRequest, forms: list[str]) -> None:
    """Add one input: a valid tensor, or one with its datatype, shape or contents replaced."""
    datatype, array = draw(tensors())
    tensor = message.inputs.add(name=draw(st.sampled_from(NAMES)),
                                datatype=draw(st.sampled_from([datatype] * 6 + ["FLOAT", ""])))
    tensor.shape.extend(draw(st.just(list(array.shape)) | hostile_shapes))
    _set_parameters(tensor.parameters, draw(parameter_maps))
    form = draw(st.sampled_from(forms))
    count = _small_count(tensor.shape)
    if form == "raw":
        message.raw_input_contents.append(_wire_bytes(array, datatype))
    elif form == "random-raw":
        message.raw_input_contents.append(draw(st.binary(max_size=40)))
    elif form == "fitted-raw":  # random bytes of exactly the size the declared shape needs
        size = count * (V2_TO_WIRE_DTYPE[datatype].itemsize if datatype != "BYTES" else 4)
        data = draw(st.binary(min_size=size, max_size=size))
        message.raw_input_contents.append(b"\0\0\0\0" * count if datatype == "BYTES" else data)
    elif form == "contents":
        getattr(tensor.contents, CONTENTS_FIELD.get(datatype, "fp32_contents")).extend(array.reshape(-1).tolist())
    elif form == "fitted-contents":  # any values of the field's type, as many as the declared shape needs
        field = CONTENTS_FIELD.get(datatype, "fp32_contents")
        getattr(tensor.contents, field).extend(draw(st.lists(contents_values[field], min_size=count,
                                                             max_size=count)))
    else:
        for field in draw(st.lists(st.sampled_from(sorted(contents_values)), max_size=2, unique=True)):
            getattr(tensor.contents, field).extend(draw(st.lists(contents_values[field], max_size=8)))


@st.composite
def grpc_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="m", model_version=draw(st.sampled_from(["", "1", "x"])),
                                   id=draw(st.text(max_size=4)))
    forms = draw(st.sampled_from([RAW_FORMS, CONTENTS_FORMS, RAW_FORMS + CONTENTS_FORMS]))
    for _ in range(draw(st.integers(0, 3))):
        draw(grpc_inputs(message, forms))
    if draw(st.integers(0, 7)) == 0:  # raw_input_contents of a random count and sizes
        del message.raw_input_contents[:]
        message.raw_input_contents.extend(draw(st.lists(st.binary(max_size=40), max_size=4)))
    _set_parameters(message.parameters, draw(parameter_maps))
    if draw(st.booleans()):
        _set_parameters(message.parameters, {"timeout": draw(timeouts)})
    for name in draw(st.lists(st.sampled_from(NAMES), max_size=2)):
        message.outputs.add(name=name)
    return message


def _contents_values(tensor: pb.ModelInferRequest.InferInputTensor) -> list[Any] | None:
    field = CONTENTS_FIELD.get(tensor.datatype)
    return None if field is None else list(getattr(tensor.contents, field))


@FUZZ
@given(message=grpc_requests())
def test_grpc_messages_decode_to_declared_shapes_or_raise_tessera_errors(message: pb.ModelInferRequest) -> None:
    _check_grpc(message)


def _check_grpc(message: pb.ModelInferRequest) -> None:
    """Decode the message as the servicer receives it: declared shapes and the values sent, or a TesseraError."""
    message = pb.ModelInferRequest.FromString(message.SerializeToString())
    try:
        request = grpc_codec.decode_infer_request(message)
    except TesseraError:
        return
    assert len(request.inputs) == len(message.inputs)
    raw = message.raw_input_contents
    for index, tensor in enumerate(message.inputs):
        array = request.inputs[tensor.name]
        assert request.datatypes[tensor.name] == tensor.datatype
        assert array.shape == tuple(tensor.shape)
        if raw:
            assert _wire_bytes(array, tensor.datatype) == raw[index]
        elif tensor.datatype == "BYTES":
            got = [v if isinstance(v, bytes) else v.encode() for v in array.reshape(-1).tolist()]
            assert got == _contents_values(tensor)
        else:
            # Typed contents must arrive as sent: a value the datatype cannot hold is refused, not wrapped.
            sent = np.array(_contents_values(tensor), dtype=np.float64 if tensor.datatype.startswith("FP")
                            else object)
            np.testing.assert_array_equal(array.reshape(-1).astype(sent.dtype), sent)
    assert isinstance(request.timeout_us, int)


@FUZZ
@given(datatype=st.sampled_from(sorted(CONTENTS_FIELD)), shape=small_shapes, data=st.data())
def test_grpc_typed_contents_arrive_as_sent_or_raise_tessera_errors(datatype: str, shape: list[int],
                                                                    data: st.DataObject) -> None:
    """Any value of the field's protobuf type: it fits the datatype and arrives unchanged, or is refused."""
    field = CONTENTS_FIELD[datatype]
    values = data.draw(st.lists(contents_values[field], min_size=math.prod(shape), max_size=math.prod(shape)))
    message = pb.ModelInferRequest(model_name="m")
    getattr(message.inputs.add(name="x", datatype=datatype, shape=shape).contents, field).extend(values)
    _check_grpc(message)


@pytest.mark.parametrize(("datatype", "field", "value"), [
    pytest.param("INT8", "int_contents", 128, id="INT8"),
    pytest.param("INT16", "int_contents", -32769, id="INT16"),
    pytest.param("UINT8", "uint_contents", 256, id="UINT8"),
    pytest.param("UINT16", "uint_contents", 70000, id="UINT16"),
])
def test_grpc_contents_outside_a_narrow_datatype_are_invalid_input(datatype: str, field: str, value: int) -> None:
    """Found by the property above: these used to wrap silently (70000 arrived as UINT16 4464)."""
    message = pb.ModelInferRequest(model_name="m")
    getattr(message.inputs.add(name="x", datatype=datatype, shape=[1]).contents, field).append(value)
    with pytest.raises(InvalidInput, match=f"input 'x': contents hold values outside the range of {datatype}"):
        grpc_codec.decode_infer_request(message)


@FUZZ
@given(datatype=st.sampled_from(DATATYPES), shape=hostile_shapes, typed=st.booleans(), data=st.data())
def test_grpc_hostile_shapes_with_matching_contents_raise_tessera_errors(datatype: str, shape: list[int],
                                                                         typed: bool, data: st.DataObject) -> None:
    """Huge, negative, overflowing or too many dimensions, with as much content as the shape declares."""
    count = _small_count(shape)
    message = pb.ModelInferRequest(model_name="m")
    tensor = message.inputs.add(name="x", datatype=datatype, shape=shape)
    if typed and datatype in CONTENTS_FIELD:
        field = CONTENTS_FIELD[datatype]
        getattr(tensor.contents, field).extend(data.draw(st.lists(contents_values[field], min_size=count,
                                                                  max_size=count)))
    else:
        size = count * (4 if datatype == "BYTES" else V2_TO_WIRE_DTYPE[datatype].itemsize)
        message.raw_input_contents.append(data.draw(st.binary(min_size=size, max_size=size))
                                          if datatype != "BYTES" else bytes(size))
    _check_grpc(message)


@FUZZ
@given(request_parameters=parameter_maps, timeout=timeouts, input_parameters=parameter_maps,
       output_parameters=parameter_maps)
def test_grpc_parameters_of_every_type_decode_or_raise_tessera_errors(
        request_parameters: dict[str, Any], timeout: tuple[str, Any], input_parameters: dict[str, Any],
        output_parameters: dict[str, Any]) -> None:
    """Parameters of every InferParameter type, `timeout` included with inf, NaN, negative and huge values."""
    message = pb.ModelInferRequest(model_name="m")
    _set_parameters(message.parameters, request_parameters | {"timeout": timeout})
    tensor = message.inputs.add(name="x", datatype="INT32", shape=[1])
    tensor.contents.int_contents.append(7)
    _set_parameters(tensor.parameters, input_parameters)
    _set_parameters(message.outputs.add(name="y").parameters, output_parameters)
    try:
        request = grpc_codec.decode_infer_request(message)
    except TesseraError:
        return
    assert isinstance(request.timeout_us, int) and request.inputs["x"].tolist() == [7]


@FUZZ
@given(data=st.binary(max_size=80))
def test_grpc_random_wire_bytes_decode_or_raise_tessera_errors(data: bytes) -> None:
    try:
        message = pb.ModelInferRequest.FromString(data)
    except Exception:  # not a message at all: the gRPC layer answers that, not the codec
        return
    with contextlib.suppress(TesseraError):
        grpc_codec.decode_infer_request(message)


@pytest.mark.parametrize("datatype", DATATYPES)
@ROUND_TRIP
@given(data=st.data(), others=st.lists(tensors(), max_size=3), typed=st.booleans())
def test_grpc_valid_tensors_round_trip_through_decode_and_encode(datatype: str, data: st.DataObject,
                                                                 others: list[tuple[str, Tensor]],
                                                                 typed: bool) -> None:
    """encode(decode(x)) gives back the same raw bytes, from raw or typed contents, for every datatype."""
    items = [data.draw(tensors([datatype])), *others]
    typed = typed and all(d in CONTENTS_FIELD for d, _ in items)
    message = pb.ModelInferRequest(model_name="m", model_version="1")
    for index, (datatype, array) in enumerate(items):
        tensor = message.inputs.add(name=f"t{index}", datatype=datatype, shape=array.shape)
        if typed:
            getattr(tensor.contents, CONTENTS_FIELD[datatype]).extend(array.reshape(-1).tolist())
        else:
            message.raw_input_contents.append(_wire_bytes(array, datatype))
    message = pb.ModelInferRequest.FromString(message.SerializeToString())
    request = grpc_codec.decode_infer_request(message)
    response = InferResponse("m", "1", outputs=request.inputs, datatypes=request.datatypes,
                             id=request.id)
    encoded = grpc_codec.encode_infer_response(response)
    assert grpc_codec.infer_response_bytes(response) == encoded.SerializeToString()
    assert [(o.name, o.datatype, tuple(o.shape)) for o in encoded.outputs] == [
        (f"t{i}", d, a.shape) for i, (d, a) in enumerate(items)]
    for (datatype, array), raw in zip(items, encoded.raw_output_contents, strict=True):
        assert raw == _wire_bytes(array, datatype)
    assert request.outputs == [RequestedOutput(o.name) for o in message.outputs]


@FUZZ
@given(items=st.lists(tensors(), max_size=3), names=st.lists(st.text(max_size=12), min_size=3, max_size=3),
       response_id=st.text(max_size=40))
def test_grpc_responses_written_directly_are_the_bytes_protobuf_writes(
        items: list[tuple[str, Tensor]], names: list[str], response_id: str) -> None:
    """infer_response_bytes is the serialization of encode_infer_response, byte for byte: any names and ids
    (empty ones are left out), and outputs with empty dimensions, no dimensions, or BYTES elements."""
    outputs = {f"{names[2]}{index}": array for index, (_, array) in enumerate(items)}
    datatypes = {f"{names[2]}{index}": datatype for index, (datatype, _) in enumerate(items)}
    response = InferResponse(names[0], names[1], outputs, datatypes, id=response_id)
    written = grpc_codec.infer_response_bytes(response)
    assert written == grpc_codec.encode_infer_response(response).SerializeToString()
    assert pb.ModelInferResponse.FromString(written).id == response_id
