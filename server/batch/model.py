"""The model of a batch job, loaded as the server loads it: the repository (local or an fsspec URL),
config.pbtxt completed from the graph, the version policy, sessions per instance_group (OrtRunner).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..datatypes import V2_TO_NUMPY
from ..errors import ModelNotFound
from ..executor.runner import OrtRunner
from ..executor.session import gpu_available
from ..executor.warmup import warm_up
from ..names import check_model_name
from ..repository.fingerprint import DigestCache, fingerprint_model
from ..repository.source import read_source
from ..repository.store import is_remote, open_store
from ..repository.versions import version_spec
from ..spec import ModelSpec

__all__ = ["ModelRef", "ScoringModel", "load_spec"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelRef:
    """Which model to load and how; picklable, so Ray actors load from it too."""

    repository: str
    name: str
    version: int | None = None
    """None: the newest version the config's version policy serves."""

    storage_options: Mapping[str, Any] = field(default_factory=dict)
    intra_op_threads: int = 1


def load_spec(ref: ModelRef) -> tuple[ModelSpec, Any]:
    """The spec of the version to run, and the store holding its files (close it after loading).

    A remote repository is mirrored for this one model only. Blocking. Raises ModelNotFound or
    ModelLoadError naming the cause.
    """
    check_model_name(ref.name)
    if is_remote(ref.repository):
        store = open_store(f"{ref.repository.rstrip('/')}/{ref.name}", None, ref.storage_options)
        store.sync()
        directory = store.root
    else:
        store = open_store(ref.repository, None, {})
        directory = Path(store.root) / ref.name
    if not directory.is_dir():
        store.close()
        raise ModelNotFound(f"no model '{ref.name}' in repository {ref.repository}")
    source = read_source(ref.name, directory, fingerprint_model(directory, DigestCache()))
    served = source.policy.select(source.on_disk)
    number = ref.version if ref.version is not None else (served[-1] if served else None)
    if number is None or number not in source.on_disk:
        store.close()
        which = f"version {ref.version}" if ref.version is not None else "a version its policy serves"
        raise ModelNotFound(f"model '{ref.name}' has no {which} (on disk: {source.on_disk or 'none'})")
    if number not in served:
        logger.warning("model %s version %d is not served by its version policy; scoring it as asked",
                       ref.name, number)
    spec = version_spec(source, number, gpu_available=gpu_available(), intra_op_threads=ref.intra_op_threads,
                        allow_spinning=False)
    return spec, store


class ScoringModel:
    """One version's sessions (one per instance) and how a batch of rows is run on them.

    Batched models (max_batch_size > 0) take a whole batch per run, whatever max_batch_size says: that
    is a limit on online requests, and the graph's first dimension is dynamic (checked at load).
    Models with max_batch_size 0 take one row (one full tensor of the configured dims) per run.
    """

    def __init__(self, spec: ModelSpec, runner: OrtRunner) -> None:
        self.spec = spec
        self._runner = runner

    @classmethod
    def create(cls, spec: ModelSpec) -> ScoringModel:
        """Create the sessions of `spec` (its files must still be on disk). Blocking."""
        # Normal priority for the ORT threads: nothing here waits on the event loop but the pipeline,
        # and a lowered priority lets the reader and writer (and any other process) take compute's core.
        return cls(spec, OrtRunner.create(spec, yield_to_loop=False))

    @classmethod
    def load(cls, ref: ModelRef) -> ScoringModel:
        """Load the spec and the sessions. Blocking; a remote model's local mirror is removed after."""
        spec, store = load_spec(ref)
        try:
            return cls.create(spec)
        finally:
            store.close()

    @property
    def instances(self) -> int:
        return self._runner.instances

    async def warm_up(self) -> int:
        """Run the config's warmup (or one zero row) on every instance."""
        return await warm_up(self.spec, self._runner)

    async def score(self, feeds: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        """Outputs for `feeds` ([rows, *dims] each), [rows, *dims] each. At most `instances` calls in
        flight. Raises ExecutionFailed with ORT's message."""
        if self.spec.batched:
            return await self._runner.run(feeds)
        rows = len(next(iter(feeds.values())))
        results = [await self._runner.run({k: v[i] for k, v in feeds.items()}) for i in range(rows)]
        stacked = {}
        for out in self.spec.outputs:
            parts = [r[out.name] for r in results]
            stacked[out.name] = np.stack(parts) if parts else np.empty((0, *out.dims), V2_TO_NUMPY[out.datatype])
        return stacked

    def score_sync(self, feeds: dict[str, npt.NDArray[Any]], loop: asyncio.AbstractEventLoop
                   ) -> dict[str, npt.NDArray[Any]]:
        """`score` from synchronous code (a Ray actor) on that caller's own event loop."""
        return loop.run_until_complete(self.score(feeds))

    def close(self) -> None:
        self._runner.close()
