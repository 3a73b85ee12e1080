"""A batch job's settings (parsed once from the command line) and its result."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .model import ModelRef

__all__ = ["BatchJob", "BatchResult"]


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchJob:
    model: ModelRef
    input: str
    """A Parquet file, a directory, a glob, or an fsspec URL of one of these."""

    output: str
    """A directory (local or fsspec URL): one Parquet file per input file, plus the manifest."""

    input_name: str | None = None
    columns: tuple[str, ...] | None = None
    keep: tuple[str, ...] = ()
    batch_rows: int = 4096
    """Rows per model run (fewer at row-group ends)."""

    engine: str = "local"
    ray_address: str | None = None
    ray_actors: int | None = None
    """Actors in the Ray engine's pool (None: the cluster's CPUs less one, at least one)."""

    on_error: str = "fail"
    """fail: a row that cannot be scored stops the run; skip: it goes to the rejects files."""

    storage_options: dict[str, Any] = field(default_factory=dict)
    """fsspec options for remote input, output and repository."""

    queue_batches: int = 4
    """Batches read but not yet written, beyond one per instance (the pipeline's memory bound)."""

    progress: bool | None = None
    """None: a bar on a terminal, plain lines otherwise; False: quiet."""

    def identity(self, version: int, input_location: str, plan: list[str]) -> dict[str, Any]:
        """What a resumed run must share with the run that started the output."""
        return {"model": self.model.name, "version": version, "input": input_location, "inputs": plan,
                "keep": list(self.keep), "on_error": self.on_error}


@dataclass(slots=True)
class BatchResult:
    rows: int = 0
    scored: int = 0
    rejected: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    files_done: int = 0
    files_skipped: int = 0
    """Already complete in the manifest when the run started."""

    seconds: float = 0.0
    cpu_seconds: float = 0.0
    """CPU time of the whole process (every thread) over `seconds`."""

    def summary(self, output: str) -> str:
        rate = self.rows / self.seconds if self.seconds > 0 else 0.0
        lines = [f"tessera batch: {self.scored:,} rows scored, {self.rejected:,} rejected, "
                 f"{self.files_done} files written ({self.files_skipped} already done) in {self.seconds:.1f} s "
                 f"({rate:,.0f} rows/s, {self.cpu_seconds:.2f} CPU-s) -> {output}"]
        lines += [f"  rejected: {count:,} x {reason}" for reason, count in self.reasons.most_common()]
        return "\n".join(lines)
