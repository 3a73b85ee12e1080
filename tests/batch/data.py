"""Test data for tessera batch: Parquet files from numpy, and the model run in-process with ONNX Runtime
as the reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq

TABULAR_FEATURES = ("age", "income", "tenure", "balance", "products", "score", "active", "region")


def write_tabular(root: Path, *, files: int, rows: int, row_group_rows: int, seed: int = 0) -> list[Path]:
    """Files part-0.parquet...: id (int64, global order), ts (timestamp), the 8 features (float32;
    `income` as float64 and `products` as int64, as pandas would write them)."""
    rng = np.random.default_rng(seed)
    paths = []
    root.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        ids = np.arange(rows, dtype=np.int64) + f * rows
        columns: dict[str, Any] = {"id": ids,
                                   "ts": pa.array(ids * 1_000_000, pa.timestamp("us"))}
        for name in TABULAR_FEATURES:
            values = rng.standard_normal(rows).astype(np.float32)
            if name == "income":
                columns[name] = values.astype(np.float64)
            elif name == "products":
                columns[name] = rng.integers(0, 5, rows)
            else:
                columns[name] = values
        path = root / f"part-{f}.parquet"
        pq.write_table(pa.table(columns), path, row_group_size=row_group_rows)
        paths.append(path)
    return paths


def session(model_file: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(model_file), sess_options=options, providers=["CPUExecutionProvider"])


def features(table: pa.Table, names: tuple[str, ...] = TABULAR_FEATURES) -> np.ndarray:
    return np.column_stack([table.column(n).to_numpy().astype(np.float32) for n in names])


def read_dir(root: Path) -> dict[str, pa.Table]:
    """Every visible Parquet file below `root`, by relative name."""
    return {p.relative_to(root).as_posix(): pq.read_table(p) for p in sorted(root.rglob("*.parquet"))
            if not any(part.startswith((".", "_")) for part in p.relative_to(root).parts)}


def list_matrix(column: pa.ChunkedArray) -> np.ndarray:
    """A fixed-size list column as a [rows, width] matrix."""
    array = column.combine_chunks()
    return array.flatten().to_numpy().reshape(len(array), -1)
