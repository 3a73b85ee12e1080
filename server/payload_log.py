"""Payload logging, opt-in per model: a sampled share of requests and their responses, written off the
request's path as Arrow record batches to a Redis Stream (`tessera:payload:<model>`, XADD MAXLEN ~)
or to rotating Parquet files.

A model opts in through its config.pbtxt parameters (`payload_log_sample_ratio`, and optionally
`payload_log_redact`: columns left out, `payload_log_drop`: whole tensors left out); the server
switches the sink on (`--payload-log redis|parquet`). The request path only decides the sample and
appends to a bounded deque (full: dropped and counted); a writer thread builds the tables and
writes them; a sink that fails (Redis down) loses those records, counts them, and never slows a request.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq
from prometheus_client import CollectorRegistry, Counter

from . import observation
from .writer_thread import WriterThread, hand_over

__all__ = ["STREAM_PREFIX", "ParquetSink", "PayloadLog", "PayloadPolicy", "PayloadSink", "RedisSink",
           "policy_from_parameters", "records_table"]

logger = logging.getLogger(__name__)

STREAM_PREFIX = "tessera:payload:"

Arrays = Mapping[str, npt.NDArray[Any]]


@dataclass(frozen=True, slots=True)
class PayloadPolicy:
    """One model's payload logging: the share of requests kept and what is left out of them."""

    sample_ratio: float
    redact: frozenset[str] = frozenset()
    """Columns left out: a feature name, `<input>[j]`, or a whole tensor's name."""
    drop: frozenset[str] = frozenset()
    """Input or output tensors left out entirely."""
    names: Mapping[tuple[str, int], str] = field(default_factory=dict)
    """Feature names of input columns (the config's `feature_names`)."""


def policy_from_parameters(parameters: Mapping[str, str],
                           names: Mapping[tuple[str, int], str] | None = None) -> PayloadPolicy | None:
    """The policy a model's config parameters declare; None when the model has not opted in."""
    text = parameters.get("payload_log_sample_ratio", "").strip()
    if not text:
        return None
    ratio = float(text)
    if not 0 < ratio <= 1:
        raise ValueError(f"payload_log_sample_ratio must be in (0, 1], got {text}")

    def csv(key: str) -> frozenset[str]:
        return frozenset(c.strip() for c in parameters.get(key, "").split(",") if c.strip())

    return PayloadPolicy(ratio, csv("payload_log_redact"), csv("payload_log_drop"), dict(names or {}))


class _Sampler:
    """Keeps exactly `ratio` of the requests over any long run, at random positions: a running credit
    crosses a random threshold (so a periodic request pattern is not sampled in step with itself)."""

    __slots__ = ("_credit", "_random", "_ratio", "_threshold")

    def __init__(self, ratio: float, rng: random.Random) -> None:
        self._ratio, self._random = ratio, rng
        self._credit = 0.0
        self._threshold = rng.random()

    def take(self) -> bool:
        self._credit += self._ratio
        if self._credit < self._threshold:
            return False
        self._credit -= 1.0
        self._threshold = self._random.random()
        return True


@dataclass(slots=True)
class _Record:
    time_ns: int
    request_id: str
    trace_id: str
    routing: str
    model: str
    version: str
    inputs: Arrays
    outputs: Arrays
    policy: PayloadPolicy


class PayloadSink(Protocol):
    """Where payload tables go; `write` runs on the writer thread and may raise (records are then lost)."""

    def write(self, model: str, table: pa.Table) -> None: ...

    def close(self) -> None: ...


class PayloadLog:
    """An InferenceObserver (DataPlane.add_observer) logging sampled payloads of opted-in models."""

    def __init__(self, sink: PayloadSink, policy_of: Callable[[str, str], PayloadPolicy | None], *,
                 registry: CollectorRegistry | None = None, queue_size: int = 1024,
                 flush_interval_s: float = 0.2, max_records_per_write: int = 512) -> None:
        self._sink = sink
        self._policy_of = policy_of
        self._policies: dict[tuple[str, str], tuple[PayloadPolicy | None, _Sampler | None]] = {}
        self._limit = queue_size
        self._per_write = max_records_per_write
        self._queue: deque[_Record] = deque()
        self._random = random.Random()
        self._writer = WriterThread("payload-log", self.drain, flush_interval_s)
        self._failing = False
        self.sampled = Counter("tessera_payload_log_sampled", "Requests sampled for payload logging.", ("model",),
                               registry=registry)
        self.written = Counter("tessera_payload_log_written", "Payload records written to the sink.", ("model",),
                               registry=registry)
        self.dropped = Counter("tessera_payload_log_dropped",
                               "Payload records lost: queue (writer behind) or sink (write failed).",
                               ("model", "reason"), registry=registry)

    # -- request path (event loop) ---------------------------------------------------------------
    def observe(self, model: str, version: str, inputs: dict[str, npt.NDArray[Any]],
                outputs: dict[str, npt.NDArray[Any]]) -> None:
        """Maybe keep this request's payload; never blocks or raises."""
        key = (model, version)
        found = self._policies.get(key)
        if found is None:
            found = self._resolve(key)
        policy, sampler = found
        if sampler is None or policy is None or not sampler.take():
            return
        self.sampled.labels(model).inc()
        if len(self._queue) >= self._limit:
            self.dropped.labels(model, "queue").inc()
            return
        obs = observation.current() if observation.ACTIVE is not None else None
        self._queue.append(_Record(time.time_ns(), obs.request_id if obs else "", obs.trace_id_hex if obs else "",
                                   obs.routing if obs else "", model, version, inputs, outputs, policy))

    def _resolve(self, key: tuple[str, str]) -> tuple[PayloadPolicy | None, _Sampler | None]:
        try:
            policy = self._policy_of(*key)
        except Exception as exc:  # a bad parameter must not fail requests: log it once, log nothing
            logger.error("payload logging of %s v%s is off: %s", key[0], key[1], exc)
            policy = None
        found = (policy, _Sampler(policy.sample_ratio, self._random) if policy is not None else None)
        self._policies[key] = found
        return found

    # -- writer thread ---------------------------------------------------------------------------
    def start(self) -> None:
        self._writer.start()

    def stop(self) -> None:
        """Write what is queued, then close the sink (blocking: call it off the event loop)."""
        self._writer.stop()
        self._sink.close()

    def drain(self) -> None:
        """Write every queued record (the writer thread's work; tests may call it directly), handing the
        GIL to the event loop between writes."""
        while self._queue:
            records: list[_Record] = []
            while self._queue and len(records) < self._per_write:
                records.append(self._queue.popleft())
            by_model: dict[str, list[_Record]] = {}
            for record in records:
                by_model.setdefault(record.model, []).append(record)
            for model, group in by_model.items():
                self._write(model, group)
            if self._queue:
                hand_over()

    def _write(self, model: str, records: list[_Record]) -> None:
        try:
            table = records_table(records)
        except Exception:
            logger.exception("payload log: could not build a table of %d records of %s", len(records), model)
            self.dropped.labels(model, "encode").inc(len(records))
            return
        try:
            self._sink.write(model, table)
        except Exception as exc:
            self.dropped.labels(model, "sink").inc(len(records))
            if not self._failing:  # once per outage; the counter keeps the tally
                logger.warning("payload log: sink failed, records are lost until it recovers: %s", exc)
            self._failing = True
            return
        if self._failing:
            logger.warning("payload log: sink recovered")
            self._failing = False
        self.written.labels(model).inc(len(records))


# -- tables ------------------------------------------------------------------------------------------
def _columns(prefix: str, name: str, array: npt.NDArray[Any], rows: int, policy: PayloadPolicy,
             per_row: bool) -> list[tuple[str, pa.Array]]:
    """A tensor's columns: one per feature of a [rows, F] tensor, else one column of the row's values."""
    if name in policy.drop or name in policy.redact:
        return []
    if per_row and array.ndim == 2:
        out = []
        for j in range(array.shape[1]):
            label = policy.names.get((name, j), f"{name}[{j}]") if prefix == "input" else f"{name}[{j}]"
            if label not in policy.redact and f"{name}[{j}]" not in policy.redact:
                out.append((f"{prefix}.{label}", _arrow(array[:, j])))
        return out
    flat = _arrow(array.reshape(-1))
    if per_row and array.ndim == 1:
        return [(f"{prefix}.{name}", flat)]
    width = array.size // rows if rows else 0
    offsets = pa.array(np.arange(0, rows * width + 1, max(width, 1), dtype=np.int32)[:rows + 1])
    return [(f"{prefix}.{name}", pa.ListArray.from_arrays(offsets, flat))]


def _arrow(values: npt.NDArray[Any]) -> pa.Array:
    if values.dtype.kind in "OSU":
        return pa.array([v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values],
                        pa.string())
    return pa.array(np.ascontiguousarray(values))


def _record_table(record: _Record) -> pa.Table:
    tensors = [("input", record.inputs), ("output", record.outputs)]
    first = next(iter(record.inputs.values()), None)
    rows = int(first.shape[0]) if first is not None and first.ndim else 1
    per_row = all(a.ndim >= 1 and a.shape[0] == rows for _, t in tensors for a in t.values())
    if not per_row:
        rows = 1
    columns: list[tuple[str, pa.Array]] = []
    for prefix, arrays in tensors:
        for name, array in arrays.items():
            columns.extend(_columns(prefix, name, array, rows, record.policy, per_row))
    meta = {
        "time": pa.array(np.full(rows, record.time_ns // 1000, dtype=np.int64), pa.timestamp("us", tz="UTC")),
        "request_id": pa.array([record.request_id] * rows, pa.string()),
        "trace_id": pa.array([record.trace_id] * rows, pa.string()),
        "model": pa.array([record.model] * rows, pa.string()),
        "version": pa.array([record.version] * rows, pa.string()),
        "routing": pa.array([record.routing] * rows, pa.string()),
        "row": pa.array(np.arange(rows, dtype=np.int32)),
    }
    names = list(meta) + [c[0] for c in columns]
    return pa.Table.from_arrays(list(meta.values()) + [c[1] for c in columns], names=names)


def records_table(records: list[_Record]) -> pa.Table:
    """One table of some records of one model: a row per inference row (per request when the tensors
    have no common batch dimension); columns the request's metadata and its tensors' columns."""
    table = pa.concat_tables([_record_table(r) for r in records], promote_options="permissive")
    policy = records[0].policy
    metadata = {b"tessera.redacted": ",".join(sorted(policy.redact)).encode(),
                b"tessera.dropped": ",".join(sorted(policy.drop)).encode()}
    return table.replace_schema_metadata(metadata)


# -- sinks -------------------------------------------------------------------------------------------
class RedisSink:
    """XADD one Arrow IPC stream per write to `tessera:payload:<model>`, capped at about `maxlen` entries."""

    def __init__(self, url: str, *, maxlen: int = 10_000, timeout_s: float = 1.0) -> None:
        from redis import Redis

        self._redis = Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._maxlen = maxlen

    def write(self, model: str, table: pa.Table) -> None:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        self._redis.xadd(STREAM_PREFIX + model, {"payload": sink.getvalue().to_pybytes(), "rows": table.num_rows},
                         maxlen=self._maxlen, approximate=True)

    def close(self) -> None:
        self._redis.close()


class ParquetSink:
    """`<directory>/<model>/payload-<start>-<n>.parquet`, a new file after `rotate_rows` rows (or a new schema)."""

    def __init__(self, directory: Path, *, rotate_rows: int = 100_000) -> None:
        self._directory = directory
        self._rotate_rows = rotate_rows
        self._open: dict[str, tuple[pq.ParquetWriter, pa.Schema, int]] = {}
        self._files = 0

    def write(self, model: str, table: pa.Table) -> None:
        current = self._open.get(model)
        if current is not None and (current[2] >= self._rotate_rows or not current[1].equals(table.schema)):
            current[0].close()
            current = None
        if current is None:
            folder = self._directory / model
            folder.mkdir(parents=True, exist_ok=True)
            self._files += 1
            path = folder / f"payload-{time.strftime('%Y%m%dT%H%M%S')}-{self._files:06d}.parquet"
            current = (pq.ParquetWriter(path, table.schema), table.schema, 0)
        writer, schema, rows = current
        writer.write_table(table)
        self._open[model] = (writer, schema, rows + table.num_rows)

    def close(self) -> None:
        for writer, _, _ in self._open.values():
            writer.close()
        self._open.clear()
