"""The gRPC rollout service (`tessera.rollout.RolloutService`): start, status, promote, abort."""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc

from .._generated import rollout_pb2 as rp
from ..dataplane import DataPlane
from ..routing import RolloutSpec, RolloutState
from .credentials import credentials_from_context as _creds
from .errors import guarded

__all__ = ["RolloutService"]

SERVICE_NAME = "tessera.rollout.RolloutService"
Ctx: TypeAlias = grpc.aio.ServicerContext


def encode_status(model: str, state: RolloutState | None) -> rp.RolloutStatus:
    if state is None:
        return rp.RolloutStatus(model=model, phase="NONE")
    import orjson

    return rp.RolloutStatus(
        model=state.model, stable_version=state.stable_version, candidate_version=state.candidate_version,
        phase=state.phase.value, step=state.step, weight=state.weight, failed_checks=state.failed_checks,
        reason=state.reason, last_analysis_json=orjson.dumps(state.last_analysis).decode(),
        spec=state.spec.to_proto(),
    )


class RolloutService:
    def __init__(self, dataplane: DataPlane) -> None:
        self._dp = dataplane

    async def start(self, request: rp.StartRolloutRequest, context: Ctx) -> rp.RolloutStatus:
        spec = RolloutSpec.from_proto(request.spec)
        return encode_status(request.model, await self._dp.start_rollout(request.model, spec, _creds(context)))

    async def get(self, request: rp.RolloutRequest, context: Ctx) -> rp.RolloutStatus:
        return encode_status(request.model, self._dp.rollout_status(request.model, _creds(context)))

    async def promote(self, request: rp.RolloutRequest, context: Ctx) -> rp.RolloutStatus:
        return encode_status(request.model, await self._dp.promote_rollout(request.model, request.reason,
                                                                               _creds(context)))

    async def abort(self, request: rp.RolloutRequest, context: Ctx) -> rp.RolloutStatus:
        return encode_status(request.model, await self._dp.abort_rollout(request.model, request.reason,
                                                                             _creds(context)))

    def handler(self) -> grpc.GenericRpcHandler:
        table: dict[str, tuple[Any, Any]] = {
            "StartRollout": (self.start, rp.StartRolloutRequest),
            "GetRollout": (self.get, rp.RolloutRequest),
            "PromoteRollout": (self.promote, rp.RolloutRequest),
            "AbortRollout": (self.abort, rp.RolloutRequest),
        }
        return grpc.method_handlers_generic_handler(SERVICE_NAME, {
            name: grpc.unary_unary_rpc_method_handler(guarded(fn), request_deserializer=req.FromString,
                                                      response_serializer=lambda m: m.SerializeToString())
            for name, (fn, req) in table.items()
        })
