"""App: the composition root. Builds every part from ServerSettings, starts them in order, drains on stop.

One event loop serves both protocols; both share one batcher per model version, so gRPC and
HTTP requests batch together.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import grpc
import uvicorn
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from . import compiled
from .admission import Admission
from .audit import AuditLog
from .auth import Authorizer
from .background import cancel_remaining, spawn
from .dataplane import DataPlane
from .drift import DriftSidePath, TapConfig, spec_feature_names
from .grpc_api.credentials import server_credentials
from .grpc_api.h2 import H2Limits
from .grpc_api.rollout_service import SERVICE_NAME as ROLLOUT_SERVICE_NAME
from .grpc_api.rollout_service import RolloutService
from .grpc_api.rpc import Rpc, route_table
from .grpc_api.server import GrpcServer
from .grpc_api.service import SERVICE_NAME, InferenceService
from .http_api import build_http_app
from .http_api.connection import ConnectionLimits, guarded_protocol
from .http_api.security import TlsPeerProtocol
from .metrics import Metrics
from .observability import ObservabilitySidePaths
from .protocol.limits import DecodeLimits
from .repository.fleet_admin import FleetAdmin
from .repository.manager import ModelManager
from .repository.watcher import RepositoryWatcher
from .routing import build_rollout_controller, replica_name
from .settings import ServerSettings
from .tls import FileWatcher, ServerTlsContext, TlsFiles

__all__ = ["App"]

logger = logging.getLogger(__name__)

METRICS_FLUSH_INTERVAL_S = 1.0
"""Under `--workers N`, how stale another worker's request figures may be in a scrape."""


def tap_config(settings: ServerSettings) -> TapConfig:
    """The drift tap's settings; raises ValueError for values it cannot work with."""
    return TapConfig(window_s=settings.drift_window_s, window_rows=settings.drift_window_rows,
                     queue_size=settings.drift_queue_size, max_features=settings.drift_max_features,
                     cpu_budget=settings.drift_cpu_budget, models=frozenset(settings.drift_models) or None,
                     outputs=settings.drift_outputs)


def _bind(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class App:
    """A running Tessera server: model manager, DataPlane, gRPC and HTTP servers."""

    def __init__(self, settings: ServerSettings, metrics: Metrics | None = None) -> None:
        """Raises ValueError for settings that must not start (see ServerSettings.exposure_problem) and
        for malformed auth files, OSError for missing ones."""
        problem = settings.exposure_problem()
        if problem is not None:
            raise ValueError(problem)
        self.settings = settings
        self.tls = TlsFiles.from_settings(settings)
        self.authorizer = Authorizer(settings.auth_tokens_file, settings.auth_cert_identities_file)
        self.file_watcher = FileWatcher(settings.tls_reload_s)
        if self.authorizer.enabled:
            self.file_watcher.add(self.authorizer.refresh)
        self.metrics = metrics or Metrics(multiprocess_dir=settings.metrics_multiprocess_dir)
        self.manager = ModelManager(settings.model_repository, settings, self.metrics)
        self._watcher: RepositoryWatcher | None = None
        self.audit = AuditLog(settings.state_dir / "audit.jsonl")
        self.rollouts = build_rollout_controller(settings, self.manager, self.metrics, self.audit)
        self.dataplane = DataPlane(self.manager, self.metrics, admin_enabled=settings.allow_repository_admin,
                                   rollouts=self.rollouts, authorizer=self.authorizer, audit=self.audit,
                                   metrics_auth=settings.metrics_auth,
                                   replica=replica_name(settings))
        self.fleet_admin: FleetAdmin | None = None
        if settings.redis_url and settings.model_control_mode == "explicit":
            self.fleet_admin = FleetAdmin(self.manager, settings.redis_url, replica_name(settings),
                                          settings.fleet_admin_timeout_s)
            self.dataplane.set_fleet_admin(self.fleet_admin, self.fleet_admin.fleet_index)
        self.drift: DriftSidePath | None = None
        if settings.drift_enabled:
            self.drift = DriftSidePath.create(
                registry=self.metrics.registry, repository=self.manager.repository,
                redis_url=settings.redis_url,
                tap_config=tap_config(settings),
                stream_maxlen=settings.drift_stream_maxlen, buffer_windows=settings.drift_buffer_windows,
                names=lambda model: spec_feature_names(self.manager.get(model).spec))
            self.dataplane.add_observer(self.drift.tap)
            if self.drift.monitor is not None:
                self.dataplane.set_drift_reports(self.drift.monitor.latest_reports)
        self.admission = Admission(settings.body_budget_bytes, settings.rate_limit_rps, settings.rate_limit_burst)
        self.decode_limits = DecodeLimits(max_elements=settings.max_request_elements,
                                          max_bytes=settings.max_request_tensor_bytes,
                                          max_strings_per_row=settings.max_strings_per_row,
                                          off_loop_bytes=settings.decode_off_loop_bytes)
        self.observability = ObservabilitySidePaths.create(settings, self.metrics.registry, self.manager,
                                                           self.dataplane)
        if self.drift is not None and settings.drift_outputs:
            self.dataplane.set_output_comparison(self.drift.compare_rollout_outputs)
            self.rollouts.observe_shadow_outputs(self.drift.tap.observe_outputs)
        self._grpc: grpc.aio.Server | None = None
        self.grpc_server: GrpcServer | None = None  # ours, when settings.grpc_server == "ours"
        self._health = health.aio.HealthServicer()
        self._http: uvicorn.Server | None = None
        self._http_task: asyncio.Task[None] | None = None
        self.grpc_port = 0
        self.http_port = 0

    async def start(self) -> None:
        """Load models, then open both ports. Returns once both servers accept connections."""
        s = self.settings
        if s.model_control_mode == "explicit":  # only the --load-model names; the rest on request
            names = None if "*" in s.load_models else list(s.load_models)
            await self.manager.load_all(names)
        else:
            await self.manager.load_all()
        if s.model_control_mode == "poll":
            self._watcher = RepositoryWatcher(self.manager, s.repository_poll_secs)
            self._watcher.start()
        if self.fleet_admin is not None:
            await self.fleet_admin.start()
        await self.rollouts.start()
        if self.drift is not None:
            await self.drift.start()
        self.observability.start()
        if s.metrics_multiprocess_dir is not None:  # sibling workers' scrapes read this process's files
            spawn(self.metrics.flush_every(METRICS_FLUSH_INTERVAL_S), "metrics-flush")
        await self._start_grpc()
        await self._start_http()
        self.file_watcher.start()
        ready = [e for e in self.manager.index() if e.state == "READY"]
        logger.info("tessera listening: gRPC %s:%d, HTTP %s:%d; READY: %s; request path: %s", s.host, self.grpc_port,
                    s.host, self.http_port, ", ".join(f"{e.name}/{e.version}" for e in ready) or "none",
                    compiled.state())

    async def _start_grpc(self) -> None:
        s = self.settings
        if s.grpc_server == "ours":
            await self._start_our_grpc()
        else:
            await self._start_grpcio()
        for service in ("", SERVICE_NAME):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)

    async def _start_our_grpc(self) -> None:
        s = self.settings
        health_table = {"Check": Rpc("unary_unary", self._health.Check, health_pb2.HealthCheckRequest),
                        "Watch": Rpc("unary_stream", self._health.Watch, health_pb2.HealthCheckRequest)}
        inference = InferenceService(self.dataplane, self.admission, self.decode_limits, s.stream_queue_share)
        routes = route_table({SERVICE_NAME: inference.rpc_table(),
                              ROLLOUT_SERVICE_NAME: RolloutService(self.dataplane).rpc_table(),
                              "grpc.health.v1.Health": health_table})
        limits = H2Limits(max_concurrent_streams=s.grpc_max_concurrent_streams,
                          idle_timeout_s=s.grpc_max_connection_idle_s)
        context = None
        if self.tls is not None:  # one SSLContext (ALPN h2), reloaded in place when the files change
            tls = ServerTlsContext(self.tls, alpn=("h2",))
            self.file_watcher.add(tls.refresh)
            context = tls.context
        self.grpc_server = GrpcServer(routes, max_message_bytes=s.grpc_max_message_bytes, limits=limits,
                                      ssl_context=context, report=self.metrics.report_grpc_transport)
        self.grpc_port = await self.grpc_server.start(_bind(s.host, s.grpc_port, reuse_port=s.workers > 1))

    async def _start_grpcio(self) -> None:
        s = self.settings
        options = [
            ("grpc.max_receive_message_length", s.grpc_max_message_bytes),
            ("grpc.max_send_message_length", s.grpc_max_message_bytes),
            ("grpc.so_reuseport", 1 if s.workers > 1 else 0),
            # Idle connections go (GOAWAY). Keepalive pings stay policed as grpc-core does by default
            # (no pings without calls, at most one per 5 minutes without data, GOAWAY ENHANCE_YOUR_CALM
            # after 2 strikes): stated here so a change of library default cannot loosen them.
            ("grpc.max_connection_idle_ms", max(1, round(s.grpc_max_connection_idle_s * 1000))),
            ("grpc.keepalive_permit_without_calls", 0),
            ("grpc.http2.min_ping_interval_without_data_ms", 300_000),
            ("grpc.http2.max_ping_strikes", 2),
        ]
        server = grpc.aio.server(options=options)
        inference = InferenceService(self.dataplane, self.admission, self.decode_limits, s.stream_queue_share)
        server.add_generic_rpc_handlers((inference.handler(),
                                         RolloutService(self.dataplane).handler()))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        address = f"[{s.host}]:{s.grpc_port}" if ":" in s.host else f"{s.host}:{s.grpc_port}"
        if self.tls is None:
            self.grpc_port = server.add_insecure_port(address)
        else:
            self.grpc_port = server.add_secure_port(address, server_credentials(self.tls, s.tls_reload_s))
        await server.start()
        self._grpc = server

    async def _start_http(self) -> None:
        s = self.settings
        app = build_http_app(self.dataplane, self.metrics, s.http_max_body_bytes, self.admission,
                             self.decode_limits, s.cors_origins)
        base: type[HttpToolsProtocol] = HttpToolsProtocol
        ssl: dict[str, Any] = {}
        if self.tls is not None:  # one SSLContext, reloaded in place when the files change
            context = ServerTlsContext(self.tls)
            self.file_watcher.add(context.refresh)
            base = TlsPeerProtocol
            ssl = {"ssl_context_factory": lambda _config, _default: context.context}
        protocol = guarded_protocol(ConnectionLimits(s.http_header_timeout_s, s.http_body_timeout_s,
                                                     s.http_max_header_bytes), base)
        config = uvicorn.Config(app, http=protocol, **ssl, lifespan="off", access_log=False, log_config=None,
                                timeout_graceful_shutdown=max(1, round(s.drain_timeout_s)),
                                limit_concurrency=s.http_max_connections or None)
        self._http = uvicorn.Server(config)
        sock = _bind(s.host, s.http_port, reuse_port=s.workers > 1)
        self.http_port = sock.getsockname()[1]
        self._http_task = asyncio.create_task(self._http.serve(sockets=[sock]))
        while not self._http.started:
            if self._http_task.done():
                self._http_task.result()
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Graceful drain: stop taking requests, finish the accepted ones, release the models."""
        try:
            self.dataplane.accepting = False
            for service in ("", SERVICE_NAME):
                await self._health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
            if self._http is not None and self._http_task is not None:
                self._http.should_exit = True
                await self._http_task
            if self._grpc is not None:
                await self._grpc.stop(self.settings.drain_timeout_s)
            if self.grpc_server is not None:
                await self.grpc_server.stop(self.settings.drain_timeout_s)
            if self._watcher is not None:
                await self._watcher.stop()
            await self.file_watcher.stop()
            if self.fleet_admin is not None:
                await self.fleet_admin.stop()
            await self.rollouts.stop()
            if self.drift is not None:
                await self.drift.stop()
            await self.observability.stop()
            await self.manager.stop()
            await self.audit.flush()
            await cancel_remaining()  # whatever a stopped part left running
        finally:
            self.metrics.flush()  # the last requests' figures, for a scrape after this worker ends
        logger.info("tessera stopped")
