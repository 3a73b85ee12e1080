"""ModelStreamInfer's responses are the serialized ModelInferResponse behind a tag and length, not a wrapped message."""

from __future__ import annotations

import pytest

from server._generated import grpc_service_pb2 as pb
from server.grpc_api.service import _stream_response


@pytest.mark.parametrize("size", [0, 1, 127, 128, 300, 16_384, 2_100_000])
def test_the_bytes_are_those_of_the_wrapped_message(size: int) -> None:
    response = pb.ModelInferResponse(model_name="m", model_version="1", id="x",
                                     raw_output_contents=[bytes(range(256)) * (size // 256) + b"\x07" * (size % 256)])
    response.outputs.add(name="out", datatype="UINT8", shape=[size])
    wrapped = pb.ModelStreamInferResponse(infer_response=response)
    assert _stream_response(response.SerializeToString()) == wrapped.SerializeToString()
    assert pb.ModelStreamInferResponse.FromString(_stream_response(response.SerializeToString())) == wrapped


def test_an_empty_response_is_still_present() -> None:
    parsed = pb.ModelStreamInferResponse.FromString(_stream_response(b""))
    assert parsed.HasField("infer_response") and not parsed.error_message
