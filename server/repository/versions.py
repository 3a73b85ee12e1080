"""One model version: built (graph checked against the config, sessions created, warmed up) before it
is READY, and released (queue drained, sessions and thread pool freed) when it leaves.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import dataclasses
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from enum import Enum
from functools import partial

from .._generated import model_config_pb2 as mc
from ..batching.batcher import DynamicBatcher
from ..errors import InvalidInput, ModelLoadError
from ..executor.cpus import usable_cpus
from ..executor.runner import OrtRunner, default_inline_run_us
from ..executor.session import graph_tensors
from ..executor.warmup import warm_up
from ..metrics import Labels, Metrics
from ..model_statistics import ModelStatistics
from ..names import check_file_name
from ..settings import ServerSettings
from ..spec import ModelSpec
from .config import DEFAULT_MODEL_FILENAME, build_spec, complete_config, version_policy
from .source import ModelSource, VersionKey, with_policy

__all__ = [
    "IndexEntry",
    "ModelMetadata",
    "ModelVersion",
    "TensorMetadata",
    "VersionState",
    "build_version",
    "release_version",
    "version_spec",
]

logger = logging.getLogger(__name__)


class VersionState(Enum):
    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    FAILED = "FAILED"


@dataclass(frozen=True, slots=True)
class TensorMetadata:
    name: str
    datatype: str
    shape: list[int]


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


@dataclass(frozen=True, slots=True)
class IndexEntry:
    name: str
    version: str
    state: str
    reason: str = ""


@dataclass(slots=True, eq=False)
class ModelVersion:
    """One loaded version; everything the hot path needs is precomputed here."""

    spec: ModelSpec
    runner: OrtRunner
    batcher: DynamicBatcher
    stats: ModelStatistics
    metadata: ModelMetadata
    labels: Labels
    output_datatypes: dict[str, str]
    key: VersionKey
    state: VersionState = VersionState.LOADING

    @property
    def version(self) -> str:
        """The version as the wire names it ("1"); `spec.version` is the same number as an int."""
        return self.labels[1]

    def adopt_policy(self, config: mc.ModelConfig) -> None:
        """Take a new version policy without reloading (nothing the sessions use changed)."""
        updated = with_policy(self.spec.config, config)
        self.spec = dataclasses.replace(self.spec, config=updated, version_policy=version_policy(updated))


def _metadata(spec: ModelSpec) -> ModelMetadata:
    lead = [-1] if spec.batched else []
    return ModelMetadata(
        name=spec.name,
        versions=[str(spec.version)],
        platform=spec.platform,
        inputs=[TensorMetadata(t.name, t.datatype, [*lead, *t.dims]) for t in spec.inputs],
        outputs=[TensorMetadata(t.name, t.datatype, [*lead, *t.dims]) for t in spec.outputs],
    )


def version_spec(source: ModelSource, number: int, *, gpu_available: bool, intra_op_threads: int,
                 allow_spinning: bool) -> ModelSpec:
    """The completed, checked spec of one version on disk (reads its ONNX graph). Blocking.

    Shared by the server's loads and by `tessera batch`. Raises ModelLoadError naming the cause.
    """
    config = source.config
    filename = config.default_model_filename or DEFAULT_MODEL_FILENAME
    try:
        check_file_name(filename, "default_model_filename")
    except InvalidInput as exc:
        raise ModelLoadError(f"model '{source.name}': {exc.message}") from None
    model_file = source.directory / str(number) / filename
    if not model_file.is_file():
        raise ModelLoadError(f"model '{source.name}' version {number}: missing model file {number}/{filename}")
    inputs, outputs = graph_tensors(str(model_file))
    completed = complete_config(config, source.name, inputs, outputs)
    return build_spec(completed, number, model_file, gpu_available=gpu_available,
                      intra_op_threads=intra_op_threads, allow_spinning=allow_spinning)


async def _spec(source: ModelSource, number: int, settings: ServerSettings, gpu: bool, loader: Executor
                ) -> ModelSpec:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(loader, partial(
        version_spec, source, number, gpu_available=gpu, intra_op_threads=settings.intra_op_threads,
        allow_spinning=settings.allow_spinning))


async def build_version(source: ModelSource, number: int, settings: ServerSettings, metrics: Metrics,
                        gpu: bool, loader: Executor) -> ModelVersion:
    """Check, create and warm up one version; it comes back READY to take traffic.

    Blocking steps run on `loader`. Raises ModelLoadError naming the cause (missing or corrupt file,
    config that contradicts the graph, unsupported opset or field, failed warmup); nothing is left
    allocated then.
    """
    started = time.perf_counter()
    loop = asyncio.get_running_loop()
    spec = await _spec(source, number, settings, gpu, loader)
    inline_run_us = settings.inline_run_us
    if inline_run_us is None:  # each of --workers N event loops has its share of the CPUs to overlap runs with
        inline_run_us = default_inline_run_us(usable_cpus() / max(settings.workers, 1))
    runner = await loop.run_in_executor(loader, partial(OrtRunner.create, spec, inline_run_us=inline_run_us))
    try:
        runs = await warm_up(spec, runner)
    except BaseException:  # failed warmup, or a reload cancelled at shutdown: free the sessions
        await asyncio.shield(loop.run_in_executor(loader, _release_memory, runner))
        raise
    logger.info("model %s version %d warmed up: %d runs, loaded in %.0f ms; runs under %d us are made on the "
                "event loop", source.name, number, runs, (time.perf_counter() - started) * 1000,
                runner.inline_limit_us)
    labels = (source.name, str(number))
    metrics.warmup_runs.labels(*labels).inc(runs)
    stats = ModelStatistics(source.name, str(number))
    batcher = DynamicBatcher(runner, spec, stats, metrics, labels)
    batcher.start()
    return ModelVersion(
        spec=spec, runner=runner, batcher=batcher, stats=stats, metadata=_metadata(spec), labels=labels,
        output_datatypes={t.name: t.datatype for t in spec.outputs}, key=source.version_key(number),
        state=VersionState.READY,
    )


def _load_libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:  # pragma: no cover - no C library to load
        return None


_LIBC = _load_libc()


def _release_memory(runner: OrtRunner) -> None:
    runner.close()
    # glibc keeps freed arenas mapped; hand them back so an unloaded model's RSS really goes.
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)


async def release_version(version: ModelVersion, drain_timeout_s: float, loader: Executor) -> None:
    """Finish the version's queued and in-flight requests, then free its sessions and thread pool."""
    version.state = VersionState.UNLOADING
    await version.batcher.stop(drain_timeout_s)
    await asyncio.get_running_loop().run_in_executor(loader, _release_memory, version.runner)
