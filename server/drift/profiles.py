"""Reference profiles: built from training data in Parquet (streamed in record batches, so files
larger than memory work) with the same summaries and sketches as live windows; stored beside the
model (`<repository>/<model>/drift_profile.arrow`) or in Redis (`tessera:drift-profile:<model>`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from redis.asyncio import Redis

from .._generated import model_config_pb2 as mc
from .codec import decode_window, encode_window, read_profile_file
from .outputs import output_reference
from .stats import DEFAULT_SKETCH_K, FeatureKey, WindowSummary

__all__ = ["OUTPUT_PROFILE_FILENAME", "PROFILE_FILENAME", "ProfileStore", "build_profile", "config_feature_names",
           "input_widths", "profile_key", "profile_path", "store_profile_in_redis"]

logger = logging.getLogger(__name__)

PROFILE_FILENAME = "drift_profile.arrow"
OUTPUT_PROFILE_FILENAME = "drift_profile.outputs.arrow"


def profile_path(repository: Path, model: str) -> Path:
    """Where a model's profile lives: `<model>:outputs` (the output reference) beside the input one."""
    base, _, kind = model.partition(":")
    return repository / base / (OUTPUT_PROFILE_FILENAME if kind else PROFILE_FILENAME)


def profile_key(model: str) -> str:
    return f"tessera:drift-profile:{model}"


def input_widths(config: mc.ModelConfig) -> dict[str, int | None]:
    """Columns of each [batch, F] input (-1 if F is variable); None for inputs summarized whole."""
    widths: dict[str, int | None] = {}
    for tensor in config.input:
        dims = list(tensor.dims)
        full = [-1, *dims] if config.max_batch_size > 0 else dims
        widths[tensor.name] = int(full[1]) if len(full) == 2 else None
    return widths


def config_feature_names(parameters: Mapping[str, str], inputs: Sequence[str]) -> dict[FeatureKey, str]:
    """Feature names from the model config's parameters.

    `feature_names` ("age,income,...") names the columns of the first input;
    `feature_names.<input>` those of any input.
    """
    names: dict[FeatureKey, str] = {}
    for i, name in enumerate(inputs):
        text = parameters.get(f"feature_names.{name}")
        if text is None and i == 0:
            text = parameters.get("feature_names")
        for j, feature in enumerate(f.strip() for f in (text or "").split(",")):
            if feature:
                names[(name, j)] = feature
    return names


def _column_values(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray[Any, Any], int]:
    nulls = column.null_count
    if nulls:
        column = column.drop_null()
    return column.to_numpy(zero_copy_only=False), nulls


def _plain_keys(plain: list[str], target: str, names: Mapping[FeatureKey, str],
                width: int | None) -> dict[str, FeatureKey]:
    by_name = {n: key for key, n in names.items() if key[0] == target}
    if by_name:
        unknown = [c for c in plain if c not in by_name]
        if unknown:
            raise ValueError(f"columns {unknown} are not among input '{target}' feature_names")
        return {c: by_name[c] for c in plain}
    if width is not None and width >= 0 and width != len(plain):
        raise ValueError(f"input '{target}' has {width} columns but the data has {len(plain)} numeric "
                         f"columns ({', '.join(plain)}); choose them with --columns or --exclude")
    return {c: (target, j) for j, c in enumerate(plain)}


def build_profile(model: str, data: Path, *, widths: Mapping[str, int | None] | None = None,
                  names: Mapping[FeatureKey, str] | None = None, target_input: str | None = None,
                  columns: Sequence[str] | None = None, exclude: Sequence[str] = (),
                  batch_rows: int = 65536, sketch_k: int = DEFAULT_SKETCH_K) -> WindowSummary:
    """Summarize a Parquet file as a reference profile of `model`.

    A column named like an input feeds that input (a list column: one feature per element; a
    scalar column: the whole input). Other numeric columns are the columns of `target_input`
    (default: the one input no column is named after), matched by the config's feature names
    when it has them, else in file order. Raises ValueError when the mapping is ambiguous.
    """
    widths = dict(widths or {})
    names = dict(names or {})
    parquet = pq.ParquetFile(data)
    schema = parquet.schema_arrow
    chosen = [f for f in schema if (columns is None or f.name in columns) and f.name not in exclude]
    named = [f.name for f in chosen if f.name in widths]
    numeric = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean)
    plain = [f.name for f in chosen if f.name not in widths and any(t(f.type) for t in numeric)]
    skipped = [f.name for f in chosen if f.name not in widths and f.name not in plain]
    if skipped:
        logger.warning("profile of %s: skipping non-numeric columns %s", model, skipped)
    plain_keys: dict[str, FeatureKey] = {}
    if plain:
        free = [i for i in widths if i not in named]
        target = target_input or (free[0] if len(free) == 1 else None) or (None if widths else "input")
        if target is None:
            raise ValueError(f"model inputs {sorted(widths)}: say which one the columns feed with --input")
        plain_keys = _plain_keys(plain, target, names, widths.get(target))
    profile = WindowSummary(model=model, window_id=f"profile:{data.name}", producer="tessera profile",
                            start_ms=0, end_ms=int(time.time() * 1000), rows=0, windows=1,
                            names=names, sketch_k=sketch_k)
    for batch in parquet.iter_batches(batch_size=batch_rows, columns=named + plain):
        profile.rows += batch.num_rows
        for name in named:
            _fold_named(profile, name, batch.column(name), widths[name])
        for name, key in plain_keys.items():
            values, nulls = _column_values(batch.column(name))
            profile.fold_feature(key, values, nulls)
            profile.names.setdefault(key, name)
    return profile


def _fold_named(profile: WindowSummary, name: str, column: pa.Array, width: int | None) -> None:
    if not (pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type)):
        values, nulls = _column_values(column)
        profile.fold_feature((name, 0 if width == 1 else -1), values, nulls)
        return
    missing_rows = column.null_count
    if missing_rows:
        column = column.drop_null()
    flat = column.flatten().to_numpy(zero_copy_only=False)
    count = len(column)
    cols = width if width and width > 0 else (len(flat) // count if count else 0)
    if cols == 0 or len(flat) != cols * count:
        raise ValueError(f"column '{name}': every row must hold {cols or 'the same number of'} values")
    matrix = flat.reshape(count, cols)
    for j in range(cols):
        profile.fold_feature((name, j), np.ascontiguousarray(matrix[:, j]), missing_rows)


class ProfileStore:
    """Finds a model's reference profile in Redis, then beside the model; cached for `ttl_s` seconds."""

    def __init__(self, repository: Path | None = None, redis: Redis | None = None,
                 ttl_s: float = 30.0) -> None:
        self._repository = repository
        self._redis = redis
        self._ttl_s = ttl_s
        self._cache: dict[str, tuple[float, WindowSummary | None]] = {}

    def _cached(self, model: str) -> tuple[bool, WindowSummary | None]:
        hit = self._cache.get(model)
        if hit is not None and time.monotonic() - hit[0] < self._ttl_s:
            return True, hit[1]
        return False, None

    def get_local(self, model: str) -> WindowSummary | None:
        """The profile file beside the model (blocking file read; small and cached).

        A version's output key (`<model>:outputs:<v>`) finds the model's output profile."""
        model = output_reference(model) or model
        found, profile = self._cached(model)
        if not found:
            profile = self._read_file(model)
            self._cache[model] = (time.monotonic(), profile)
        return profile

    async def get(self, model: str) -> WindowSummary | None:
        model = output_reference(model) or model
        found, profile = self._cached(model)
        if found:
            return profile
        if self._redis is not None:
            payload = await self._redis.get(profile_key(model))
            if payload is not None:
                profile = decode_window(payload)
        if profile is None:
            profile = self._read_file(model)
        self._cache[model] = (time.monotonic(), profile)
        return profile

    def _read_file(self, model: str) -> WindowSummary | None:
        if self._repository is None:
            return None
        path = profile_path(self._repository, model)
        try:
            return read_profile_file(path) if path.exists() else None
        except (OSError, ValueError, pa.ArrowException) as exc:
            logger.error("cannot read drift profile %s: %s", path, exc)
            return None


async def store_profile_in_redis(redis: Redis, profile: WindowSummary) -> None:
    await redis.set(profile_key(profile.model), encode_window(profile))
