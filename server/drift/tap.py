"""DriftTap: the inference observer that feeds drift statistics, and its off-path folding task.

`observe` (on the request path) only does a bounded `put_nowait`; a background task drains the
queue, folds the inputs into each model's open window, and hands closed windows to a Publisher.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ..background import cancel, spawn
from .background import run_steps
from .metrics import TapMetrics
from .outputs import is_output_key, output_key, with_classes
from .publishers import Publisher
from .stats import DEFAULT_MAX_CATEGORIES, DEFAULT_SKETCH_K, FeatureKey, WindowSummary, merge_windows

__all__ = ["DriftTap", "TapConfig"]

logger = logging.getLogger(__name__)

Arrays = Mapping[str, npt.NDArray[Any]]


@dataclass(frozen=True, slots=True, kw_only=True)
class TapConfig:
    window_s: float = 60.0
    """Seconds per statistics window, aligned to the wall clock so replicas' windows line up; 0: rows only."""

    window_rows: int = 0
    """Close a window early once it holds at least this many rows; 0: by time only."""

    queue_size: int = 256
    """Observations waiting to be folded; beyond this they are dropped and counted. Kept small on
    purpose: a deep queue lets the turns that drain it grow long enough to show in the serving p99
    (BENCHMARKS.md, "Side paths")."""

    models: frozenset[str] | None = None
    """Models watched; None watches every model."""

    sketch_k: int = DEFAULT_SKETCH_K
    """KLL accuracy parameter (200: about 1.3% rank error)."""

    max_categories: int = DEFAULT_MAX_CATEGORIES
    """Distinct values counted per integer feature."""

    max_features: int = 4096
    """Columns of a [batch, F] input beyond which it is not summarised (counted in
    tessera_drift_skipped_inputs_total): every column is a summary kept for the window, and an input
    with a free feature dimension lets a client choose F, so without a bound one request could make
    the window hold millions of them."""

    max_drain: int = 64
    """Observations folded per turn of the background task; more waiting shortens the pause after it."""

    fold_interval_s: float = 0.1
    """Shortest pause between turns, so that under load each turn stacks many requests into one fold:
    a fold's cost is mostly per feature, not per row; windows last a minute, so nobody waits for it."""

    cpu_budget: float = 0.02
    """Share of the event loop's CPU time the folding may take on average (0.02: 2%). After each
    turn the task pauses long enough to stay within it; when traffic brings more rows than the
    budget folds, the queue fills and further observations are dropped and counted, so the
    statistics become a sample of the traffic instead of a cost on it."""

    block_values: int = 16384
    """Most values in one step between two yields to the event loop: a wide input is reduced
    (sums, min, max) a group of columns at a time, so no request waits behind a whole fold."""

    block_columns: int = 16
    """Most columns whose moments and sketches are updated in one step: each column has a fixed cost
    whatever its rows, so this bounds one step's length (step lengths: BENCHMARKS.md, "Side paths");
    the CPU per turn is the same at any value, since the reductions are not repeated per step."""

    outputs: bool = True
    """Also summarise each model version's outputs (prediction drift), under `<model>:outputs:<version>`."""

    recent_output_windows: int = 5
    """Closed output windows kept per model version for the rollout status's output comparison."""

    def __post_init__(self) -> None:
        if self.window_s <= 0 and self.window_rows <= 0:
            raise ValueError("drift windows need window_s > 0 or window_rows > 0")
        if not 0 < self.cpu_budget <= 1:
            raise ValueError("drift cpu_budget must be in (0, 1]")
        if self.queue_size < 1:  # the queue is what bounds the observations held; 0 would fold nothing
            raise ValueError("drift queue_size must be at least 1")


@dataclass(slots=True)
class _Open:
    summary: WindowSummary
    deadline: float  # seconds (clock), inf when windows close by rows only


class DriftTap:
    """Hot-path side of drift monitoring; one per server process: a `dataplane.InferenceObserver`.

    (It does not import the dataplane, so that `tessera drift` loads none of the serving core.)

    `names(model)` may give display names of features (from the model config); it is called on
    the background task, once per window. `clock` returns Unix seconds (tests may pass their own).
    """

    def __init__(self, publisher: Publisher, metrics: TapMetrics, config: TapConfig | None = None, *,
                 names: Callable[[str], Mapping[FeatureKey, str]] | None = None,
                 clock: Callable[[], float] = time.time, producer: str | None = None) -> None:
        self._publisher = publisher
        self._metrics = metrics
        self._config = config or TapConfig()
        self._models = self._config.models
        self._names = names
        self._clock = clock
        self.producer = producer or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # A deque and a future rather than an asyncio.Queue: under load nearly every request meets a full
        # queue, and this way that costs a length check and a dict update.
        self._queue: deque[tuple[str, str, Arrays, Arrays]] = deque()
        self._queue_size = self._config.queue_size
        self._arrived: asyncio.Future[None] | None = None  # set while the task waits for a first observation
        self._dropped = metrics.dropped_counts
        self._recent: dict[str, deque[WindowSummary]] = {}
        self._open: dict[str, _Open] = {}
        self._seq = 0
        self._task: asyncio.Task[None] | None = None
        # The turn in progress: a stop that cancels the task between two steps finishes it in flush.
        self._folding: Generator[None, None, None] | None = None

    # -- request path --------------------------------------------------------------------------
    def observe(self, model: str, version: str, inputs: dict[str, npt.NDArray[Any]],
                outputs: dict[str, npt.NDArray[Any]]) -> None:
        """Hand one request's inputs (and outputs) over; never blocks or raises (a full queue drops and counts)."""
        if self._models is None or model in self._models:
            self._put(model, version, inputs, outputs)

    def observe_outputs(self, model: str, version: str, outputs: dict[str, npt.NDArray[Any]]) -> None:
        """Hand over outputs computed without a request of their own (a rollout's shadow copies: their
        inputs were observed with the stable version's request); like `observe`, never blocks or raises."""
        if self._config.outputs and (self._models is None or model in self._models):
            self._put(model, version, {}, outputs)

    def _put(self, model: str, version: str, inputs: dict[str, npt.NDArray[Any]],
             outputs: dict[str, npt.NDArray[Any]]) -> None:
        if len(self._queue) >= self._queue_size:  # under load, the usual case once the CPU budget is spent
            self._dropped[model] = self._dropped.get(model, 0) + 1
            return
        self._queue.append((model, version, inputs, outputs))
        arrived = self._arrived
        if arrived is not None and not arrived.done():
            arrived.set_result(None)

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the folding task on the running loop (the publisher is started separately)."""
        if self._task is None:
            self._task = spawn(self._run(), "drift-tap")

    async def stop(self) -> None:
        """Stop folding, fold what is queued and publish every open window (partial ones too)."""
        await cancel(self._task)
        self._task = None
        self.flush(close_all=True)

    def flush(self, close_all: bool = False) -> None:
        """Fold everything queued now and close windows that are due (all of them if close_all)."""
        if self._folding is not None:  # a turn that was cancelled between two blocks
            for _ in self._folding:
                pass
            self._folding = None
        while self._queue:
            for _ in self._fold_queued():
                pass
        self._close_due(close_all)

    def _close_due(self, close_all: bool = False) -> None:
        now = self._clock()
        for model in [m for m, w in self._open.items() if close_all or now >= w.deadline]:
            self._close(model, now)

    # -- background task -----------------------------------------------------------------------
    async def _run(self) -> None:
        budget = self._config.cpu_budget
        while True:
            if not self._queue:
                self._arrived = asyncio.get_running_loop().create_future()
                try:
                    async with asyncio.timeout(self._seconds_to_deadline()):
                        await self._arrived
                except TimeoutError:
                    pass
                finally:
                    self._arrived = None
            spent = 0.0
            try:
                self._folding = self._fold_queued()
                _, spent = await run_steps(self._folding)
                self._metrics.loop_cpu.inc(spent)
                self._folding = None
                self._close_due()
            except Exception:  # one bad request must not stop drift statistics
                self._folding = None
                logger.exception("drift statistics: folding failed")
            pause = spent * (1 - budget) / budget
            if len(self._queue) < self._config.max_drain:  # no backlog: let requests gather
                pause = max(pause, self._config.fold_interval_s)
            await asyncio.sleep(pause)

    def _seconds_to_deadline(self) -> float | None:
        deadlines = [w.deadline for w in self._open.values() if w.deadline != math.inf]
        return max(0.0, min(deadlines) - self._clock()) if deadlines else None

    def _fold_queued(self) -> Generator[None, None, None]:
        """Fold up to max_drain + 1 queued observations; yields between blocks of work."""
        batch: dict[str, list[Arrays]] = {}
        outputs = self._config.outputs
        queue = self._queue
        for _ in range(self._config.max_drain + 1):
            if not queue:
                break
            model, version, inputs, produced = queue.popleft()
            if inputs:
                batch.setdefault(model, []).append(inputs)
            if outputs and produced:
                batch.setdefault(output_key(model, version), []).append(produced)
        now = self._clock()
        for model, observations in batch.items():
            yield from self._fold_model(model, observations, now)

    def _fold_model(self, model: str, observations: list[Arrays], now: float) -> Iterator[None]:
        """Fold in arrival order; a window closes right after the request that fills its rows."""
        limit = self._config.window_rows
        open_window = self._open.get(model)
        rows = open_window.summary.rows if open_window is not None and now < open_window.deadline else 0
        chunk: list[Arrays] = []
        for inputs in observations:
            chunk.append(inputs)
            rows += _rows(inputs)
            if limit and rows >= limit:
                yield from self._fold_chunk(model, chunk, now)
                self._close(model, now)
                chunk, rows = [], 0
        if chunk:
            yield from self._fold_chunk(model, chunk, now)

    def _fold_chunk(self, model: str, chunk: list[Arrays], now: float) -> Iterator[None]:
        summary = self._window(model, now).summary
        summary.rows += sum(_rows(o) for o in chunk)
        if is_output_key(model):  # class shares of classifier outputs, folded as one more tensor each
            chunk = [with_classes(o) for o in chunk]
        for name, array in _stack(chunk):
            if array.ndim == 2 and array.shape[1] > self._config.max_features:
                self._metrics.skipped_inputs.labels(model).inc()
                continue
            if array.ndim != 2 or array.shape[0] == 0:
                summary.fold_array(name, array)
                yield
                continue
            yield from summary.fold_matrix_steps(name, array, self._config.block_columns,
                                                 self._config.block_values)

    def _window(self, model: str, now: float) -> _Open:
        window = self._open.get(model)
        if window is not None and now >= window.deadline:
            self._close(model, now)
            window = None
        if window is None:
            length = self._config.window_s
            start = math.floor(now / length) * length if length > 0 else now
            self._seq += 1
            summary = WindowSummary(
                model=model, window_id=f"{self.producer}:{self._seq}", producer=self.producer,
                start_ms=int(start * 1000), end_ms=0, rows=0, windows=1,
                names=self._feature_names(model),
                sketch_k=self._config.sketch_k, max_categories=self._config.max_categories)
            window = _Open(summary, start + length if length > 0 else math.inf)
            self._open[model] = window
        return window

    def _feature_names(self, model: str) -> dict[FeatureKey, str]:
        if self._names is None:
            return {}
        try:
            return dict(self._names(model))
        except Exception:  # e.g. the model was unloaded meanwhile: default names will do
            return {}

    def _close(self, model: str, now: float) -> None:
        window = self._open.pop(model)
        window.summary.end_ms = int(min(now, window.deadline) * 1000)
        self._metrics.windows_closed.labels(model).inc()
        if is_output_key(model) and self._config.recent_output_windows > 0:
            recent = self._recent.setdefault(model, deque(maxlen=self._config.recent_output_windows))
            recent.append(window.summary)
        try:
            self._publisher.publish(window.summary)
        except Exception:
            logger.exception("drift statistics: publisher refused window %s", window.summary.window_id)


    def recent_outputs(self, model: str, version: str) -> WindowSummary | None:
        """A merge of the version's recent output windows and its open one (on the loop; None if none)."""
        key = output_key(model, version)
        windows = list(self._recent.get(key, ()))
        open_window = self._open.get(key)
        if open_window is not None:
            windows.append(open_window.summary)
        return merge_windows(key, windows, f"recent:{key}")


def _rows(inputs: Arrays) -> int:
    for array in inputs.values():
        return int(array.shape[0]) if array.ndim else 1
    return 0


def _stack(observations: list[Arrays]) -> Iterator[tuple[str, npt.NDArray[Any]]]:
    """Each input's arrays, stacked along the batch dimension where shapes and dtypes agree."""
    if len(observations) == 1:
        yield from observations[0].items()
        return
    by_input: dict[str, list[npt.NDArray[Any]]] = {}
    for inputs in observations:
        for name, array in inputs.items():
            by_input.setdefault(name, []).append(array)
    for name, arrays in by_input.items():
        first = arrays[0]
        if all(a.ndim == first.ndim > 0 and a.shape[1:] == first.shape[1:] and a.dtype == first.dtype
               for a in arrays):
            yield name, np.concatenate(arrays)
        else:
            for array in arrays:
                yield name, array
