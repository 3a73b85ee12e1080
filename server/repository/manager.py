"""ModelManager: owns every model version's lifecycle (LOADING -> READY -> UNLOADING -> gone, or FAILED).

Loading a model reconciles what serves with what the repository holds: new or changed versions are
built beside the serving ones and swapped in atomically once READY; versions that leave drain their
queued and in-flight requests first. A failure marks only what failed: whatever already serves keeps
serving, and the reason shows in the index, the log and `tessera_model_load_failures`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InvalidInput, ModelLoadError, ModelNotFound, ModelNotReady, TesseraError, Unsupported
from ..executor.session import gpu_available
from ..metrics import Metrics
from ..names import check_model_name, check_version
from ..settings import ServerSettings
from .config import parse_config_json
from .fingerprint import DigestCache, ModelFingerprint, fingerprint_model, scan_repository
from .layout import list_models
from .overrides import OverrideArea
from .source import ModelSource, VersionKey, read_source
from .store import open_store
from .versions import (
    IndexEntry,
    ModelMetadata,
    ModelVersion,
    TensorMetadata,
    VersionState,
    build_version,
    release_version,
)

__all__ = ["IndexEntry", "ModelManager", "ModelMetadata", "ModelVersion", "TensorMetadata", "VersionState"]

logger = logging.getLogger(__name__)

MODEL_LEVEL = -1  # key in `failures` for what fails the whole model (its config, its directory)


@dataclass(slots=True)
class _Model:
    name: str
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    loading: set[int] = field(default_factory=set)
    failures: dict[int, str] = field(default_factory=dict)
    failed_keys: dict[int, VersionKey] = field(default_factory=dict)  # what each failed version was
    retired: set[int] = field(default_factory=set)  # unloaded by the policy, still on disk
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    newest_ready: ModelVersion | None = None
    fingerprint: ModelFingerprint | None = None  # what the last load attempt saw
    directory: Path | None = None

    def refresh(self) -> None:
        ready = [v for _, v in sorted(self.versions.items()) if v.state is VersionState.READY]
        self.newest_ready = ready[-1] if ready else None

    def serving(self, number: int) -> bool:
        found = self.versions.get(number)
        return found is not None and found.state is VersionState.READY


class ModelManager:
    """Loads, serves, reloads and unloads the models of one repository (local or mirrored)."""

    def __init__(self, repository: Path | str, settings: ServerSettings, metrics: Metrics) -> None:
        self._store = open_store(str(repository), settings.repository_cache_dir,
                                 settings.repository_storage_options)
        self.repository = self._store.root
        self._settings = settings
        self._metrics = metrics
        self._models: dict[str, _Model] = {}
        self._unloaded: dict[str, list[int]] = {}
        self._digests = DigestCache()
        self._overrides = OverrideArea(settings.repository_cache_dir)
        self._previous_scan: dict[str, ModelFingerprint] = {}
        self._gpu = gpu_available()
        # Sessions are created and destroyed on this one thread, not on asyncio.to_thread's pool: their
        # memory then lives in one malloc arena and is reused, so RSS does not grow with reloads, and
        # concurrent reloads cannot stack their peak memory.
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-loader")

    # -- lookups on the hot path ---------------------------------------------------------------
    def get(self, name: str, version: str | None = None) -> ModelVersion:
        """The version to serve. Raises ModelNotFound or ModelNotReady with the reason."""
        model = self._models.get(name)
        if model is None:
            raise ModelNotFound(f"unknown model: '{check_model_name(name)}'")
        if version is None:
            if model.newest_ready is None:
                raise ModelNotReady(f"model '{name}' has no ready version{self._why(model)}")
            return model.newest_ready
        number = check_version(version)
        found = model.versions.get(number)
        if found is None:
            if number in model.failures:
                raise ModelNotReady(f"model '{name}' version {number} failed to load: {model.failures[number]}")
            if number in model.loading:
                raise ModelNotReady(f"model '{name}' version {number} is LOADING")
            if number in model.retired:
                raise ModelNotReady(f"model '{name}' version {number} is UNAVAILABLE: not selected by its "
                                    "version policy")
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
        """Every model with loaded versions has one READY (a swap in progress does not count against it)."""
        return all(m.newest_ready is not None for m in self._models.values() if m.versions)

    def loaded_versions(self, name: str | None = None) -> list[ModelVersion]:
        models = [self._models[name]] if name else list(self._models.values())
        return [v for m in models for _, v in sorted(m.versions.items())]

    def index(self) -> list[IndexEntry]:
        """Triton's repository index: every model in the repository or loaded, per version."""
        entries: list[IndexEntry] = []
        for name in sorted(set(self._models) | set(self._unloaded) | set(list_models(self.repository))):
            model = self._models.get(name)
            if model is not None:
                entries.extend(self._entries(model))
            elif name in self._unloaded:
                entries.extend(IndexEntry(name, str(n), "UNAVAILABLE", "unloaded") for n in self._unloaded[name])
            else:
                entries.append(IndexEntry(name, "", "", ""))  # never loaded: Triton lists it bare
        return entries

    @staticmethod
    def _entries(model: _Model) -> list[IndexEntry]:
        entries = []
        if MODEL_LEVEL in model.failures:
            entries.append(IndexEntry(model.name, "", "FAILED", model.failures[MODEL_LEVEL]))
        numbers = set(model.versions) | model.loading | model.retired | set(model.failures) - {MODEL_LEVEL}
        for number in sorted(numbers):
            mv, reason = model.versions.get(number), model.failures.get(number, "")
            if mv is not None:  # a failed reload leaves the loaded version serving: say why it is old
                entries.append(IndexEntry(model.name, str(number), mv.state.value,
                                          f"reload failed: {reason}" if reason else ""))
            elif number in model.loading:
                entries.append(IndexEntry(model.name, str(number), VersionState.LOADING.value))
            elif reason:
                entries.append(IndexEntry(model.name, str(number), VersionState.FAILED.value, reason))
            else:
                entries.append(IndexEntry(model.name, str(number), "UNAVAILABLE", "unloaded"))
        return entries or [IndexEntry(model.name, "", "UNAVAILABLE", "no version selected by the version policy")]

    # -- control -------------------------------------------------------------------------------
    async def load_all(self, names: list[str] | None = None) -> None:
        """Mirror the repository if remote, then load the named models (all when None).

        A model that fails is recorded (index, log, metric); the others still load.
        """
        await asyncio.to_thread(self._store.sync)
        for name in names if names is not None else list_models(self.repository):
            try:
                await self._load(name, self.repository / name, None, retry_failed=True)
            except ModelLoadError:
                pass
            except ModelNotFound as exc:
                logger.error("%s", exc)

    def _check_control(self) -> None:
        if self._settings.model_control_mode == "poll":
            raise Unsupported("repository load/unload is not available in poll mode: the repository "
                              "watcher owns the models (use --model-control-mode explicit)")

    async def load(self, name: str, *, config_json: str | None = None, files: dict[str, bytes] | None = None
                   ) -> None:
        """Load or reload a model (the repository extension's load), optionally with an inline config
        (JSON) and `file:<version>/<path>` contents, which are written to a temporary directory.

        Only what changed is reloaded; a failed reload leaves the serving versions unchanged.
        Raises ModelNotFound, InvalidInput, Unsupported (poll mode), or ModelLoadError with the reasons.
        """
        self._check_control()
        check_model_name(name)
        if files:
            if config_json is None:
                raise InvalidInput("model load request: file overrides need the 'config' parameter too")
            config = parse_config_json(config_json)
            directory = await asyncio.to_thread(self._overrides.create, name, config, files)
            try:
                await self._load(name, directory, None, retry_failed=True)
            except BaseException:
                # Nothing of a failed load stays on disk. Versions it did load keep serving: a session
                # holds its graph in memory and never reads the files again.
                await asyncio.to_thread(self._overrides.discard, directory)
                raise
            return
        await asyncio.to_thread(self._store.sync)
        await self._load(name, self.repository / name, config_json, retry_failed=True)

    async def _load(self, name: str, directory: Path, config_json: str | None, *, retry_failed: bool) -> None:
        if not directory.is_dir():
            raise ModelNotFound(f"unknown model: '{name}' is not in the model repository")
        while True:
            model = self._models.setdefault(name, _Model(name))
            self._unloaded.pop(name, None)
            async with model.lock:
                if self._models.get(name) is not model:
                    continue  # unloaded while this load waited for the lock: start again
                errors = await self._reconcile(model, directory, config_json, retry_failed)
                break
        if errors:
            raise ModelLoadError(f"failed to load '{name}': {'; '.join(errors)}")

    async def unload(self, name: str) -> None:
        """Drain and release every version of a model. Unloading a model that is not loaded but
        is in the repository succeeds, as in Triton. Raises ModelNotFound, Unsupported (poll mode)."""
        self._check_control()
        check_model_name(name)
        model = self._models.get(name)
        if model is None:
            if name in self._unloaded or (self.repository / name).is_dir():
                return
            raise ModelNotFound(f"unknown model: '{name}'")
        await self._unload(model)

    async def _unload(self, model: _Model) -> None:
        async with model.lock:
            numbers = sorted(model.versions)
            await asyncio.gather(*(self._retire(model, n) for n in numbers))
            if self._models.get(model.name) is model:
                del self._models[model.name]
            self._unloaded[model.name] = numbers
            if model.directory is not None:
                await asyncio.to_thread(self._overrides.discard, model.directory)
        logger.info("model %s unloaded", model.name)

    async def poll(self) -> None:
        """One look at the repository (poll mode): load added models, reload changed ones, unload removed
        ones. A change is acted on once two scans in a row agree, so a file still being copied in is
        not loaded half-written. The scan runs on a worker thread and only stats files."""
        try:
            await asyncio.to_thread(self._store.sync)
        except Exception:
            logger.exception("model repository: sync failed; serving the last synced copy")
        scan = await asyncio.to_thread(scan_repository, self.repository, self._digests)
        previous, self._previous_scan = self._previous_scan, scan
        for name, fingerprint in scan.items():
            model = self._models.get(name)
            if (model is not None and model.fingerprint == fingerprint) or previous.get(name) != fingerprint:
                continue
            with contextlib.suppress(ModelLoadError, ModelNotFound):  # recorded: index, log, metric
                await self._load(name, self.repository / name, None, retry_failed=False)
        for name in [n for n in self._models if n not in scan and n not in previous]:
            await self._unload(self._models[name])

    async def stop(self) -> None:
        """Drain and release every version (graceful shutdown), then drop temporary directories."""
        await asyncio.gather(*(self._unload(m) for m in list(self._models.values())))
        await asyncio.to_thread(self._overrides.close)
        await asyncio.to_thread(self._store.close)
        self._loader.shutdown(wait=False)

    # -- reconciliation (under the model's lock) -----------------------------------------------
    async def _reconcile(self, model: _Model, directory: Path, config_json: str | None, retry_failed: bool
                         ) -> list[str]:
        """Bring the model's serving versions to what `directory` and its policy select.

        A version that failed is tried again when its files or config changed, or when `retry_failed`
        (an explicit load). Returns the reasons of what failed in this attempt (already recorded).
        """
        previous_directory, model.directory = model.directory, directory
        fingerprint = await asyncio.to_thread(fingerprint_model, directory, self._digests)
        model.fingerprint = fingerprint
        try:
            source = await asyncio.to_thread(read_source, model.name, directory, fingerprint, config_json)
        except ModelLoadError as exc:
            return [self._fail(model, MODEL_LEVEL, str(exc))]
        model.failures.pop(MODEL_LEVEL, None)
        errors = []
        if not source.on_disk:
            errors.append(self._fail(model, MODEL_LEVEL, f"model '{model.name}': no version directory"))
        wanted = source.policy.select(source.on_disk)
        for number in wanted:
            errors.extend(await self._refresh(model, number, source, retry_failed))
        # A wanted version that failed keeps an older one serving in its place: a failed load never
        # takes capacity away. Fallbacks pick up config changes too (or keep serving as they are).
        shortfall = sum(1 for n in wanted if not model.serving(n))
        fallback = [n for n in sorted(model.versions, reverse=True)
                    if n not in wanted and model.serving(n)][:shortfall]
        for number in fallback:
            if number in fingerprint.versions:  # else it keeps serving as loaded: its files are gone
                errors.extend(await self._refresh(model, number, source, retry_failed))
        keep = set(wanted) | set(fallback)
        leaving = [n for n in model.versions if n not in keep]
        for number in [n for n in model.failures if n != MODEL_LEVEL and n not in keep]:
            del model.failures[number]
            model.failed_keys.pop(number, None)
        await asyncio.gather(*(self._retire(model, n) for n in leaving))
        model.retired = {n for n in model.retired | set(leaving) if n in fingerprint.versions and n not in keep}
        if previous_directory is not None and previous_directory != directory:
            await asyncio.to_thread(self._overrides.discard, previous_directory)
        return errors

    async def _refresh(self, model: _Model, number: int, source: ModelSource, retry_failed: bool
                       ) -> list[str]:
        """Load `number` unless the loaded one is current; swap atomically; drain the one it replaces."""
        key = source.version_key(number)
        current = model.versions.get(number)
        if current is not None and current.state is VersionState.READY and current.key == key:
            current.adopt_policy(source.config)
            model.failures.pop(number, None)
            return []
        if not retry_failed and number in model.failures and model.failed_keys.get(number) == key:
            return []  # failed as it is now: tried again once it changes
        model.loading.add(number)
        try:
            loaded = await build_version(source, number, self._settings, self._metrics, self._gpu, self._loader)
        except Exception as exc:  # one version's failure, whatever it is, must not take others down
            if not isinstance(exc, ModelLoadError):
                logger.exception("model %s version %d: unexpected error while loading", model.name, number)
            model.failed_keys[number] = key
            return [self._fail(model, number, str(exc))]
        finally:
            model.loading.discard(number)
        model.versions[number] = loaded
        model.failures.pop(number, None)
        model.failed_keys.pop(number, None)
        model.retired.discard(number)
        model.refresh()
        self._metrics.model_state.labels(*loaded.labels).set(1)
        logger.info("model %s version %d READY%s", model.name, number, " (reloaded)" if current else "")
        if current is not None:
            await self._release(current)
        return []

    def _fail(self, model: _Model, number: int, reason: str) -> str:
        if model.directory is not None:  # clients see the model, never where the server keeps it
            for path in {str(model.directory.resolve()), str(model.directory)}:
                reason = reason.replace(path, model.name)
        model.failures[number] = reason
        self._metrics.model_load_failures.labels(model.name).inc()
        logger.error("model %s%s FAILED: %s", model.name, "" if number < 0 else f" version {number}", reason)
        return reason

    async def _retire(self, model: _Model, number: int) -> None:
        mv = model.versions.get(number)
        if mv is None:
            return
        mv.state = VersionState.UNLOADING
        model.refresh()
        await self._release(mv)
        if model.versions.get(number) is mv:
            del model.versions[number]
        model.refresh()
        logger.info("model %s version %d unloaded", model.name, number)

    async def _release(self, mv: ModelVersion) -> None:
        self._metrics.model_state.labels(*mv.labels).set(0)
        await release_version(mv, self._settings.drain_timeout_s, self._loader)
