"""A bare grpc.aio server that answers ModelInfer with precomputed zeros, running no model: the ceiling
of the Python gRPC transport that Tessera's own overhead is measured against (serving_benchmark).

    python -m benchmarks.bare_server --model-repository DIR --port 8001 [--host 127.0.0.1]

It serves every model of a Triton-layout repository: inputs and outputs come from the ONNX graph (read
once at start, never run), `max_batch_size` from config.pbtxt. Each request is parsed as Tessera parses
it (ModelInferRequest.FromString); the answer is a serialized ModelInferResponse cached per row count.
"""

from __future__ import annotations

import argparse
import asyncio
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import text_format

from server._generated import grpc_service_pb2 as pb
from server._generated import model_config_pb2 as mc

__all__ = ["BareModel", "BareService", "load_models", "main", "server_arguments"]

SERVICE_NAME = "inference.GRPCInferenceService"  # the protocol's name, as server/grpc_api registers it
# ORT type string -> (config TYPE_*, V2 datatype, bytes per element)
_TYPES: dict[str, tuple[Any, str, int]] = {
    "tensor(float)": (mc.TYPE_FP32, "FP32", 4),
    "tensor(double)": (mc.TYPE_FP64, "FP64", 8),
    "tensor(float16)": (mc.TYPE_FP16, "FP16", 2),
    "tensor(int64)": (mc.TYPE_INT64, "INT64", 8),
    "tensor(int32)": (mc.TYPE_INT32, "INT32", 4),
    "tensor(uint8)": (mc.TYPE_UINT8, "UINT8", 1),
    "tensor(int8)": (mc.TYPE_INT8, "INT8", 1),
    "tensor(bool)": (mc.TYPE_BOOL, "BOOL", 1),
}


@dataclass(slots=True)
class _Tensor:
    name: str
    ort_type: str
    dims: list[int]  # without the batch dimension when the model batches; -1 = variable

    @property
    def datatype(self) -> str:
        return _TYPES[self.ort_type][1]


class BareModel:
    """One model's metadata, config and cached zero answers."""

    def __init__(self, name: str, max_batch_size: int, inputs: list[_Tensor], outputs: list[_Tensor]) -> None:
        self.name = name
        self.max_batch_size = max_batch_size
        self.outputs = outputs
        batch = [-1] if max_batch_size > 0 else []
        tensor = pb.ModelMetadataResponse.TensorMetadata
        self.metadata = pb.ModelMetadataResponse(
            name=name, versions=["1"], platform="onnxruntime_onnx",
            inputs=[tensor(name=t.name, datatype=t.datatype, shape=batch + t.dims) for t in inputs],
            outputs=[tensor(name=t.name, datatype=t.datatype, shape=batch + t.dims) for t in outputs])
        self.config = pb.ModelConfigResponse(config=mc.ModelConfig(
            name=name, platform="onnxruntime_onnx", backend="onnxruntime", max_batch_size=max_batch_size,
            input=[mc.ModelInput(name=t.name, data_type=_TYPES[t.ort_type][0], dims=t.dims) for t in inputs],
            output=[mc.ModelOutput(name=t.name, data_type=_TYPES[t.ort_type][0], dims=t.dims)
                    for t in outputs]))
        self._answers: dict[int, bytes] = {}

    def answer(self, rows: int) -> bytes:
        """The serialized response for a request of `rows` rows (0: an unbatched model)."""
        cached = self._answers.get(rows)
        if cached is None:
            reply = pb.ModelInferResponse(model_name=self.name, model_version="1")
            for out in self.outputs:
                shape = ([rows] if self.max_batch_size > 0 else []) + [max(d, 1) for d in out.dims]
                reply.outputs.add(name=out.name, datatype=out.datatype, shape=shape)
                reply.raw_output_contents.append(bytes(math.prod(shape) * _TYPES[out.ort_type][2]))
            cached = self._answers[rows] = reply.SerializeToString()
        return cached


def _graph_tensors(args: Any, batched: bool) -> list[_Tensor]:
    tensors = []
    for arg in args:
        dims = [d if isinstance(d, int) else -1 for d in arg.shape]
        tensors.append(_Tensor(arg.name, arg.type, dims[1:] if batched else dims))
    return tensors


def load_models(root: Path) -> dict[str, BareModel]:
    """Every `<root>/<model>/1/model.onnx`, signature from the graph, max_batch_size from config.pbtxt."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    models = {}
    for path in sorted(root.glob("*/1/model.onnx")):
        folder = path.parent.parent
        config = mc.ModelConfig()
        if (folder / "config.pbtxt").exists():
            text_format.Parse((folder / "config.pbtxt").read_text(), config)
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        batched = config.max_batch_size > 0
        models[folder.name] = BareModel(folder.name, config.max_batch_size,
                                        _graph_tensors(session.get_inputs(), batched),
                                        _graph_tensors(session.get_outputs(), batched))
        del session
    return models


class BareService:
    """The handlers perf_analyzer and tritonclient call; ModelInfer answers cached bytes."""

    def __init__(self, models: dict[str, BareModel]) -> None:
        self._models = models

    async def model_infer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> bytes:
        model = self._models[request.model_name]
        rows = request.inputs[0].shape[0] if model.max_batch_size > 0 and request.inputs else 0
        if request.id:  # appended bytes merge into the message: clients that match ids see theirs
            return model.answer(rows) + pb.ModelInferResponse(id=request.id).SerializeToString()
        return model.answer(rows)

    async def model_metadata(self, request: pb.ModelMetadataRequest, context: Any) -> bytes:
        return self._models[request.name].metadata.SerializeToString()

    async def model_config(self, request: pb.ModelConfigRequest, context: Any) -> bytes:
        return self._models[request.name].config.SerializeToString()

    async def model_statistics(self, request: pb.ModelStatisticsRequest, context: Any) -> bytes:
        names = [request.name] if request.name else list(self._models)
        return pb.ModelStatisticsResponse(model_stats=[
            pb.ModelStatistics(name=n, version="1") for n in names]).SerializeToString()

    def handler(self) -> grpc.GenericRpcHandler:
        live = pb.ServerLiveResponse(live=True).SerializeToString()
        ready = pb.ServerReadyResponse(ready=True).SerializeToString()
        model_ready = pb.ModelReadyResponse(ready=True).SerializeToString()
        metadata = pb.ServerMetadataResponse(name="bare-grpc-aio", version=grpc.__version__).SerializeToString()

        def constant(answer: bytes) -> Any:
            async def handle(request: Any, context: Any) -> bytes:
                return answer
            return handle

        # response_serializer None: handlers return serialized bytes, so answering costs no encoding.
        methods = {
            "ServerLive": (constant(live), pb.ServerLiveRequest),
            "ServerReady": (constant(ready), pb.ServerReadyRequest),
            "ModelReady": (constant(model_ready), pb.ModelReadyRequest),
            "ServerMetadata": (constant(metadata), pb.ServerMetadataRequest),
            "ModelMetadata": (self.model_metadata, pb.ModelMetadataRequest),
            "ModelConfig": (self.model_config, pb.ModelConfigRequest),
            "ModelStatistics": (self.model_statistics, pb.ModelStatisticsRequest),
            "ModelInfer": (self.model_infer, pb.ModelInferRequest),
        }
        return grpc.method_handlers_generic_handler(SERVICE_NAME, {
            name: grpc.unary_unary_rpc_method_handler(fn, request_deserializer=req.FromString)
            for name, (fn, req) in methods.items()})


async def serve(models: dict[str, BareModel], host: str, port: int) -> None:
    """Serve until the process is killed."""
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20),
                                      ("grpc.max_send_message_length", 64 << 20)])
    server.add_generic_rpc_handlers((BareService(models).handler(),))
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"bare grpc.aio server on {host}:{port}: {', '.join(models)}", flush=True)
    await server.wait_for_termination()


def server_arguments(description: str | None, argv: list[str] | None) -> argparse.Namespace:
    """--model-repository, --host and --port: what a reference server of these benchmarks takes."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-repository", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = server_arguments(__doc__, argv)
    models = load_models(args.model_repository)
    try:
        import uvloop  # the same loop Tessera runs on
    except ImportError:  # pragma: no cover
        asyncio.run(serve(models, args.host, args.port))
    else:
        uvloop.run(serve(models, args.host, args.port))


if __name__ == "__main__":
    main()
