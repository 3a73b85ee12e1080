"""The RPC table: each service's methods once, registered by both gRPC servers (ours and grpcio's)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import grpc

from .errors import guarded

__all__ = ["Rpc", "RpcTable", "StreamSession", "generic_handler", "route_table"]

RpcKind = Literal["unary_unary", "unary_stream", "stream_stream"]


class StreamSession(Protocol):
    """A stream_stream method whose messages are answered independently (each writes its own answers
    through the context), as our server runs it: every message's `answer` is its own task, started from
    the socket read that completed the message, as a unary call is; at most `in_flight` at once, and
    the messages beyond them wait unread (flow control holds the client back)."""

    in_flight: int

    def answer(self, message: Any) -> Coroutine[Any, Any, None]: ...


@dataclass(frozen=True, slots=True)
class Rpc:
    """One method: its kind, its `(request, context)` handler and the protobuf class of its requests;
    `request` None hands the handler each message's bytes, for it to parse inside its error mapping.
    A stream_stream method may also give `session` (context -> StreamSession): our server then answers
    its messages through it rather than through `handler` (grpcio's server always runs `handler`)."""

    kind: RpcKind
    handler: Callable[..., Any]
    request: Any | None
    session: Callable[[Any], StreamSession] | None = None

    def parse(self, body: bytes) -> Any:
        """What the handler takes for one message: the bytes, or the parsed message."""
        return body if self.request is None else self.request.FromString(body)

    @property
    def deserializer(self) -> Callable[[bytes], Any] | None:
        return None if self.request is None else self.request.FromString


RpcTable = dict[str, Rpc]
"""Method name -> Rpc, for one service."""


def _serialize(message: Any) -> bytes:
    """A response message's bytes; a handler may yield them already serialized (ModelStreamInfer does)."""
    return message if isinstance(message, bytes) else bytes(message.SerializeToString())


def generic_handler(service: str, table: RpcTable) -> grpc.GenericRpcHandler:
    """The table for grpcio's server; unary handlers are wrapped by the one error mapping (`guarded`)."""
    methods: dict[str, grpc.RpcMethodHandler] = {}
    for name, rpc in table.items():
        if rpc.kind == "unary_unary":
            methods[name] = grpc.unary_unary_rpc_method_handler(
                guarded(rpc.handler), request_deserializer=rpc.deserializer, response_serializer=_serialize)
        elif rpc.kind == "unary_stream":
            methods[name] = grpc.unary_stream_rpc_method_handler(
                rpc.handler, request_deserializer=rpc.deserializer, response_serializer=_serialize)
        else:
            methods[name] = grpc.stream_stream_rpc_method_handler(
                rpc.handler, request_deserializer=rpc.deserializer, response_serializer=_serialize)
    return grpc.method_handlers_generic_handler(service, methods)


def route_table(services: Mapping[str, RpcTable]) -> dict[bytes, Rpc]:
    """':path' -> Rpc for every method of every service ('/inference.GRPCInferenceService/ModelInfer')."""
    return {f"/{service}/{name}".encode(): rpc for service, table in services.items() for name, rpc in table.items()}
