"""The gRPC inference service: thin handlers (decode -> DataPlane -> encode), registered by protocol name.

Handlers are registered under `inference.GRPCInferenceService`, the protocol's service name, rather
than the protobuf package of our messages (see protos/grpc_service.proto for why).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeAlias

import grpc

from .. import observation
from .._generated import grpc_service_pb2 as pb
from ..dataplane import DataPlane
from ..protocol.grpc_codec import decode_infer_request, encode_infer_response, encode_statistics
from .credentials import credentials_from_context as _creds
from .errors import abort_status, guarded

__all__ = ["ROUTING_KEY_METADATA", "SERVICE_NAME", "InferenceService"]

logger = logging.getLogger(__name__)
SERVICE_NAME = "inference.GRPCInferenceService"
ROUTING_KEY_METADATA = "tessera-routing-key"
Ctx: TypeAlias = grpc.aio.ServicerContext


def _routing_key(context: Ctx) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == ROUTING_KEY_METADATA:
            return str(value)
    return None


class InferenceService:
    """Handlers for every RPC of the service; each is a few lines around one DataPlane call."""

    def __init__(self, dataplane: DataPlane) -> None:
        self._dp = dataplane

    async def server_live(self, request: pb.ServerLiveRequest, context: Ctx) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self._dp.live())

    async def server_ready(self, request: pb.ServerReadyRequest, context: Ctx) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._dp.ready())

    async def model_ready(self, request: pb.ModelReadyRequest, context: Ctx) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self._dp.model_ready(request.name, request.version,
                                                                   _creds(context)))

    async def server_metadata(self, request: pb.ServerMetadataRequest, context: Ctx
                              ) -> pb.ServerMetadataResponse:
        meta = self._dp.server_metadata(_creds(context))
        return pb.ServerMetadataResponse(name=meta.name, version=meta.version, extensions=meta.extensions)

    async def model_metadata(self, request: pb.ModelMetadataRequest, context: Ctx
                             ) -> pb.ModelMetadataResponse:
        meta = self._dp.model_metadata(request.name, request.version, _creds(context))
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta.name, versions=meta.versions, platform=meta.platform,
            inputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in meta.inputs],
            outputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in meta.outputs],
        )

    async def model_config(self, request: pb.ModelConfigRequest, context: Ctx) -> pb.ModelConfigResponse:
        return pb.ModelConfigResponse(config=self._dp.model_config(request.name, request.version,
                                                                              _creds(context)))

    async def model_infer(self, request: pb.ModelInferRequest, context: Ctx) -> pb.ModelInferResponse:
        observed = observation.begin_grpc(context.invocation_metadata()) if observation.ACTIVE is not None else None
        response = await self._dp.infer(decode_infer_request(request, _routing_key(context)), _creds(context))
        encoded = encode_infer_response(response)
        if observed is not None and (trace := observed.finish()):
            context.set_trailing_metadata(tuple(trace.items()))
        return encoded

    async def model_stream_infer(self, requests: AsyncIterator[pb.ModelInferRequest], context: Ctx
                                 ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests on one stream run concurrently; an error answers that request and the stream goes on."""
        results: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        key = _routing_key(context)
        creds = _creds(context)
        metadata = context.invocation_metadata() if observation.ACTIVE is not None else None

        async def one(request: pb.ModelInferRequest) -> None:
            observed = observation.begin_grpc(metadata) if observation.ACTIVE is not None else None
            try:
                response = await self._dp.infer(decode_infer_request(request, key), creds)
                encoded = encode_infer_response(response)
                if observed is not None:
                    observed.finish()
                await results.put(pb.ModelStreamInferResponse(infer_response=encoded))
            except Exception as exc:
                if observed is not None:
                    observed.failed(exc)
                _, message = abort_status(exc)
                await results.put(pb.ModelStreamInferResponse(
                    error_message=message, infer_response=pb.ModelInferResponse(id=request.id)))

        async def reader() -> None:
            tasks: set[asyncio.Task[None]] = set()
            async for request in requests:
                task = asyncio.create_task(one(request))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.gather(*tasks)
            await results.put(None)

        read = asyncio.create_task(reader())
        try:
            while (item := await results.get()) is not None:
                yield item
        finally:
            read.cancel()

    async def model_statistics(self, request: pb.ModelStatisticsRequest, context: Ctx
                               ) -> pb.ModelStatisticsResponse:
        return encode_statistics(self._dp.model_statistics(request.name, request.version, _creds(context)))

    async def repository_index(self, request: pb.RepositoryIndexRequest, context: Ctx
                               ) -> pb.RepositoryIndexResponse:
        entry = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(models=[
            entry(name=e.name, version=e.version, state=e.state, reason=e.reason)
            for e in self._dp.repository_index(request.ready, _creds(context))
        ])

    async def repository_model_load(self, request: pb.RepositoryModelLoadRequest, context: Ctx
                                    ) -> pb.RepositoryModelLoadResponse:
        params = request.parameters
        config = params["config"].string_param if "config" in params else None
        files = {k: v.bytes_param for k, v in params.items() if k.startswith("file:")}
        await self._dp.load_model(request.model_name, config, files, _creds(context))
        return pb.RepositoryModelLoadResponse()

    async def repository_model_unload(self, request: pb.RepositoryModelUnloadRequest, context: Ctx
                                      ) -> pb.RepositoryModelUnloadResponse:
        params = request.parameters
        dependents = params["unload_dependents"].bool_param if "unload_dependents" in params else False
        await self._dp.unload_model(request.model_name, dependents, _creds(context))
        return pb.RepositoryModelUnloadResponse()

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler that serves every RPC, each wrapped by the one error mapping."""
        unary: dict[str, tuple[Callable[..., Any], Any]] = {
            "ServerLive": (self.server_live, pb.ServerLiveRequest),
            "ServerReady": (self.server_ready, pb.ServerReadyRequest),
            "ModelReady": (self.model_ready, pb.ModelReadyRequest),
            "ServerMetadata": (self.server_metadata, pb.ServerMetadataRequest),
            "ModelMetadata": (self.model_metadata, pb.ModelMetadataRequest),
            "ModelConfig": (self.model_config, pb.ModelConfigRequest),
            "ModelInfer": (self.model_infer, pb.ModelInferRequest),
            "ModelStatistics": (self.model_statistics, pb.ModelStatisticsRequest),
            "RepositoryIndex": (self.repository_index, pb.RepositoryIndexRequest),
            "RepositoryModelLoad": (self.repository_model_load, pb.RepositoryModelLoadRequest),
            "RepositoryModelUnload": (self.repository_model_unload, pb.RepositoryModelUnloadRequest),
        }
        methods: dict[str, grpc.RpcMethodHandler] = {
            name: grpc.unary_unary_rpc_method_handler(
                guarded(fn), request_deserializer=req.FromString,
                response_serializer=lambda m: m.SerializeToString())
            for name, (fn, req) in unary.items()
        }
        methods["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
            self.model_stream_infer, request_deserializer=pb.ModelInferRequest.FromString,
            response_serializer=lambda m: m.SerializeToString())
        return grpc.method_handlers_generic_handler(SERVICE_NAME, methods)
