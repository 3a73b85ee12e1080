"""Requests read from the socket together reach the batcher together (the reason for our own transport)."""

from __future__ import annotations

import hpack
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2

from server.grpc_api.h2 import frames as f

from .test_attacks import RawPeer


def test_requests_in_one_read_form_one_batch(server_factory, sample_repository) -> None:
    server = server_factory(sample_repository, grpc_server="ours", load_models=("mlp",),
                            model_control_mode="explicit")
    peer = RawPeer(server.app.grpc_port)
    try:
        rows = np.random.default_rng(0).standard_normal((16, 64)).astype(np.float32)
        wire = b""
        for i in range(16):
            request = service_pb2.ModelInferRequest(model_name="mlp", id=str(i))
            request.inputs.add(name=request_input_name(server), datatype="FP32", shape=[1, 64])
            request.raw_input_contents.append(rows[i].tobytes())
            wire += peer.headers(2 * i + 1, "/inference.GRPCInferenceService/ModelInfer")
            wire += peer.message(2 * i + 1, request.SerializeToString())
        peer.send(wire)  # 16 calls in one write: one read on the server (no queue delay on `mlp`)
        decoder = hpack.Decoder()
        statuses: dict[int, bytes] = {}
        for kind, flags, stream_id, payload in peer.frames(timeout=30):
            if kind == f.HEADERS and flags & f.END_STREAM:
                statuses[stream_id] = dict(decoder.decode(payload, raw=True))[b"grpc-status"]
                if len(statuses) == 16:
                    break
        assert statuses == {2 * i + 1: b"0" for i in range(16)}
    finally:
        peer.close()
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        stats = client.get_inference_statistics("mlp", as_json=True)["model_stats"][0]
    assert int(stats["inference_count"]) == 16
    assert int(stats["execution_count"]) == 1  # all sixteen in one batch


def request_input_name(server) -> str:
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        return str(client.get_model_metadata("mlp", as_json=True)["inputs"][0]["name"])
