"""The gRPC inference service: thin handlers (decode -> DataPlane -> encode), registered by protocol name.

Handlers are registered under `inference.GRPCInferenceService`, the protocol's service name, rather
than the protobuf package of our messages (see protos/grpc_service.proto for why).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc

from .. import observation
from .._generated import grpc_service_pb2 as pb
from ..admission import Admission
from ..auth import Credentials, Principal, Scope
from ..batching import QueueShare, current_share
from ..dataplane import DataPlane
from ..protocol.grpc_codec import (
    decode_infer_request,
    encode_statistics,
    infer_response_bytes,
    parse_message,
    read_infer_message,
)
from ..protocol.infer_wire import WireRequest
from ..protocol.limits import DEFAULT_LIMITS, DecodeLimits, response_bytes
from ..protocol.protobuf_wire import append_varint
from ..validation import model_shape_check
from .credentials import credentials_from_context as _creds
from .errors import abort_status
from .rpc import Rpc, RpcTable, generic_handler

__all__ = ["ROUTING_KEY_METADATA", "SERVICE_NAME", "InferStream", "InferenceService"]

logger = logging.getLogger(__name__)
SERVICE_NAME = "inference.GRPCInferenceService"
ROUTING_KEY_METADATA = "tessera-routing-key"
STREAM_IN_FLIGHT = 256
"""Requests of one ModelStreamInfer stream computed at once; the stream's next message waits for a place."""
Ctx: TypeAlias = grpc.aio.ServicerContext


def _parsed(handler: Callable[[Any, Ctx], Awaitable[Any]], message: Any
            ) -> Callable[[bytes, Ctx], Awaitable[Any]]:
    """`handler` taking the request's bytes, parsed into `message` (InvalidInput when malformed)."""

    async def parse_then_handle(raw: bytes, context: Ctx) -> Any:
        return await handler(parse_message(message, raw), context)

    return parse_then_handle


def _routing_key(context: Ctx) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == ROUTING_KEY_METADATA:
            return str(value)
    return None


def _stream_response(body: bytes) -> bytes:
    """ModelStreamInferResponse{infer_response: the serialized ModelInferResponse `body`}, serialized: its
    bytes behind field 2's tag and length. Wrapping a message object would copy it, outputs and all."""
    head = bytearray(_INFER_RESPONSE_TAG)
    append_varint(head, len(body))
    return bytes(head) + body


_INFER_RESPONSE_TAG = b"\x12"  # field 2 (infer_response), wire type 2 (length-delimited)


class InferStream:
    """One ModelStreamInfer stream: the caller, routing key and queue share its messages have in common,
    and the answer to each message, written by the message's own task as it finishes."""

    in_flight = STREAM_IN_FLIGHT

    def __init__(self, infer: Callable[[bytes, Credentials, str | None, list[str],
                                        observation.RequestObservation | None, str | None],
                                       Awaitable[bytes]],
                 queue_share: float, context: Ctx) -> None:
        self._infer = infer
        self._context = context
        self._key = _routing_key(context)
        self._creds = _creds(context)
        self._share = QueueShare(queue_share)
        self._metadata = context.invocation_metadata() if observation.ACTIVE is not None else None
        # The caller's traceparent, for the request log's lines of messages that are not observed.
        self._traceparent = observation.grpc_traceparent(context.invocation_metadata()) \
            if observation.REQUEST_LOG is not None else None
        self._writing = asyncio.Lock()  # grpc.aio's context takes one write at a time; ours waits for the peer

    async def answer(self, raw: bytes) -> None:
        """Infer one message and write its answer (or its error: the stream goes on)."""
        observed = observation.begin_grpc(self._metadata) if observation.ACTIVE is not None else None
        ids: list[str] = []
        message: pb.ModelStreamInferResponse | bytes
        # This task is this message's alone (both servers start one per message): its context ends with
        # it, so the share is set without the reset that `QueueShare.applied` pays for.
        current_share.set(self._share)
        try:
            response = await self._infer(raw, self._creds, self._key, ids, observed, self._traceparent)
            if observed is not None:
                observed.finish()
            message = _stream_response(response)
        except Exception as exc:
            if observed is not None:
                observed.failed(exc)
            _, text = abort_status(exc)
            message = pb.ModelStreamInferResponse(
                error_message=text, infer_response=pb.ModelInferResponse(id=ids[0] if ids else ""))
        async with self._writing:
            await self._context.write(message)


class InferenceService:
    """Handlers for every RPC of the service; each is a few lines around one DataPlane call.

    Requests arrive as bytes and are parsed inside the error mapping (malformed bytes are
    INVALID_ARGUMENT), big ones on a worker thread; inference passes `admission` first.
    """

    def __init__(self, dataplane: DataPlane, admission: Admission | None = None,
                 limits: DecodeLimits = DEFAULT_LIMITS, stream_queue_share: float = 0.25) -> None:
        self._dp = dataplane
        self._admission = admission or Admission()
        self._limits = limits
        self._stream_queue_share = stream_queue_share

    async def _infer(self, raw: bytes, creds: Credentials, key: str | None, ids: list[str],
                     observed: observation.RequestObservation | None, traceparent: str | None
                     ) -> bytes:
        """Parse (off the loop for big messages; the request's id is appended to `ids`), check the caller
        before the tensors are decoded, decode, infer, encode; and write the request log's line (its trace
        id: the observed request's, else the caller's `traceparent`)."""
        log = observation.REQUEST_LOG
        start = time.perf_counter_ns() if log is not None else 0
        trace = traceparent if observed is None else observed.trace_id  # what the log line's trace id is made of
        limits = self._limits
        small = len(raw) < limits.off_loop_bytes  # the usual case: no thread hop, and no awaits for it
        msg: pb.ModelInferRequest | WireRequest | None = None
        principal: Principal | None = None
        try:
            with self._admission.bodies.hold() as hold:  # held until the model is done with the views
                hold.grow(len(raw))
                msg = read_infer_message(raw) if small else await limits.off_loop(len(raw), read_infer_message, raw)
                ids.append(msg.id)
                principal = self._dp.authorize(creds, Scope.INFER, "infer", msg.model_name)
                self._admission.admit_caller(principal, creds)
                check = model_shape_check(self._dp.manager, msg.model_name, msg.model_version)
                request = (decode_infer_request(msg, key, limits, check) if small
                           else await limits.off_loop(len(raw), decode_infer_request, msg, key, limits, check))
                response = await self._dp.infer(request, creds, principal, observed)
            size = response_bytes(response)
            encoded = (infer_response_bytes(response) if size < limits.off_loop_bytes
                       else await limits.off_loop(size, infer_response_bytes, response))
        except Exception as exc:  # mapped to a status by the server; logged here, where its figures are
            if log is not None:
                log.failed(start, msg.id if msg is not None else "", trace, msg.model_name if msg is not None else "",
                           exc, principal.name if principal is not None else None, creds, "grpc")
            raise
        if log is not None:
            log.served(start, msg.id, trace, response, "grpc")
        return encoded

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

    async def model_infer(self, raw: bytes, context: Ctx) -> bytes:
        observed = observation.begin_grpc(context.invocation_metadata()) if observation.ACTIVE is not None else None
        # The caller's traceparent, for the request log's line of a request that is not observed.
        traceparent = observation.grpc_traceparent(context.invocation_metadata()) \
            if observation.REQUEST_LOG is not None and observed is None else None
        response = await self._infer(raw, _creds(context), _routing_key(context), [], observed, traceparent)
        if observed is not None and (trace := observed.finish()):
            context.set_trailing_metadata(tuple(trace.items()))
        return response

    async def model_stream_infer(self, requests: AsyncIterator[bytes], context: Ctx) -> None:
        """Requests on one stream run concurrently; an error answers that request and the stream goes on.

        At most STREAM_IN_FLIGHT of them run at once (further messages wait unread), and they share one
        QueueShare: beyond its part of a model's queue they are answered RESOURCE_EXHAUSTED, so one
        stream cannot fill the queue for everyone else. Each answer is written by its own request as it
        finishes (completion order), one write at a time: no queue and no second task per message.

        This is the handler grpcio's server runs; ours starts each message's `InferStream.answer` from
        the socket read instead (`stream_session`), as it starts unary calls.
        """
        stream = self.stream_session(context)
        window = asyncio.Semaphore(stream.in_flight)
        tasks: set[asyncio.Task[None]] = set()

        def done(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            window.release()

        try:
            async for request in requests:
                # A full window reads no further message: flow control then holds the client back,
                # instead of its excess being refused by the share below.
                await window.acquire()
                task = asyncio.create_task(stream.answer(request))
                tasks.add(task)
                task.add_done_callback(done)
            if tasks:
                await asyncio.gather(*tasks)
        finally:  # the stream ended early (reset, a failed write): its requests are dropped too
            for task in list(tasks):
                task.cancel()

    def stream_session(self, context: Ctx) -> InferStream:
        """One ModelStreamInfer stream's state: what each of its messages is answered with."""
        return InferStream(self._infer, self._stream_queue_share, context)

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
        # Tessera serves no ensembles: no model depends on another, so `unload_dependents` has nothing to do.
        await self._dp.unload_model(request.model_name, _creds(context))
        return pb.RepositoryModelUnloadResponse()

    def rpc_table(self) -> RpcTable:
        """Every RPC of the service, for both servers (ours and grpcio's). Each handler takes the message
        bytes (`Rpc.request` None) and parses them inside the error mapping: malformed bytes are
        INVALID_ARGUMENT, and a big inference message is parsed off the event loop."""
        unary: dict[str, tuple[Callable[[Any, Ctx], Awaitable[Any]], Any]] = {
            "ServerLive": (self.server_live, pb.ServerLiveRequest),
            "ServerReady": (self.server_ready, pb.ServerReadyRequest),
            "ModelReady": (self.model_ready, pb.ModelReadyRequest),
            "ServerMetadata": (self.server_metadata, pb.ServerMetadataRequest),
            "ModelMetadata": (self.model_metadata, pb.ModelMetadataRequest),
            "ModelConfig": (self.model_config, pb.ModelConfigRequest),
            "ModelStatistics": (self.model_statistics, pb.ModelStatisticsRequest),
            "RepositoryIndex": (self.repository_index, pb.RepositoryIndexRequest),
            "RepositoryModelLoad": (self.repository_model_load, pb.RepositoryModelLoadRequest),
            "RepositoryModelUnload": (self.repository_model_unload, pb.RepositoryModelUnloadRequest),
        }
        table = {name: Rpc("unary_unary", _parsed(fn, message), None) for name, (fn, message) in unary.items()}
        table["ModelInfer"] = Rpc("unary_unary", self.model_infer, None)
        table["ModelStreamInfer"] = Rpc("stream_stream", self.model_stream_infer, None, self.stream_session)
        return table

    def handler(self) -> grpc.GenericRpcHandler:
        """grpcio's generic handler for the table, each unary RPC wrapped by the one error mapping."""
        return generic_handler(SERVICE_NAME, self.rpc_table())
