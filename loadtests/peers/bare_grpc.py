"""A bare grpc.aio server that answers ModelInfer without running a model: the Python transport's
ceiling. It parses each request and answers zeros shaped like the model's outputs.

    python -m loadtests.peers.bare_grpc --model-file m.onnx --model-name mlp --port 8001
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import grpc
import numpy as np

from server._generated import grpc_service_pb2 as pb
from server._generated import model_config_pb2 as mc

__all__ = ["BareInferService", "serve"]

SERVICE = "inference.GRPCInferenceService"
_ORT_TO_V2 = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(float16)": "FP16",
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(int8)": "INT8",
    "tensor(string)": "BYTES",
}
_ITEM_SIZE = {"FP32": 4, "FP64": 8, "INT64": 8, "INT32": 4, "FP16": 2, "BOOL": 1, "UINT8": 1, "INT8": 1}


class BareInferService:
    """Metadata read from an ONNX file's signature; answers cached per batch size."""

    def __init__(self, model_name: str, model_file: str) -> None:
        import onnxruntime as ort

        session = ort.InferenceSession(model_file, providers=["CPUExecutionProvider"])

        def meta(args: Any) -> list[pb.ModelMetadataResponse.TensorMetadata]:
            return [
                pb.ModelMetadataResponse.TensorMetadata(
                    name=a.name,
                    datatype=_ORT_TO_V2[a.type],
                    shape=[d if isinstance(d, int) else -1 for d in a.shape],
                )
                for a in args
            ]

        self.name = model_name
        self.metadata = pb.ModelMetadataResponse(
            name=model_name,
            versions=["1"],
            platform="onnxruntime_onnx",
            inputs=meta(session.get_inputs()),
            outputs=meta(session.get_outputs()),
        )
        self.config = _config(self.metadata)
        self._answers: dict[int, bytes] = {}

    def answer(self, rows: int) -> bytes:
        if rows not in self._answers:
            reply = pb.ModelInferResponse(model_name=self.name, model_version="1")
            for out in self.metadata.outputs:
                shape = [rows if d < 0 else d for d in out.shape]
                reply.outputs.add(name=out.name, datatype=out.datatype, shape=shape)
                size = int(np.prod(shape)) * _ITEM_SIZE.get(out.datatype, 4)
                reply.raw_output_contents.append(bytes(size))
            self._answers[rows] = reply.SerializeToString()
        return self._answers[rows]

    async def model_infer(self, request: pb.ModelInferRequest, context: Any) -> bytes:
        shape = request.inputs[0].shape if request.inputs else [1]
        return self.answer(shape[0] if shape else 1)

    async def model_metadata(
        self, request: pb.ModelMetadataRequest, context: Any
    ) -> pb.ModelMetadataResponse:
        return self.metadata

    def handler(self) -> grpc.GenericRpcHandler:
        ok = pb.ServerLiveResponse(live=True)
        ready = pb.ServerReadyResponse(ready=True)

        async def live(request: Any, context: Any) -> pb.ServerLiveResponse:
            return ok

        async def server_ready(request: Any, context: Any) -> pb.ServerReadyResponse:
            return ready

        async def model_ready(request: Any, context: Any) -> pb.ModelReadyResponse:
            return pb.ModelReadyResponse(ready=True)

        async def server_metadata(request: Any, context: Any) -> pb.ServerMetadataResponse:
            return pb.ServerMetadataResponse(name="bare", version="0")

        async def model_config(request: Any, context: Any) -> pb.ModelConfigResponse:
            return pb.ModelConfigResponse(config=self.config)

        def unary(fn: Any, req: Any, resp: Any = None) -> grpc.RpcMethodHandler:
            serializer = resp.SerializeToString if resp is not None else None
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=req.FromString, response_serializer=serializer
            )

        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "ModelInfer": unary(self.model_infer, pb.ModelInferRequest),
                "ModelMetadata": unary(
                    self.model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse
                ),
                "ServerLive": unary(live, pb.ServerLiveRequest, pb.ServerLiveResponse),
                "ServerReady": unary(server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
            "ServerMetadata": unary(server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse),
            "ModelConfig": unary(model_config, pb.ModelConfigRequest, pb.ModelConfigResponse),
                "ModelReady": unary(model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
            },
        )


def _config(metadata: pb.ModelMetadataResponse) -> mc.ModelConfig:
    """A Triton ModelConfig for perf_analyzer: batched when every first dim is variable."""
    tensors = [*metadata.inputs, *metadata.outputs]
    batched = all(t.shape and t.shape[0] < 0 for t in tensors)
    config = mc.ModelConfig(name=metadata.name, platform=metadata.platform, max_batch_size=64 if batched else 0)

    def dims(t: pb.ModelMetadataResponse.TensorMetadata) -> list[int]:
        return list(t.shape[1:] if batched else t.shape)

    for t in metadata.inputs:
        config.input.add(name=t.name, data_type=_config_type(t.datatype), dims=dims(t))
    for t in metadata.outputs:
        config.output.add(name=t.name, data_type=_config_type(t.datatype), dims=dims(t))
    return config


def _config_type(datatype: str) -> mc.DataType:
    return mc.DataType.Value("TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}")


async def serve(service: BareInferService, host: str, port: int) -> None:
    """Serve until cancelled (SIGTERM ends the process)."""
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", -1)])
    server.add_generic_rpc_handlers((service.handler(),))
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"bare grpc.aio server on {host}:{port}", flush=True)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-file", required=True)
    parser.add_argument("--model-name", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    service = BareInferService(args.model_name, args.model_file)
    try:
        import uvloop

        uvloop.run(serve(service, args.host, args.port))
    except ImportError:
        asyncio.run(serve(service, args.host, args.port))


if __name__ == "__main__":
    main()
