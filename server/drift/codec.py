"""Arrow IPC encoding of a WindowSummary: one record batch, one row per feature, sketches as binary.

The same bytes travel on the Redis Stream, sit in the drift service's bucket state, and (in the
Arrow IPC file format) make a reference profile. Only aggregates are encoded, never raw values.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

import pyarrow as pa
from datasketches import kll_floats_sketch

from .stats import FeatureKey, FeatureSummary, WindowSummary

__all__ = ["FORMAT_VERSION", "decode_window", "encode_window", "encode_window_steps", "read_profile_file",
           "write_profile_file"]

FORMAT_VERSION = "1"

_SCHEMA = pa.schema([
    ("input", pa.string()),
    ("column", pa.int32()),
    ("name", pa.string()),
    ("kind", pa.string()),
    ("count", pa.int64()),
    ("missing", pa.int64()),
    ("mean", pa.float64()),
    ("m2", pa.float64()),
    ("min", pa.float64()),
    ("max", pa.float64()),
    ("sketch", pa.binary()),
    ("categories", pa.list_(pa.int64())),
    ("frequencies", pa.list_(pa.int64())),
    ("other", pa.int64()),
])

_META_INT = ("start_ms", "end_ms", "rows", "windows", "sketch_k", "max_categories")


def _empty_columns() -> dict[str, list[Any]]:
    return {name: [] for name in _SCHEMA.names}


def _append_features(columns: dict[str, list[Any]], window: WindowSummary, keys: list[FeatureKey]) -> None:
    """One row per feature, appended to the column lists (the per-feature Python work of encoding)."""
    for key in keys:
        f = window.features[key]
        categories = None if f.frequencies is None else sorted(f.frequencies)
        columns["input"].append(key[0])
        columns["column"].append(key[1])
        columns["name"].append(window.name_of(key))
        columns["kind"].append(f.kind)
        columns["count"].append(f.count)
        columns["missing"].append(f.missing)
        columns["mean"].append(f.mean)
        columns["m2"].append(f.m2)
        columns["min"].append(f.min)
        columns["max"].append(f.max)
        columns["sketch"].append(f.sketch.serialize())
        columns["categories"].append(categories)
        columns["frequencies"].append(None if f.frequencies is None else [f.frequencies[c] for c in categories or ()])
        columns["other"].append(f.other)


def _schema(window: WindowSummary) -> pa.Schema:
    meta = {"format": FORMAT_VERSION, "model": window.model, "window_id": window.window_id,
            "producer": window.producer}
    meta.update({name: str(getattr(window, name)) for name in _META_INT})
    return _SCHEMA.with_metadata(meta)


def _features_batch(window: WindowSummary, keys: list[FeatureKey], schema: pa.Schema) -> pa.RecordBatch:
    columns = _empty_columns()
    _append_features(columns, window, keys)
    return pa.RecordBatch.from_pydict(columns, schema=schema)


def _record_batch(window: WindowSummary) -> pa.RecordBatch:
    return _features_batch(window, sorted(window.features), _schema(window))


def _one_batch(batches: list[pa.RecordBatch], schema: pa.Schema) -> pa.RecordBatch:
    """The batches as one (the wire format is a single record batch); a copy of the column buffers."""
    combined = pa.Table.from_batches(batches, schema=schema).combine_chunks().to_batches()
    return combined[0] if combined else pa.RecordBatch.from_pydict(_empty_columns(), schema=schema)


def _from_record_batch(batch: pa.RecordBatch) -> WindowSummary:
    meta = {k.decode(): v.decode() for k, v in (batch.schema.metadata or {}).items()}
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"unsupported drift summary format {meta.get('format')!r}")
    window = WindowSummary(model=meta["model"], window_id=meta["window_id"], producer=meta["producer"],
                           start_ms=0, end_ms=0)
    for name in _META_INT:
        setattr(window, name, int(meta[name]))
    rows = batch.to_pylist()
    for row in rows:
        key = (str(row["input"]), int(row["column"]))
        cats, freqs = row["categories"], row["frequencies"]
        window.features[key] = FeatureSummary(
            kind=row["kind"], count=row["count"], missing=row["missing"], mean=row["mean"], m2=row["m2"],
            min=row["min"], max=row["max"], sketch=kll_floats_sketch.deserialize(row["sketch"]),
            frequencies=None if cats is None else dict(zip(cats, freqs, strict=True)),
            other=row["other"], max_categories=window.max_categories)
        window.names[key] = row["name"]
    return window


def encode_window(window: WindowSummary) -> bytes:
    """Arrow IPC stream bytes (schema + one record batch) of a window summary."""
    return _stream_bytes(_record_batch(window))


def encode_window_steps(window: WindowSummary, features_per_step: int = 64) -> Generator[None, None, bytes]:
    """`encode_window` a few features at a time: yields between steps, returns the same bytes.

    For a caller on an event loop (the Redis publisher): a 512-feature window costs several ms of
    Python and Arrow conversion to encode, and a worker thread would not help, since it would hold
    the GIL against the loop in 5 ms turns for as long as it ran. Each step converts its features
    to a small record batch; the last ones join them (a buffer copy) and write the IPC stream.
    """
    schema = _schema(window)
    keys = sorted(window.features)
    batches = []
    for start in range(0, len(keys), features_per_step):
        batches.append(_features_batch(window, keys[start:start + features_per_step], schema))
        yield
    batch = _one_batch(batches, schema)
    yield
    return _stream_bytes(batch)


def _stream_bytes(batch: pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return bytes(sink.getvalue().to_pybytes())


def decode_window(payload: bytes | str) -> WindowSummary:
    """Inverse of encode_window. Raises ValueError (or pyarrow.ArrowInvalid) on bad bytes.

    Accepts `str` only because redis-py types replies as `bytes | str`; ours are always bytes.
    """
    raw = payload if isinstance(payload, bytes) else payload.encode("utf-8", "surrogateescape")
    with pa.ipc.open_stream(pa.py_buffer(raw)) as reader:
        return _from_record_batch(reader.read_next_batch())


def write_profile_file(window: WindowSummary, path: Path) -> None:
    """Write a reference profile as an Arrow IPC file (atomically: temp file, then rename)."""
    batch = _record_batch(window)
    tmp = path.with_name(path.name + ".tmp")
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, batch.schema) as writer:
        writer.write_batch(batch)
    tmp.replace(path)


def read_profile_file(path: Path) -> WindowSummary:
    with pa.memory_map(str(path)) as source:
        return _from_record_batch(pa.ipc.open_file(source).get_batch(0))
