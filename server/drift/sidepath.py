"""The drift side path of one server process: the tap, its publisher, and the embedded monitor.

`DriftSidePath.create` picks the publisher: a Redis Stream when a Redis URL is configured, else the
in-process DriftMonitor, so `tessera serve` alone still exports drift scores.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from ..spec import ModelSpec
from .metrics import MonitorMetrics, TapMetrics
from .monitor import DriftMonitor, MonitorConfig
from .outputs import compare_versions
from .profiles import ProfileStore, config_feature_names
from .publishers import InProcessPublisher, Publisher, RedisStreamPublisher
from .reports import ReportBook
from .stats import FeatureKey
from .tap import DriftTap, TapConfig

__all__ = ["DriftSidePath", "spec_feature_names"]


def spec_feature_names(spec: ModelSpec) -> dict[FeatureKey, str]:
    """Feature names from a model's config parameters (`feature_names`, `feature_names.<input>`)."""
    return config_feature_names(spec.parameters, [t.name for t in spec.inputs])


class DriftSidePath:
    """Owns the tap (an InferenceObserver for DataPlane.add_observer) and what it publishes to."""

    def __init__(self, tap: DriftTap, publisher: Publisher, monitor: DriftMonitor | None) -> None:
        self.tap = tap
        self.publisher = publisher
        self.monitor = monitor

    @classmethod
    def create(cls, *, registry: CollectorRegistry, repository: Path | None, redis_url: str | None,
               tap_config: TapConfig | None = None, monitor_config: MonitorConfig | None = None,
               stream_maxlen: int = 1000, buffer_windows: int = 256,
               names: Callable[[str], Mapping[FeatureKey, str]] | None = None) -> DriftSidePath:
        """Build the side path; metrics go on `registry` (the server's). Starts nothing."""
        tap_config = tap_config or TapConfig()
        tap_metrics = TapMetrics(registry)
        monitor: DriftMonitor | None = None
        publisher: Publisher
        if redis_url:
            publisher = RedisStreamPublisher.from_url(redis_url, tap_metrics, maxlen=stream_maxlen,
                                                      buffer_windows=buffer_windows)
        else:
            bucket_s = tap_config.window_s if tap_config.window_s > 0 else 60.0
            config = monitor_config or MonitorConfig(bucket_s=bucket_s)
            monitor = DriftMonitor(config, ProfileStore(repository), ReportBook(MonitorMetrics(registry)))
            publisher = InProcessPublisher(monitor, tap_metrics)
        return cls(DriftTap(publisher, tap_metrics, tap_config, names=names), publisher, monitor)

    def compare_rollout_outputs(self, model: str, stable: int, candidate: int) -> dict[str, Any]:
        """The rollout status figure: the candidate's recent output distribution against the stable one's."""
        return compare_versions(self.tap.recent_outputs(model, str(stable)),
                                self.tap.recent_outputs(model, str(candidate)))

    async def start(self) -> None:
        """Start publishing, then folding (on the running loop)."""
        await self.publisher.start()
        await self.tap.start()

    async def stop(self) -> None:
        """Publish the open windows, then flush and close the publisher (bounded wait)."""
        await self.tap.stop()
        await self.publisher.stop()
