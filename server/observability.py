"""The observability side paths of one server process, built from ServerSettings: traces, request logs,
payload logs. App builds it, `start`s it (which switches the request-path hooks on) and `stop`s it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from . import observation
from .observation import Observability
from .settings import ServerSettings

if TYPE_CHECKING:
    from .dataplane import DataPlane
    from .payload_log import PayloadLog, PayloadPolicy
    from .repository.manager import ModelManager
    from .request_log import RequestLog
    from .tracing import Tracing

__all__ = ["ObservabilitySidePaths"]

logger = logging.getLogger(__name__)


class ObservabilitySidePaths:
    """Owns the tracer, the request log and the payload log (each None when off)."""

    def __init__(self, tracing: Tracing | None, request_log: RequestLog | None,
                 payload_log: PayloadLog | None) -> None:
        self.tracing = tracing
        self.request_log = request_log
        self.payload_log = payload_log
        self._observability = Observability(tracing, request_log, payload_log is not None)
        self._stopped = False

    @classmethod
    def create(cls, settings: ServerSettings, registry: CollectorRegistry, manager: ModelManager,
               dataplane: DataPlane) -> ObservabilitySidePaths:
        """Build what the settings switch on (importing OpenTelemetry only when tracing is on)."""
        tracing = request_log = payload_log = None
        if settings.tracing_enabled:
            from .tracing import Tracing

            tracing = Tracing.create(ratio=settings.trace_sample_ratio, parent_based=settings.trace_parent_based,
                                     protocol=settings.otel_exporter_protocol)
        if settings.request_log:
            from .request_log import RequestLog

            request_log = RequestLog(settings.request_log, sample_ratio=settings.request_log_sample_ratio,
                                     queue_size=settings.request_log_queue_size, registry=registry)
        if settings.payload_log:
            payload_log = _payload_log(settings, registry, manager)
            dataplane.add_observer(payload_log)
        return cls(tracing, request_log, payload_log)

    def start(self) -> None:
        """Start the writer threads and switch the request-path hooks on."""
        if self.request_log is not None:
            self.request_log.start()
        if self.payload_log is not None:
            self.payload_log.start()
        observation.install(self._observability)

    async def stop(self) -> None:
        """Switch the hooks off, then flush and stop each side path (off the event loop); once."""
        if self._stopped:
            return
        self._stopped = True
        observation.uninstall(self._observability)
        for part in (self.request_log, self.payload_log):
            if part is not None:
                await asyncio.to_thread(part.stop)
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)


def _payload_log(settings: ServerSettings, registry: CollectorRegistry, manager: ModelManager) -> PayloadLog:
    from .drift import spec_feature_names
    from .payload_log import ParquetSink, PayloadLog, PayloadSink, RedisSink, policy_from_parameters

    sink: PayloadSink
    if settings.payload_log == "redis":
        if not settings.redis_url:
            raise ValueError("payload_log 'redis' needs redis_url")
        sink = RedisSink(settings.redis_url, maxlen=settings.payload_log_stream_maxlen)
    elif settings.payload_log == "parquet":
        sink = ParquetSink(settings.payload_log_dir, rotate_rows=settings.payload_log_rotate_rows)
    else:
        raise ValueError(f"unknown payload_log sink {settings.payload_log!r}: use redis or parquet")

    def policy_of(model: str, version: str) -> PayloadPolicy | None:
        spec = manager.get(model, version).spec
        return policy_from_parameters(spec.parameters, spec_feature_names(spec))

    return PayloadLog(sink, policy_of, registry=registry, queue_size=settings.payload_log_queue_size)
