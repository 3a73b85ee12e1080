"""batching: the DynamicBatcher per model version, stacking and splitting, fair queue shares."""

from __future__ import annotations

from .fairness import QueueShare, current_share

__all__ = ["QueueShare", "current_share"]
