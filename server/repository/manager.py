"""ModelManager: owns every model version's lifecycle (LOADING -> READY -> UNLOADING -> gone, or FAILED).

A broken model or version fails alone: its state and reason show in the repository index, the
others keep serving. Versions are swapped atomically: a new version takes traffic only once READY,
and a leaving version drains its queued and in-flight requests before its sessions are released.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from .._generated import model_config_pb2 as mc
from ..batching.batcher import DynamicBatcher
from ..errors import ModelLoadError, ModelNotFound, ModelNotReady, TesseraError
from ..executor.runner import OrtRunner
from ..executor.session import gpu_available, graph_tensors
from ..executor.warmup import warm_up
from ..metrics import Labels, Metrics
from ..settings import ServerSettings
from ..statistics import ModelStatistics
from .config import (
    DEFAULT_MODEL_FILENAME,
    build_spec,
    complete_config,
    parse_config_json,
    read_config,
    version_policy,
)
from .layout import list_models, list_versions, write_override_files
from .spec import ModelSpec

__all__ = ["IndexEntry", "ModelManager", "ModelMetadata", "ModelVersion", "TensorMetadata", "VersionState"]

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
    """One loaded (or failed) version; everything the hot path needs is precomputed here."""

    spec: ModelSpec
    runner: OrtRunner
    scheduler: DynamicBatcher
    stats: ModelStatistics
    metadata: ModelMetadata
    labels: Labels
    output_datatypes: dict[str, str]
    state: VersionState = VersionState.LOADING


@dataclass(slots=True)
class _Model:
    name: str
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    failures: dict[int, str] = field(default_factory=dict)  # version (-1: the model itself) -> reason
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    newest_ready: ModelVersion | None = None

    def refresh(self) -> None:
        ready = [v for n, v in sorted(self.versions.items()) if v.state is VersionState.READY]
        self.newest_ready = ready[-1] if ready else None


def _metadata(spec: ModelSpec, versions: list[str]) -> ModelMetadata:
    lead = [-1] if spec.batched else []
    return ModelMetadata(
        name=spec.name,
        versions=versions,
        platform=spec.platform,
        inputs=[TensorMetadata(t.name, t.datatype, [*lead, *t.dims]) for t in spec.inputs],
        outputs=[TensorMetadata(t.name, t.datatype, [*lead, *t.dims]) for t in spec.outputs],
    )


class ModelManager:
    """Loads, serves and unloads the models of one repository."""

    def __init__(self, repository: Path, settings: ServerSettings, metrics: Metrics) -> None:
        self.repository = repository
        self._settings = settings
        self._metrics = metrics
        self._models: dict[str, _Model] = {}
        self._gpu = gpu_available()

    # -- lookups on the hot path ---------------------------------------------------------------
    def get(self, name: str, version: str | None = None) -> ModelVersion:
        """The version to serve. Raises ModelNotFound or ModelNotReady with the reason."""
        model = self._models.get(name)
        if model is None:
            raise ModelNotFound(f"unknown model: '{name}'")
        if version is None:
            if model.newest_ready is None:
                raise ModelNotReady(f"model '{name}' has no ready version{self._why(model)}")
            return model.newest_ready
        try:
            number = int(version)
        except ValueError:
            raise ModelNotFound(f"unknown version '{version}' of model '{name}'") from None
        found = model.versions.get(number)
        if found is None:
            if number in model.failures:
                raise ModelNotReady(f"model '{name}' version {number} failed to load: {model.failures[number]}")
            raise ModelNotFound(f"unknown version '{version}' of model '{name}'")
        if found.state is not VersionState.READY:
            raise ModelNotReady(f"model '{name}' version {number} is {found.state.value}")
        return found

    @staticmethod
    def _why(model: _Model) -> str:
        return f" ({'; '.join(model.failures.values())})" if model.failures else ""

    def is_ready(self, name: str, version: str | None = None) -> bool:
        try:
            self.get(name, version)
        except TesseraError:
            return False
        return True

    def has_model(self, name: str) -> bool:
        return name in self._models

    def all_ready(self) -> bool:
        return all(v.state is VersionState.READY for m in self._models.values() for v in m.versions.values())

    def loaded_versions(self, name: str | None = None) -> list[ModelVersion]:
        models = [self._models[name]] if name else list(self._models.values())
        return [v for m in models for _, v in sorted(m.versions.items())]

    def index(self) -> list[IndexEntry]:
        entries = []
        for name in sorted(set(self._models) | set(list_models(self.repository))):
            model = self._models.get(name)
            if model is None:
                entries.append(IndexEntry(name, "", "UNAVAILABLE", "unloaded"))
                continue
            for number, mv in sorted(model.versions.items()):
                entries.append(IndexEntry(name, str(number), mv.state.value))
            for number, reason in sorted(model.failures.items()):
                entries.append(IndexEntry(name, "" if number < 0 else str(number), "FAILED", reason))
        return entries

    # -- lifecycle -----------------------------------------------------------------------------
    async def load_all(self, names: list[str] | None = None) -> None:
        """Load the named models (all in the repository when None)."""
        for name in names if names is not None else list_models(self.repository):
            try:
                await self.load(name)
            except ModelLoadError:
                pass  # recorded in the index, the log and the metric; the other models still load

    async def load(self, name: str, *, config_json: str | None = None, files: dict[str, bytes] | None = None
                   ) -> None:
        """Load or reload a model: bring its served versions to what the policy selects.

        Raises ModelLoadError when nothing of the model could be loaded; partial failures are in the index.
        """
        if files:
            write_override_files(self.repository, name, files)
        model = self._models.setdefault(name, _Model(name))
        async with model.lock:
            await self._sync(model, config_json)
        if model.failures and model.newest_ready is None:
            raise ModelLoadError(f"failed to load '{name}': {'; '.join(model.failures.values())}")

    async def unload(self, name: str) -> None:
        model = self._models.get(name)
        if model is None:
            raise ModelNotFound(f"unknown model: '{name}'")
        async with model.lock:
            await asyncio.gather(*(self._retire(model, n) for n in list(model.versions)))
            self._models.pop(name, None)

    async def stop(self) -> None:
        """Drain and release every version (graceful shutdown)."""
        await asyncio.gather(*(self.unload(name) for name in list(self._models)))

    async def _sync(self, model: _Model, config_json: str | None) -> None:
        model_dir = self.repository / model.name
        try:
            config = parse_config_json(config_json) if config_json else read_config(model_dir)
            available = list_versions(model_dir)
            if not available:
                raise ModelLoadError(f"model '{model.name}': no numeric version directory in {model_dir}")
        except ModelLoadError as exc:
            self._fail(model, -1, str(exc))
            return
        model.failures.pop(-1, None)
        wanted = version_policy(config).select(available)
        for number in wanted:
            await self._load_version(model, number, config)
        for number in [n for n in model.versions if n not in wanted]:
            await self._retire(model, number)
        for number in [n for n in model.failures if n >= 0 and n not in wanted]:
            model.failures.pop(number)

    async def _load_version(self, model: _Model, number: int, config: mc.ModelConfig) -> None:
        try:
            loaded = await self._build(model.name, number, config)
        except ModelLoadError as exc:
            self._fail(model, number, str(exc))
            return
        old = model.versions.get(number)
        model.versions[number] = loaded
        model.failures.pop(number, None)
        loaded.state = VersionState.READY
        self._metrics.model_state.labels(*loaded.labels).set(1)
        model.refresh()
        logger.info("model %s version %d READY", model.name, number)
        if old is not None:
            await self._drain(old)

    async def _build(self, name: str, number: int, config: mc.ModelConfig) -> ModelVersion:
        model_file = self.repository / name / str(number) / (config.default_model_filename or DEFAULT_MODEL_FILENAME)
        if not model_file.is_file():
            raise ModelLoadError(f"model '{name}' version {number}: missing model file {model_file}")
        inputs, outputs = await asyncio.to_thread(graph_tensors, str(model_file))
        completed = complete_config(config, name, inputs, outputs)
        spec = build_spec(completed, number, model_file, gpu_available=self._gpu,
                          intra_op_threads=self._settings.intra_op_threads,
                          allow_spinning=self._settings.allow_spinning)
        runner = await asyncio.to_thread(OrtRunner.create, spec)
        try:
            await warm_up(spec, runner)
        except ModelLoadError:
            await asyncio.to_thread(runner.close)
            raise
        labels = (name, str(number))
        stats = ModelStatistics(name, str(number))
        scheduler = DynamicBatcher(runner, spec, stats, self._metrics, labels)
        scheduler.start()
        return ModelVersion(
            spec=spec, runner=runner, scheduler=scheduler, stats=stats,
            metadata=_metadata(spec, [str(number)]), labels=labels,
            output_datatypes={t.name: t.datatype for t in spec.outputs},
        )

    def _fail(self, model: _Model, number: int, reason: str) -> None:
        model.failures[number] = reason
        self._metrics.model_load_failures.labels(model.name).inc()
        logger.error("model %s%s FAILED: %s", model.name, "" if number < 0 else f" version {number}", reason)

    async def _retire(self, model: _Model, number: int) -> None:
        mv = model.versions.get(number)
        if mv is None:
            return
        mv.state = VersionState.UNLOADING
        model.refresh()
        await self._drain(mv)
        model.versions.pop(number, None)
        model.refresh()
        logger.info("model %s version %d unloaded", model.name, number)

    async def _drain(self, mv: ModelVersion) -> None:
        mv.state = VersionState.UNLOADING
        self._metrics.model_state.labels(*mv.labels).set(0)
        await mv.scheduler.stop(self._settings.drain_timeout_s)
        await asyncio.to_thread(mv.runner.close)
