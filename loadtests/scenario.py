"""Traffic mixes from a scenario file (YAML or JSON): models with weights, each with its own inputs and
batch-size distribution, under a rate schedule of steps, ramps and bursts.

    warmup: 2                       # seconds sent but not recorded (default 0)
    arrival: poisson                # or constant
    models:
      - name: tabular
        weight: 3
        batch_sizes: {1: 0.8, 8: 0.2}   # or one size: 4 (default 1)
        inputs: {file: rows.parquet}    # JSON / Parquet rows or V2 bodies; default synthetic
      - name: mlp
        weight: 1
        inputs: {synthetic: {distinct: 32}, shapes: {x: [1, 64]}}
    schedule:
      - {rate: 200, duration: 10}       # a step: 200 req/s for 10 s
      - {ramp: [200, 800], duration: 20}
      - {burst: 2000, duration: 2}
      - {rate: 400, duration: 10}

Everything is turned into an explicit list of send times and payloads before the load starts.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from .encoding import encode_payloads
from .inputs import ModelInfo, Sample, fetch_model_info, random_samples, samples_from_file
from .spec import Target
from .traffic import Arrivals, Mix

__all__ = [
    "ModelTraffic",
    "Scenario",
    "Segment",
    "build_traffic",
    "exact_allocation",
    "load_scenario",
    "parse_scenario",
    "schedule_offsets",
]

@dataclass(frozen=True, slots=True, kw_only=True)
class Segment:
    """A stretch of the rate schedule: rate goes linearly from `start_rps` to `end_rps`."""

    duration_s: float
    start_rps: float
    end_rps: float
    kind: Literal["step", "ramp", "burst"] = "step"


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelTraffic:
    name: str
    weight: float = 1.0
    version: str = ""
    batch_sizes: tuple[tuple[int, float], ...] = ((1, 1.0),)
    """(rows per request, probability) pairs; probabilities sum to 1."""
    input_file: Path | None = None
    distinct: int = 64
    """Distinct requests per batch size (synthetic inputs), or at most this many from the file."""
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    models: tuple[ModelTraffic, ...]
    schedule: tuple[Segment, ...]
    warmup_s: float = 0.0
    arrival: Literal["poisson", "constant"] = "poisson"

    @property
    def duration_s(self) -> float:
        return sum(s.duration_s for s in self.schedule)

    @property
    def mean_rate_rps(self) -> float:
        return sum(s.duration_s * (s.start_rps + s.end_rps) / 2 for s in self.schedule) / self.duration_s


def load_scenario(path: Path) -> Scenario:
    """Read and check a scenario file (.yaml/.yml needs PyYAML, else JSON). Raises ValueError."""
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml  # type: ignore[import-untyped]
        except ImportError as exc:
            raise ValueError("YAML scenarios need PyYAML: pip install 'tessera[loadtest]'") from exc
        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: a scenario is a mapping with 'models' and 'schedule'")
    return parse_scenario(data, path.parent)


def parse_scenario(data: Mapping[str, Any], base: Path) -> Scenario:
    models = tuple(_model(m, base) for m in data.get("models") or ())
    if not models:
        raise ValueError("scenario: 'models' lists at least one model")
    if sum(m.weight for m in models) <= 0:
        raise ValueError("scenario: model weights must add up to more than 0")
    schedule = tuple(_segment(s) for s in data.get("schedule") or ())
    if not schedule:
        raise ValueError("scenario: 'schedule' lists at least one segment ({rate: R, duration: S})")
    arrival = data.get("arrival", "poisson")
    if arrival not in ("poisson", "constant"):
        raise ValueError("scenario: arrival is poisson or constant")
    warmup = float(data.get("warmup", 0.0))
    if not 0 <= warmup < sum(s.duration_s for s in schedule):
        raise ValueError("scenario: warmup must be >= 0 and shorter than the schedule")
    return Scenario(models=models, schedule=schedule, warmup_s=warmup, arrival=arrival)


def _model(item: Mapping[str, Any], base: Path) -> ModelTraffic:
    if not isinstance(item, Mapping) or not item.get("name"):
        raise ValueError("scenario: each model is a mapping with a 'name'")
    sizes = item.get("batch_sizes", 1)
    pairs = [(int(k), float(v)) for k, v in sizes.items()] if isinstance(sizes, Mapping) else [(int(sizes), 1.0)]
    total = sum(p for _, p in pairs)
    if total <= 0 or any(b < 1 or p < 0 for b, p in pairs):
        raise ValueError(f"scenario: model {item['name']!r}: batch sizes >= 1 with weights >= 0")
    inputs = item.get("inputs") or {}
    file = inputs.get("file")
    synthetic = inputs.get("synthetic") or {}
    weight = float(item.get("weight", 1.0))
    if weight < 0:
        raise ValueError(f"scenario: model {item['name']!r}: weight must be >= 0")
    return ModelTraffic(
        name=str(item["name"]),
        weight=weight,
        version=str(item.get("version", "")),
        batch_sizes=tuple((b, p / total) for b, p in pairs),
        input_file=(base / file) if file else None,
        distinct=int(synthetic.get("distinct", inputs.get("distinct", 64))),
        shapes={str(k): tuple(int(d) for d in v) for k, v in (inputs.get("shapes") or {}).items()},
    )


def _segment(item: Mapping[str, Any]) -> Segment:
    duration = float(item.get("duration", 0))
    if duration <= 0:
        raise ValueError(f"scenario: schedule segment {dict(item)} needs a duration > 0 (seconds)")
    if "ramp" in item:
        start, end = (float(r) for r in item["ramp"])
        segment = Segment(duration_s=duration, start_rps=start, end_rps=end, kind="ramp")
    elif "burst" in item:
        segment = Segment(duration_s=duration, start_rps=float(item["burst"]), end_rps=float(item["burst"]),
                          kind="burst")
    elif "rate" in item:
        segment = Segment(duration_s=duration, start_rps=float(item["rate"]), end_rps=float(item["rate"]))
    else:
        raise ValueError(f"scenario: schedule segment {dict(item)} needs rate, ramp or burst")
    if segment.start_rps < 0 or segment.end_rps < 0:
        raise ValueError("scenario: rates must be >= 0")
    return segment


def schedule_offsets(
    schedule: Sequence[Segment], arrival: Literal["poisson", "constant"], rng: np.random.Generator
) -> npt.NDArray[np.float64]:
    """Send times for the schedule: a unit-rate stream (Poisson, or evenly spaced) mapped through the
    inverse of the cumulative rate Lambda(t) (time rescaling). For `poisson` that is exactly a
    non-homogeneous Poisson process with the schedule's rate; for `constant`, evenly spaced sends
    at the momentary rate."""
    starts = np.cumsum([0.0] + [s.duration_s for s in schedule])
    areas = np.asarray([s.duration_s * (s.start_rps + s.end_rps) / 2 for s in schedule])
    lambda_at = np.concatenate(([0.0], np.cumsum(areas)))
    expected = float(lambda_at[-1])
    if arrival == "poisson":
        units = np.cumsum(rng.exponential(1.0, size=int(expected + 10 * np.sqrt(expected) + 10)))
    else:
        units = np.arange(rng.random(), expected, 1.0)
    units = units[units < expected]
    which = np.searchsorted(lambda_at, units, side="right") - 1
    slope = np.asarray([(s.end_rps - s.start_rps) / s.duration_s for s in schedule])[which]
    rate0 = np.asarray([s.start_rps for s in schedule])[which]
    into = units - lambda_at[which]
    # Solve rate0 * t + slope * t^2 / 2 = into, in the form that is stable for slope 0 and rate0 0.
    root = rate0 + np.sqrt(np.maximum(rate0 * rate0 + 2 * slope * into, 0.0))
    elapsed = np.divide(2 * into, root, out=np.zeros_like(into), where=root > 0)
    return np.asarray(starts[which] + elapsed, dtype=np.float64)


InfoSource = Callable[[Target], ModelInfo]


def build_traffic(
    scenario: Scenario, target: Target, *, seed: int = 0, info_of: InfoSource = fetch_model_info
) -> tuple[list[bytes], Mix, Arrivals]:
    """Encode every model's requests (per batch size) once, draw the send times and, for each,
    the model and batch size (shares exact to within one request, order random) and one of that
    group's requests at random."""
    rng = np.random.default_rng(seed)
    payloads: list[bytes] = []
    payload_model: list[int] = []
    groups: list[tuple[int, float, int, int]] = []  # (model, probability, first payload, count)
    weights = np.asarray([m.weight for m in scenario.models])
    weights = weights / weights.sum()
    for m, model in enumerate(scenario.models):
        model_target = replace(target, model=model.name, model_version=model.version)
        info = info_of(model_target)
        for batch_size, probability in model.batch_sizes:
            encoded = encode_payloads(model_target, _samples(model, info, batch_size, seed))
            groups.append((m, weights[m] * probability, len(payloads), len(encoded)))
            payloads += encoded
            payload_model += [m] * len(encoded)
    offsets = schedule_offsets(scenario.schedule, scenario.arrival, rng)
    chosen = exact_allocation(np.asarray([g[1] for g in groups]), len(offsets), rng)
    first = np.asarray([g[2] for g in groups])[chosen]
    count = np.asarray([g[3] for g in groups])[chosen]
    picks = first + rng.integers(0, 1 << 30, size=len(offsets)) % count
    mix = Mix(tuple(m.name for m in scenario.models), tuple(payload_model))
    return payloads, mix, Arrivals(offsets, picks.astype(np.int64))


def exact_allocation(weights: npt.NDArray[np.float64], count: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """`count` group indices in random order, each group appearing in proportion to its weight to
    within one request (largest remainders), so a mix's shares are its weights, not a sample of them."""
    quotas = weights / weights.sum() * count
    counts = np.floor(quotas).astype(np.int64)
    short = count - int(counts.sum())
    counts[np.argsort(quotas - counts)[::-1][:short]] += 1
    return np.asarray(rng.permutation(np.repeat(np.arange(len(weights)), counts)), dtype=np.int64)


def _samples(model: ModelTraffic, info: ModelInfo, batch_size: int, seed: int) -> list[Sample]:
    if model.input_file is not None:
        return samples_from_file(model.input_file, info, batch_size=batch_size, limit=model.distinct)
    return random_samples(info, batch_size=batch_size, count=model.distinct, seed=seed,
                          shapes={k: list(v) for k, v in model.shapes.items()})
