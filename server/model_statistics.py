"""Per-version inference statistics with Triton's fields (the statistics extension).

Updated on the event loop only (by the batcher and the dataplane), so no locks.
Durations are nanoseconds, times since the epoch are milliseconds, as the protocol has them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

__all__ = ["BatchStatistics", "Duration", "ModelStatistics"]


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass(slots=True)
class BatchStatistics:
    batch_size: int
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class ModelStatistics:
    """Cumulative statistics of one model version since it was loaded."""

    name: str
    version: str
    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, BatchStatistics] = field(default_factory=dict)

    def record_success(self, rows: int, total_ns: int, queue_ns: int) -> None:
        self.success.add(total_ns)
        self.queue.add(queue_ns)
        self.inference_count += rows
        self.last_inference_ms = time.time_ns() // 1_000_000

    def record_failure(self, total_ns: int) -> None:
        self.fail.add(total_ns)

    def record_execution(self, batch_size: int, requests: int, input_ns: int, infer_ns: int,
                         output_ns: int) -> None:
        """One model execution of `batch_size` rows that served `requests` requests."""
        self.execution_count += 1
        # Triton counts compute durations once per request in the batch.
        self.compute_input.add(input_ns * requests, requests)
        self.compute_infer.add(infer_ns * requests, requests)
        self.compute_output.add(output_ns * requests, requests)
        stats = self.batches.get(batch_size)
        if stats is None:
            stats = self.batches[batch_size] = BatchStatistics(batch_size)
        stats.compute_input.add(input_ns)
        stats.compute_infer.add(infer_ns)
        stats.compute_output.add(output_ns)
