"""One generator process: sends pre-encoded requests in an open or a closed loop, records HDR histograms.

Runs on its own event loop (uvloop when installed). Latency in the open loop is measured from each
request's intended send time, so a stalled server cannot hide its queue (coordinated omission);
the service time from the actual send is kept beside it, and so is the send lag itself.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import histograms
from .grpc_h2 import GrpcStatusError
from .spec import LoadSpec, Target
from .traffic import Arrivals, Mix
from .transports import HttpStatusError, InferClient, make_client

__all__ = ["ModelTally", "Sink", "WorkerJob", "WorkerReport", "run_worker", "worker_main"]

Sink = Callable[[tuple[Any, ...]], None]
TICK_S = 1.0


@dataclass(frozen=True, slots=True)
class WorkerJob:
    index: int
    target: Target
    spec: LoadSpec
    payloads: Sequence[bytes]
    mix: Mix | None = None
    """Per-model results when set (payload i belongs to model mix.payload_model[i])."""
    arrivals: Arrivals | None = None
    """Open loop: send exactly these (offsets from the start) instead of drawing from the rate."""


@dataclass(slots=True)
class ModelTally:
    """One model's share of a process's measurements (latency: HdrHistogram encoding, us)."""

    latency: bytes
    ok: int = 0
    sent: int = 0
    errors: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class WorkerReport:
    """What one process measured; histograms are HdrHistogram encodings (microseconds)."""

    index: int
    latency: bytes
    service: bytes
    send_lag: bytes
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    sent: int = 0
    missed_sends: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    first_error: str = ""
    connect_s: float = 0.0
    per_model: dict[str, ModelTally] = field(default_factory=dict)


class _Recorder:
    """Counts and histograms for one process; `measured` decides what falls in the window."""

    def __init__(self, spec: LoadSpec, start_at: float, mix: Mix | None = None) -> None:
        self.window = (start_at + spec.warmup_s, start_at + spec.warmup_s + spec.duration_s)
        self.open = spec.mode == "open"
        self.late_s = spec.late_send_ms / 1000.0
        self.latency, self.service, self.lag = (histograms.new_histogram() for _ in range(3))
        self.interval = histograms.new_histogram()
        self.interval_ok = self.interval_err = self.ok = self.sent = self.missed = 0
        self.errors: Counter[str] = Counter()
        self.first_error = ""
        self.mix = mix
        models = len(mix.models) if mix is not None else 0
        self.model_latency = [histograms.new_histogram() for _ in range(models)]
        self.model_ok, self.model_sent = [0] * models, [0] * models
        self.model_errors: list[Counter[str]] = [Counter() for _ in range(models)]

    def model_of(self, index: int) -> int:
        """The model index of payload `index` (-1 without a mix)."""
        return self.mix.payload_model[index % len(self.mix.payload_model)] if self.mix is not None else -1

    def _measured(self, intended: float, done: float) -> bool:
        t = intended if self.open else done
        return self.window[0] <= t < self.window[1]

    def sent_at(self, intended: float, sent: float, model: int = -1) -> None:
        self.sent += 1
        if (self.open or model >= 0) and self._measured(intended, sent):
            if model >= 0:
                self.model_sent[model] += 1
            if self.open:
                histograms.record_us(self.lag, sent - intended)
                self.missed += sent - intended > self.late_s

    def success(self, intended: float, sent: float, done: float, model: int = -1) -> None:
        histograms.record_us(self.interval, done - intended)
        self.interval_ok += 1
        if self._measured(intended, done):
            self.ok += 1
            histograms.record_us(self.latency, done - intended)
            histograms.record_us(self.service, done - sent)
            if model >= 0:
                self.model_ok[model] += 1
                histograms.record_us(self.model_latency[model], done - intended)

    def failure(self, intended: float, done: float, error: BaseException, model: int = -1) -> None:
        self.interval_err += 1
        if self._measured(intended, done):
            kind = _error_kind(error)
            self.errors[kind] += 1
            if model >= 0:
                self.model_errors[model][kind] += 1
            self.first_error = self.first_error or f"{type(error).__name__}: {error}"[:300]

    def tallies(self) -> dict[str, ModelTally]:
        if self.mix is None:
            return {}
        return {
            name: ModelTally(
                histograms.encode(self.model_latency[m]), self.model_ok[m], self.model_sent[m],
                dict(self.model_errors[m]),
            )
            for m, name in enumerate(self.mix.models)
        }


def _error_kind(error: BaseException) -> str:
    if isinstance(error, GrpcStatusError):
        return f"grpc_{error.code.name}"
    if isinstance(error, HttpStatusError):
        return f"http_{error.status}"
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, OSError):
        return "connection"
    return type(error).__name__


async def _one(client: InferClient, rec: _Recorder, index: int, intended: float) -> None:
    sent = time.monotonic()
    model = rec.model_of(index)
    rec.sent_at(intended, sent, model)
    try:
        await client.infer(index)
    except Exception as exc:
        rec.failure(intended, time.monotonic(), exc, model)
    else:
        rec.success(intended, sent, time.monotonic(), model)


async def _open_loop(client: InferClient, rec: _Recorder, spec: LoadSpec, start_at: float, timeout_s: float) -> None:
    rng = random.Random(spec.seed)
    end = rec.window[1]
    gap: Callable[[], float] = (
        (lambda: rng.expovariate(spec.rate_rps)) if spec.arrival == "poisson" else (lambda: 1.0 / spec.rate_rps)
    )
    in_flight: set[asyncio.Task[None]] = set()
    intended = start_at + (rng.random() / spec.rate_rps if spec.arrival == "constant" else 0.0)
    for index in range(spec.max_requests):
        intended += gap()
        if intended >= end:
            break
        delay = intended - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elif index % 16 == 0:
            await asyncio.sleep(0)  # behind schedule: still let answers in
        while len(in_flight) >= spec.max_in_flight:
            await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
        task = asyncio.create_task(_one(client, rec, index, intended))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    await _drain(in_flight, rec, timeout_s)


async def _scheduled_loop(
    client: InferClient, rec: _Recorder, spec: LoadSpec, arrivals: Arrivals, start_at: float, timeout_s: float
) -> None:
    """Send payload arrivals.payloads[i] at start_at + arrivals.offsets_s[i], open loop, in order.

    Sleeps until each send time; with spec.send_spin_ms, sleeps until that much before it and then
    yields to the loop (answers keep being read) until the time comes."""
    spin_s = spec.send_spin_ms / 1000.0
    in_flight: set[asyncio.Task[None]] = set()
    offsets, payloads = arrivals.offsets_s.tolist(), arrivals.payloads.tolist()
    clock = time.monotonic
    for n, (offset, index) in enumerate(zip(offsets[: spec.max_requests], payloads[: spec.max_requests], strict=True)):
        intended = start_at + offset
        delay = intended - clock()
        if delay > spin_s:
            await asyncio.sleep(delay - spin_s)
        elif delay <= 0 and n % 16 == 0:
            await asyncio.sleep(0)  # behind schedule: still let the sends start and answers in
        while spin_s and clock() < intended:
            await asyncio.sleep(0)
        while len(in_flight) >= spec.max_in_flight:
            await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
        task = asyncio.create_task(_one(client, rec, index, intended))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    await _drain(in_flight, rec, timeout_s)


async def _closed_loop(client: InferClient, rec: _Recorder, spec: LoadSpec, start_at: float, timeout_s: float) -> None:
    end = rec.window[1]
    budget = iter(range(spec.max_requests))

    async def user() -> None:
        for index in budget:
            now = time.monotonic()
            if now >= end:
                return
            await _one(client, rec, index, now)

    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    tasks = {asyncio.create_task(user()) for _ in range(spec.concurrency)}
    await _drain(tasks, rec, timeout_s)


async def _drain(tasks: set[asyncio.Task[None]], rec: _Recorder, timeout_s: float) -> None:
    """Wait for the last requests, bounded: each has its own timeout, so this is a backstop;
    requests it has to cancel count as `unfinished` errors."""
    if tasks:
        backstop = max(0.0, rec.window[1] - time.monotonic()) + timeout_s + 5.0
        _, pending = await asyncio.wait(tasks, timeout=backstop)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5.0)
            rec.errors["unfinished"] += len(pending)


async def _ticker(rec: _Recorder, sink: Sink, index: int, start_at: float, stop: asyncio.Event) -> None:
    for second in range(1, 100_000):
        try:
            await asyncio.wait_for(stop.wait(), timeout=max(0.0, start_at + second * TICK_S - time.monotonic()))
            return
        except TimeoutError:
            pass
        sink(("tick", index, second, histograms.encode(rec.interval), rec.interval_ok, rec.interval_err))
        rec.interval.reset()
        rec.interval_ok = rec.interval_err = 0


async def run_worker(job: WorkerJob, sink: Sink, wait_start: Callable[[], float]) -> WorkerReport:
    """Connect, report ready, wait for the common start time, run the loop, return the report."""
    spec = job.spec
    client = make_client(
        job.target,
        job.payloads,
        channels=spec.grpc_channels,
        max_connections=spec.max_in_flight if spec.mode == "open" else spec.concurrency,
    )
    connect_started = time.monotonic()
    await client.connect(spec.concurrency if spec.mode == "closed" else min(64, spec.max_in_flight))
    connect_s = time.monotonic() - connect_started
    # Everything built so far lives for the whole run: keep it out of the collector's full passes,
    # so a gen-2 collection in the generator does not show up as server latency.
    gc.collect()
    gc.freeze()
    sink(("ready", job.index))
    start_at = await asyncio.to_thread(wait_start)
    rec = _Recorder(spec, start_at, job.mix)
    stop = asyncio.Event()
    ticker = asyncio.create_task(_ticker(rec, sink, job.index, start_at, stop))
    cpu0, wall0 = time.process_time(), time.monotonic()
    try:
        if job.arrivals is not None:
            await _scheduled_loop(client, rec, spec, job.arrivals, start_at, job.target.request_timeout_s)
        elif spec.mode == "open":
            await _open_loop(client, rec, spec, start_at, job.target.request_timeout_s)
        else:
            await _closed_loop(client, rec, spec, start_at, job.target.request_timeout_s)
    finally:
        cpu_s, wall_s = time.process_time() - cpu0, time.monotonic() - wall0
        stop.set()
        await ticker
        await client.close()
    return WorkerReport(
        index=job.index,
        latency=histograms.encode(rec.latency),
        service=histograms.encode(rec.service),
        send_lag=histograms.encode(rec.lag),
        ok=rec.ok,
        errors=dict(rec.errors),
        sent=rec.sent,
        missed_sends=rec.missed,
        cpu_s=cpu_s,
        wall_s=wall_s,
        first_error=rec.first_error,
        connect_s=connect_s,
        per_model=rec.tallies(),
    )


def worker_main(job: WorkerJob, queue: Any, go: Any, start_value: Any) -> None:
    """Entry point of a spawned generator process; everything it says goes through `queue`."""
    if job.spec.cpus:
        os.sched_setaffinity(0, job.spec.cpus)
    # Other threads (the result queue's feeder) share the GIL with the event loop: with the default
    # 5 ms switch interval a timer wake-up can wait that long for the GIL, and sends go out late.
    sys.setswitchinterval(0.0005)

    def wait_start() -> float:
        if not go.wait(timeout=120.0):
            raise TimeoutError("no start signal from the parent within 120 s")
        return float(start_value.value)

    try:
        report = _run(run_worker(job, queue.put, wait_start))
    except BaseException as exc:
        queue.put(("failed", job.index, f"{type(exc).__name__}: {exc}"))
        raise
    queue.put(("done", job.index, report))


def _run(coro: Any) -> WorkerReport:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)  # type: ignore[no-any-return]
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)  # type: ignore[no-any-return]
