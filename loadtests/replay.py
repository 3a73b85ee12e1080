"""Replay a recorded arrival log, open loop, at 1x or scaled speed.

The log is CSV (with a header) or JSON lines; each arrival has a time, a model and optionally a
payload reference:

    offset,model,payload              # offset: seconds from the first arrival (or offset_ms)
    0.000,tabular,bodies/a.json       # payload: a V2 request body (JSON) or a JSON/Parquet rows file,
    0.004,tabular,                    #   relative to the log; empty: synthetic inputs for the model
    0.0051,mlp,

`timestamp` (or `time`, `ts`: Unix seconds, or ISO 8601 as request logs write it) may stand in for
`offset`, and `model_name` for `model`. Lines are sorted by time; every distinct payload is encoded
once before the replay starts.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from .encoding import encode_payloads
from .inputs import ModelInfo, fetch_model_info, random_samples, samples_from_file
from .spec import Target
from .traffic import Arrivals, Mix

__all__ = ["ArrivalLog", "build_replay", "read_arrival_log"]


@dataclass(frozen=True, slots=True)
class ArrivalLog:
    """Offsets in seconds from the first arrival (ascending), the model and payload reference of each."""

    offsets_s: tuple[float, ...]
    models: tuple[str, ...]
    payload_refs: tuple[str, ...]


def read_arrival_log(path: Path, *, limit: int = 10_000_000) -> ArrivalLog:
    """Parse a CSV or JSON-lines log (.jsonl/.ndjson/.json: JSON lines). Raises ValueError naming the
    first bad line."""
    with path.open(newline="") as f:
        if path.suffix in (".jsonl", ".ndjson", ".json"):
            records: Iterable[Mapping[str, Any]] = (json.loads(line) for line in f if line.strip())
        else:
            records = csv.DictReader(f)
        rows = []
        for number, record in enumerate(records, start=1):
            if number > limit:
                raise ValueError(f"{path}: more than {limit} arrivals")
            rows.append(_row(record, path, number))
    if not rows:
        raise ValueError(f"{path}: no arrivals")
    rows.sort(key=lambda r: r[0])
    first = rows[0][0]
    return ArrivalLog(
        tuple(r[0] - first for r in rows), tuple(r[1] for r in rows), tuple(r[2] for r in rows)
    )


_TIME_KEYS = ("timestamp", "time", "ts")
_MODEL_KEYS = ("model", "model_name")


def _row(record: Mapping[str, Any], path: Path, number: int) -> tuple[float, str, str]:
    try:
        if record.get("offset") not in (None, ""):
            at = float(record["offset"])
        elif record.get("offset_ms") not in (None, ""):
            at = float(record["offset_ms"]) / 1000.0
        else:
            at = _timestamp(next(record[k] for k in _TIME_KEYS if record.get(k) not in (None, "")))
        model = str(next(record[k] for k in _MODEL_KEYS if record.get(k) not in (None, ""))).strip()
    except (KeyError, StopIteration, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: arrival {number}: needs offset, offset_ms or timestamp, and model ({exc})") from None
    if not model:
        raise ValueError(f"{path}: arrival {number}: empty model")
    return at, model, str(record.get("payload") or "").strip()


def _timestamp(value: Any) -> float:
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


InfoSource = Callable[[Target], ModelInfo]


def build_replay(
    log: ArrivalLog,
    target: Target,
    *,
    base: Path,
    speed: float = 1.0,
    start_delay_s: float = 0.0,
    seed: int = 0,
    info_of: InfoSource = fetch_model_info,
) -> tuple[list[bytes], Mix, Arrivals]:
    """Payloads (one per distinct (model, reference), synthetic ones 16 per model, cycled), the mix,
    and the arrivals: offsets divided by `speed` (2.0 replays twice as fast), shifted by `start_delay_s`."""
    if speed <= 0:
        raise ValueError("replay speed must be > 0")
    models = tuple(dict.fromkeys(log.models))
    payloads: list[bytes] = []
    payload_model: list[int] = []
    index_of: dict[tuple[str, str], list[int]] = {}
    for (model, ref) in dict.fromkeys(zip(log.models, log.payload_refs, strict=True)):
        model_target = replace(target, model=model)
        info = info_of(model_target)
        if ref:
            samples = samples_from_file(base / ref, info, limit=1)[:1]
        else:
            samples = random_samples(info, count=16, seed=seed)
        index_of[(model, ref)] = list(range(len(payloads), len(payloads) + len(samples)))
        payloads += encode_payloads(model_target, samples)
        payload_model += [models.index(model)] * len(samples)
    seen: dict[tuple[str, str], int] = {}
    picks = []
    for key in zip(log.models, log.payload_refs, strict=True):
        choices = index_of[key]
        n = seen.get(key, 0)
        seen[key] = n + 1
        picks.append(choices[n % len(choices)])
    offsets = np.asarray(log.offsets_s, dtype=np.float64) / speed + start_delay_s
    return payloads, Mix(models, tuple(payload_model)), Arrivals(offsets, np.asarray(picks, dtype=np.int64))
