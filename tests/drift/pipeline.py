"""Helpers that run the real pieces: taps publishing to Redis, drift services draining streams."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy.typing as npt
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from server.drift.metrics import MonitorMetrics, TapMetrics
from server.drift.monitor import MonitorConfig
from server.drift.profiles import ProfileStore
from server.drift.publishers import RedisStreamPublisher
from server.drift.reports import ReportBook
from server.drift.service import DriftService, ServiceConfig
from server.drift.tap import DriftTap, TapConfig
from server.drift.webhook import WebhookNotifier

from .data import StepClock


class Producer:
    """One server process's drift side path: a DriftTap and a RedisStreamPublisher, own registry."""

    def __init__(self, redis_url: str, name: str, clock: StepClock, config: TapConfig, **publisher: Any) -> None:
        self.registry = CollectorRegistry()
        metrics = TapMetrics(self.registry)
        self.publisher = RedisStreamPublisher.from_url(redis_url, metrics, **publisher)
        self.tap = DriftTap(self.publisher, metrics, config, clock=clock, producer=name)

    async def __aenter__(self) -> Producer:
        await self.publisher.start()
        await self.tap.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.tap.stop()
        await self.publisher.stop()

    async def send(self, model: str, reqs: list[dict[str, npt.NDArray[Any]]]) -> None:
        for r in reqs:
            self.tap.observe(model, "1", r, {})
            await asyncio.sleep(0)

    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


def service(redis: Redis, *, sliding_buckets: int = 1, consumer: str = "test", profiles: ProfileStore | None = None,
            registry: CollectorRegistry | None = None, notifier: WebhookNotifier | None = None,
            **config: Any) -> tuple[DriftService, ReportBook]:
    """A drift service on 60 s buckets (the tests' StepClock moves in whole minutes)."""
    metrics = MonitorMetrics(registry or CollectorRegistry())
    reports = ReportBook(metrics)
    cfg = ServiceConfig(monitor=MonitorConfig(bucket_s=60, sliding_buckets=sliding_buckets), consumer=consumer,
                        block_ms=50, **config)
    return DriftService(redis, cfg, profiles or ProfileStore(), reports, metrics, notifier), reports


async def drain(svc: DriftService) -> None:
    """Step the service until two rounds in a row find nothing."""
    idle = 0
    while idle < 2:
        idle = idle + 1 if await svc.step() == 0 else 0
