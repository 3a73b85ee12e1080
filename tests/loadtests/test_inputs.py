"""Inputs from metadata or files, and their wire encodings."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loadtests.encoding import grpc_payload, http_payload
from loadtests.inputs import ModelInfo, TensorInfo, random_samples, samples_from_file
from server._generated import grpc_service_pb2 as pb

TABULAR = ModelInfo("tabular", (TensorInfo("features", "FP32", (-1, 3)),), ())
TWO = ModelInfo("two", (TensorInfo("a", "INT32", (-1, 1)), TensorInfo("b", "FP32", (-1, 2))), ())


def test_random_samples_follow_metadata_with_the_batch_size() -> None:
    samples = random_samples(TWO, batch_size=4, count=3)
    assert len(samples) == 3
    assert samples[0]["a"].shape == (4, 1) and samples[0]["a"].dtype == np.int32
    assert samples[0]["b"].shape == (4, 2) and samples[0]["b"].dtype == np.float32


def test_rows_from_parquet_fill_a_single_matrix_input(tmp_path: Path) -> None:
    pq.write_table(pa.table({"age": [1.0, 2.0, 3.0, 4.0], "income": [5.0, 6.0, 7.0, 8.0],
                             "score": [9.0, 10.0, 11.0, 12.0]}), tmp_path / "rows.parquet")
    samples = samples_from_file(tmp_path / "rows.parquet", TABULAR, batch_size=2)
    assert len(samples) == 2
    np.testing.assert_array_equal(samples[1]["features"], [[3, 7, 11], [4, 8, 12]])


def test_json_rows_map_to_inputs_by_name(tmp_path: Path) -> None:
    (tmp_path / "rows.json").write_text(json.dumps([{"a": 1, "b": [0.5, 1.5]}, {"a": 2, "b": [2.5, 3.5]}]))
    samples = samples_from_file(tmp_path / "rows.json", TWO)
    assert samples[1]["a"].tolist() == [[2]] and samples[1]["b"].tolist() == [[2.5, 3.5]]


def test_json_v2_bodies_are_taken_as_they_are(tmp_path: Path) -> None:
    body = {"inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    (tmp_path / "body.json").write_text(json.dumps(body))
    assert samples_from_file(tmp_path / "body.json", TABULAR)[0]["features"].tolist() == [[1, 2, 3]]


def test_mismatched_columns_are_refused(tmp_path: Path) -> None:
    (tmp_path / "rows.json").write_text(json.dumps([{"x": 1.0, "y": 2.0}]))
    with pytest.raises(ValueError, match="3 features"):
        samples_from_file(tmp_path / "rows.json", TABULAR)


def test_grpc_payload_is_a_model_infer_request_with_raw_contents() -> None:
    from loadtests.spec import Target

    sample = {"features": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.array([b"ab"], dtype=object)}
    request = pb.ModelInferRequest.FromString(grpc_payload(Target(port=1, model="tabular"), sample, ["label"]))
    assert request.model_name == "tabular" and [i.name for i in request.inputs] == ["features", "s"]
    assert list(request.inputs[0].shape) == [2, 3] and request.inputs[1].datatype == "BYTES"
    assert np.frombuffer(request.raw_input_contents[0], "<f4").tolist() == [0, 1, 2, 3, 4, 5]
    assert request.raw_input_contents[1] == struct.pack("<I", 2) + b"ab"
    assert [o.name for o in request.outputs] == ["label"]


@pytest.mark.parametrize("encoding", ["binary", "json"])
def test_http_payload_is_a_complete_request(encoding: str) -> None:
    from loadtests.spec import Target

    target = Target(port=8000, protocol="http", model="tabular", model_version="2", http_encoding=encoding)  # type: ignore[arg-type]
    raw = http_payload(target, {"features": np.ones((1, 3), np.float32)})
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v2/models/tabular/versions/2/infer HTTP/1.1"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert int(headers["Content-Length"]) == len(body)
    if encoding == "binary":
        header_length = int(headers["Inference-Header-Content-Length"])
        header = json.loads(body[:header_length])
        assert header["inputs"][0]["parameters"] == {"binary_data_size": 12}
        assert header["parameters"] == {"binary_data_output": True}
        assert np.frombuffer(body[header_length:], "<f4").tolist() == [1, 1, 1]
    else:
        assert json.loads(body)["inputs"][0]["data"] == [1, 1, 1]
