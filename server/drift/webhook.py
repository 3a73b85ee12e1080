"""POST drift alert transitions to a webhook: JSON, off the event loop, failures logged and counted."""

from __future__ import annotations

import asyncio
import logging
import urllib.request

import orjson

from .metrics import MonitorMetrics
from .reports import Transition

__all__ = ["WebhookNotifier"]

logger = logging.getLogger(__name__)


class WebhookNotifier:
    """Sends `{"alerts": [transition, ...]}` to `url`; never raises."""

    def __init__(self, url: str, metrics: MonitorMetrics, timeout_s: float = 5.0) -> None:
        self._url = url
        self._metrics = metrics
        self._timeout_s = timeout_s

    async def notify(self, transitions: list[Transition]) -> None:
        if not transitions:
            return
        body = orjson.dumps({"alerts": transitions})
        try:
            await asyncio.to_thread(self._post, body)
        except Exception as exc:  # a broken webhook must never stop drift evaluation
            self._metrics.webhook_failures.inc()
            logger.warning("drift webhook %s failed: %s", self._url, exc)

    def _post(self, body: bytes) -> None:
        request = urllib.request.Request(self._url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=self._timeout_s) as response:
            response.read()
