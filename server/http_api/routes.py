"""The HTTP/REST routes of the Open Inference Protocol and Triton's extensions, on Starlette.

Each handler decodes, makes one DataPlane call and encodes; errors are mapped in errors.py only.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import observation
from ..admission import Admission
from ..auth import Principal, Scope
from ..dataplane import DataPlane
from ..metrics import CONTENT_TYPE_LATEST, Metrics
from ..protocol.http_codec import HEADER_LENGTH, decode_infer_request, encode_infer_response
from ..protocol.limits import DEFAULT_LIMITS, DecodeLimits, response_bytes
from ..tensors import InferRequest
from ..validation import model_shape_check
from . import documents
from .body import read_body, read_body_buffer
from .errors import HTTP_EXCEPTION_HANDLERS, ErrorMiddleware
from .security import cors_middleware, require_json
from .security import credentials_from_request as _creds

__all__ = ["ROUTING_KEY_HEADER", "build_http_app"]

ROUTING_KEY_HEADER = "tessera-routing-key"
"""Request header whose value pins a client to one side of a canary split (as gRPC metadata does)."""

_OPENAPI_PATH = Path(__file__).with_name("openapi.json")


def _json(content: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status_code, media_type="application/json")


def _status(ok: bool) -> Response:
    # The protocol answers health and readiness with the status code alone: 200 true, 4xx false.
    return Response(status_code=200 if ok else 400)


def _model(request: Request) -> tuple[str, str]:
    params = request.path_params
    return params["name"], params.get("version", "")


class HttpRoutes:
    """The handlers, bound to one DataPlane."""

    def __init__(self, dataplane: DataPlane, metrics: Metrics, max_body_bytes: int,
                 admission: Admission | None = None, limits: DecodeLimits = DEFAULT_LIMITS) -> None:
        self._dp = dataplane
        self._metrics = metrics
        self._max_body_bytes = max_body_bytes
        self._admission = admission or Admission()
        self._limits = limits
        self._openapi = orjson.dumps(orjson.loads(_OPENAPI_PATH.read_bytes()))  # checked once, at start

    async def live(self, request: Request) -> Response:
        return _status(self._dp.live())

    async def ready(self, request: Request) -> Response:
        return _status(self._dp.ready())

    async def server_metadata(self, request: Request) -> Response:
        return _json(documents.encode_server_metadata(self._dp.server_metadata(_creds(request))))

    async def model_metadata(self, request: Request) -> Response:
        return _json(documents.encode_model_metadata(self._dp.model_metadata(*_model(request), _creds(request))))

    async def model_ready(self, request: Request) -> Response:
        return _status(self._dp.model_ready(*_model(request), _creds(request)))

    async def model_config(self, request: Request) -> Response:
        return _json(documents.encode_model_config(self._dp.model_config(*_model(request), _creds(request))))

    async def infer(self, request: Request) -> Response:
        log = observation.REQUEST_LOG
        start = time.perf_counter_ns() if log is not None else 0
        headers = request.scope["headers"]
        observed = observation.begin_http(headers) if observation.ACTIVE is not None else None
        # What the log line's trace id is made of: the observed request's, else the caller's, if it sent one.
        trace: observation.LoggedTrace = None
        if log is not None:
            trace = observed.trace_id if observed is not None else observation.http_traceparent(headers)
        name, version = _model(request)
        creds = _creds(request)
        infer_request: InferRequest | None = None
        principal: Principal | None = None
        try:
            principal = self._dp.authorize(creds, Scope.INFER, "infer", name)  # before a byte of the body is read
            self._admission.admit_caller(principal, creds)
            with self._admission.bodies.hold() as hold:  # held until the model is done with the body's views
                body = await read_body_buffer(request, self._max_body_bytes, hold)
                infer_request = await self._limits.off_loop(
                    len(body), decode_infer_request, body, request.headers.get(HEADER_LENGTH), name, version,
                    request.headers.get(ROUTING_KEY_HEADER), self._limits,
                    model_shape_check(self._dp.manager, name, version))
                response = await self._dp.infer(infer_request, creds, principal, observed)
            encoded = await self._limits.off_loop(response_bytes(response), encode_infer_response, response,
                                                  infer_request)
        except Exception as exc:  # mapped to a response by ErrorMiddleware; logged here, where its figures are
            if log is not None:
                log.failed(start, infer_request.id if infer_request is not None else "", trace, name, exc,
                           principal.name if principal is not None else None, creds, "http")
            raise
        out_headers = {} if encoded.header_length is None else {HEADER_LENGTH: str(encoded.header_length)}
        if observed is not None:
            out_headers.update(observed.finish())
        if log is not None:
            log.served(start, infer_request.id, trace, response, "http")
        return Response(encoded.body, headers=out_headers, media_type=encoded.media_type)

    async def statistics(self, request: Request) -> Response:
        params = request.path_params
        stats = self._dp.model_statistics(params.get("name", ""), params.get("version", ""), _creds(request))
        return _json(documents.encode_statistics(stats))

    async def repository_index(self, request: Request) -> Response:
        ready_only = documents.decode_index_request(await read_body(request, self._max_body_bytes))
        return _json(documents.encode_index(self._dp.repository_index(ready_only, _creds(request))))

    async def fleet_index(self, request: Request) -> Response:
        index = await self._dp.fleet_index(_creds(request))
        return _json({"replicas": {name: documents.encode_index(entries) for name, entries in index.items()}})

    async def load(self, request: Request) -> Response:
        require_json(request)
        config, files = documents.decode_load_request(await read_body(request, self._max_body_bytes))
        await self._dp.load_model(request.path_params["name"], config, files, _creds(request))
        return Response(status_code=200)

    async def unload(self, request: Request) -> Response:
        require_json(request)
        documents.check_unload_request(await read_body(request, self._max_body_bytes))
        await self._dp.unload_model(request.path_params["name"], _creds(request))
        return Response(status_code=200)

    async def rollout_status(self, request: Request) -> Response:
        name = request.path_params["name"]
        state = self._dp.rollout_status(name, _creds(request))
        return _json(state.to_json() if state else {"model": name, "phase": "NONE"})

    async def rollout_start(self, request: Request) -> Response:
        require_json(request)
        spec = documents.decode_rollout_spec(await read_body(request, self._max_body_bytes))
        return _json((await self._dp.start_rollout(request.path_params["name"], spec, _creds(request))).to_json())

    async def rollout_promote(self, request: Request) -> Response:
        require_json(request)
        reason = documents.decode_reason(await read_body(request, self._max_body_bytes))
        return _json((await self._dp.promote_rollout(request.path_params["name"], reason, _creds(request))).to_json())

    async def rollout_abort(self, request: Request) -> Response:
        require_json(request)
        reason = documents.decode_reason(await read_body(request, self._max_body_bytes))
        return _json((await self._dp.abort_rollout(request.path_params["name"], reason, _creds(request))).to_json())

    async def drift_reports(self, request: Request) -> Response:
        return _json(self._dp.drift_reports(_creds(request)))

    async def metrics(self, request: Request) -> Response:
        return Response(self._dp.metrics_text(_creds(request)), media_type=CONTENT_TYPE_LATEST)

    async def openapi(self, request: Request) -> Response:
        return Response(self._openapi, media_type="application/json")

    def routes(self) -> list[Route]:
        model = "/v2/models/{name}"
        version = "/v2/models/{name}/versions/{version}"
        # /v2/models/stats must come before /v2/models/{name}, which would also match it.
        return [
            Route("/v2/health/live", self.live, methods=["GET"]),
            Route("/v2/health/ready", self.ready, methods=["GET"]),
            Route("/v2", self.server_metadata, methods=["GET"]),
            Route("/v2/models/stats", self.statistics, methods=["GET"]),
            *(route for base in (model, version) for route in (
                Route(base, self.model_metadata, methods=["GET"]),
                Route(f"{base}/ready", self.model_ready, methods=["GET"]),
                Route(f"{base}/config", self.model_config, methods=["GET"]),
                Route(f"{base}/infer", self.infer, methods=["POST"]),
                Route(f"{base}/stats", self.statistics, methods=["GET"]),
            )),
            Route("/v2/repository/index", self.repository_index, methods=["POST"]),
            Route("/v2/repository/fleet", self.fleet_index, methods=["GET"]),
            Route("/v2/repository/models/{name}/load", self.load, methods=["POST"]),
            Route("/v2/repository/models/{name}/unload", self.unload, methods=["POST"]),
            Route(f"{model}/rollout", self.rollout_status, methods=["GET"]),
            Route(f"{model}/rollout", self.rollout_start, methods=["POST"]),
            Route(f"{model}/rollout/promote", self.rollout_promote, methods=["POST"]),
            Route(f"{model}/rollout/abort", self.rollout_abort, methods=["POST"]),
            Route("/v2/drift", self.drift_reports, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
            Route("/v2/openapi.json", self.openapi, methods=["GET"]),
        ]


def build_http_app(dataplane: DataPlane, metrics: Metrics, max_body_bytes: int,
                   admission: Admission | None = None, limits: DecodeLimits = DEFAULT_LIMITS,
                   cors_origins: tuple[str, ...] = ()) -> Starlette:
    """The ASGI app serving the V2 HTTP API over `dataplane`; bodies over `max_body_bytes` get 413,
    inference requests pass `admission` (rate limits, body budget) and are decoded under `limits`.

    CORS is answered for `cors_origins` only; with none, browsers get no cross-origin access.
    """
    return Starlette(
        routes=HttpRoutes(dataplane, metrics, max_body_bytes, admission, limits).routes(),
        middleware=[*cors_middleware(cors_origins), Middleware(ErrorMiddleware)],
        exception_handlers=HTTP_EXCEPTION_HANDLERS,
    )
