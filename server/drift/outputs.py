"""Prediction drift: a model version's outputs summarised like inputs, under the key `<model>:outputs:<version>`.

Model names cannot hold ':', so the key never meets a model's own. Each output column gets the same
mergeable statistics as an input column; a classifier-shaped output (float [rows, classes>1]) also
gets `<output>.class`, its argmax, whose frequencies are the class shares. The reference is the
profile `tessera profile --outputs` built from a scored table (`<model>:outputs`), or else the
recent windows of the model's other version with the most rows (the stable one, during a rollout).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from .evaluate import EvaluationConfig, evaluate
from .stats import DEFAULT_SKETCH_K, WindowSummary

__all__ = ["OUTPUTS", "build_output_profile", "compare_versions", "is_output_key", "output_key",
           "output_reference", "parse_output_key", "sibling_reference", "with_classes"]

OUTPUTS = "outputs"
_MARK = f":{OUTPUTS}"

Arrays = Mapping[str, npt.NDArray[Any]]


def output_key(model: str, version: str) -> str:
    """The statistics key of one model version's outputs."""
    return f"{model}{_MARK}:{version}"


def parse_output_key(key: str) -> tuple[str, str] | None:
    """(model, version) of an output key; None for a model's input key."""
    model, sep, rest = key.partition(_MARK + ":")
    return (model, rest) if sep and model and rest else None


def is_output_key(key: str) -> bool:
    return _MARK in key


def output_reference(key: str) -> str | None:
    """The profile name every version's outputs are compared with (`<model>:outputs`); None for inputs."""
    parsed = parse_output_key(key)
    if parsed is not None:
        return parsed[0] + _MARK
    return key if key.endswith(_MARK) else None


def with_classes(outputs: Arrays) -> dict[str, npt.NDArray[Any]]:
    """The outputs plus `<name>.class` (argmax) for each float [rows, classes>1] output."""
    found = dict(outputs)
    for name, array in outputs.items():
        if array.ndim == 2 and array.shape[1] > 1 and array.dtype.kind == "f" and array.shape[0]:
            found[f"{name}.class"] = np.asarray(array.argmax(axis=1), dtype=np.int64)
    return found


def sibling_reference(key: str, windows: Mapping[str, WindowSummary | None]) -> WindowSummary | None:
    """The reference for `key` when no profile exists: among `windows` (keys of any kind), the other
    version of the same model whose outputs hold the most rows."""
    parsed = parse_output_key(key)
    if parsed is None:
        return None
    best: WindowSummary | None = None
    for other, window in windows.items():
        found = parse_output_key(other)
        if window is None or other == key or found is None or found[0] != parsed[0]:
            continue
        if best is None or window.rows > best.rows:
            best = window
    return best


def compare_versions(stable: WindowSummary | None, candidate: WindowSummary | None,
                     config: EvaluationConfig | None = None) -> dict[str, Any]:
    """Candidate outputs against stable outputs, as a rollout status figure (JSON-ready)."""
    figure: dict[str, Any] = {"stable_rows": stable.rows if stable else 0,
                              "candidate_rows": candidate.rows if candidate else 0}
    if stable is None or candidate is None:
        figure["state"] = "insufficient_data"
        return figure
    report = evaluate(candidate, stable, config or EvaluationConfig(min_rows=200)).to_dict()
    figure["state"] = report["state"]
    figure["features"] = {name: {"state": f["state"], "measures": f["measures"]}
                          for name, f in report["features"].items()}
    return figure


def _matrix(column: pa.ChunkedArray) -> npt.NDArray[Any]:
    if pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type) \
            or pa.types.is_large_list(column.type):
        combined = column.combine_chunks()
        flat: npt.NDArray[Any] = combined.flatten().to_numpy(zero_copy_only=False)
        rows = len(combined)
        return flat.reshape(rows, -1) if rows else flat.reshape(0, 1)
    scalar: npt.NDArray[Any] = column.to_numpy()
    return scalar.reshape(-1, 1)  # a scalar column: a [rows, 1] output


def build_output_profile(model: str, data: Path, outputs: Iterable[str], *, batch_rows: int = 65536,
                         sketch_k: int = DEFAULT_SKETCH_K) -> WindowSummary:
    """The output reference of `model` from a scored Parquet table: a column per output (a list column for
    a [rows, k] output, a scalar column for a [rows] or [rows, 1] one). Raises ValueError when none is there."""
    parquet = pq.ParquetFile(data)
    present = [name for name in outputs if name in parquet.schema_arrow.names]
    if not present:
        raise ValueError(f"no column of {data.name} is named after an output of {model} ({', '.join(outputs)})")
    profile = WindowSummary(model=model + _MARK, window_id=f"profile:{data.name}", producer="tessera profile",
                            start_ms=0, end_ms=0, rows=0, windows=1, sketch_k=sketch_k)
    for batch in parquet.iter_batches(batch_size=batch_rows, columns=present):
        table = pa.Table.from_batches([batch])
        arrays = {name: _matrix(table.column(name)) for name in present}
        profile.fold_inputs(with_classes(arrays), batch.num_rows)
    return profile
