"""Drift monitoring: mergeable feature statistics next to the model, shipped as aggregates only
(Redis Streams or in-process), compared with reference profiles by the drift service.
"""

from __future__ import annotations

from .evaluate import DriftReport, EvaluationConfig, Threshold, Thresholds
from .metrics import MonitorMetrics, TapMetrics
from .monitor import DriftMonitor, MonitorConfig
from .profiles import ProfileStore, build_profile
from .publishers import InProcessPublisher, Publisher, RedisStreamPublisher
from .reports import ReportBook
from .service import DriftService, ServiceConfig
from .sidepath import DriftSidePath, spec_feature_names
from .stats import FeatureSummary, WindowSummary
from .tap import DriftTap, TapConfig

__all__ = [
    "DriftMonitor",
    "DriftReport",
    "DriftService",
    "DriftSidePath",
    "DriftTap",
    "EvaluationConfig",
    "FeatureSummary",
    "InProcessPublisher",
    "MonitorConfig",
    "MonitorMetrics",
    "ProfileStore",
    "Publisher",
    "RedisStreamPublisher",
    "ReportBook",
    "ServiceConfig",
    "TapConfig",
    "TapMetrics",
    "Threshold",
    "Thresholds",
    "WindowSummary",
    "build_profile",
    "spec_feature_names",
]
