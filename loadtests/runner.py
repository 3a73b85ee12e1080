"""Runs one load step over several generator processes and merges what they measured.

The parent spawns the processes, starts them together, prints the live progress line from their
one-second ticks, scrapes the server's /metrics at the edges of the measured window, and merges
the processes' HDR histograms exactly. It never sends a request itself.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import queue as queue_module
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from . import histograms, server_metrics
from .generator import WorkerJob, WorkerReport, run_worker, worker_main
from .results import CLIENT_CPU_BUSY, CLIENT_MISSED_SENDS, ModelResult, StepResult
from .spec import LoadSpec, Target, split_spec
from .traffic import Arrivals, Mix

__all__ = ["Progress", "make_jobs", "merge_reports", "run_step", "scrape_target"]

START_TIMEOUT_S = 60.0


class Progress:
    """The live line: one update per second of load, merged over processes."""

    def __init__(self, label: str, processes: int, warmup_s: float, stream: TextIO | None = None) -> None:
        self.label, self.processes, self.warmup_s = label, processes, warmup_s
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._seconds: dict[int, list[tuple[bytes, int, int]]] = {}

    def tick(self, second: int, encoded: bytes, ok: int, errors: int) -> None:
        parts = self._seconds.setdefault(second, [])
        parts.append((encoded, ok, errors))
        if len(parts) == self.processes:
            self._print(second, self._seconds.pop(second))

    def _print(self, second: int, parts: list[tuple[bytes, int, int]]) -> None:
        merged = histograms.summarize(histograms.merge_encoded(p[0] for p in parts))
        ok, errors = sum(p[1] for p in parts), sum(p[2] for p in parts)
        phase = "warmup" if second <= self.warmup_s else "load"
        line = (
            f"[{self.label}] {second:>3d}s {phase:<6} {ok:>8d} ok/s  p50 {merged.p50_ms:8.2f} ms  "
            f"p99 {merged.p99_ms:8.2f} ms  errors {errors}"
        )
        if self.tty:
            self.stream.write("\r" + line + "\033[K")
        elif second % 5 == 0:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def run_step(
    target: Target,
    spec: LoadSpec,
    payloads: Sequence[bytes],
    *,
    progress: Progress | None = None,
    inline: bool = False,
    mix: Mix | None = None,
    arrivals: Arrivals | None = None,
    ray_address: str | None = None,
) -> StepResult:
    """Run one step and return the merged result. Raises RuntimeError when a generator fails.

    `mix` gives per-model results; `arrivals` (open loop) replaces the rate with explicit send times,
    split round-robin over the generators. `inline` runs a single generator in this process (tests;
    no progress line, no server scrape in between). `ray_address` runs the generators as Ray actors
    on that cluster instead of local processes (loadtests.distributed). Bounded by START_TIMEOUT_S +
    warmup + duration + request timeout + a margin.
    """
    jobs = make_jobs(target, spec, payloads, mix, arrivals)
    before: server_metrics.Scrape | None = None
    after: server_metrics.Scrape | None = None
    if ray_address is not None:
        from .distributed import run_actors  # Ray is optional: imported only when asked for

        reports, before, after = run_actors(ray_address, target, spec, jobs, mix, progress)
    elif inline and len(jobs) == 1:
        before = scrape_target(target, mix)
        report = _run_inline(jobs[0])
        after = scrape_target(target, mix)
        reports = [report]
    else:
        reports, before, after = _run_processes(target, spec, jobs, progress, mix)
    return merge_reports(target, spec, reports, server_metrics.server_view(before, after), mix)


def make_jobs(
    target: Target, spec: LoadSpec, payloads: Sequence[bytes], mix: Mix | None, arrivals: Arrivals | None
) -> list[WorkerJob]:
    """One job per generator: the spec split over them, and their share of the arrivals."""
    specs = split_spec(spec)
    parts = arrivals.split(len(specs)) if arrivals is not None else [None] * len(specs)
    return [WorkerJob(i, target, s, payloads, mix, a) for i, (s, a) in enumerate(zip(specs, parts, strict=True))]


def scrape_target(target: Target, mix: Mix | None = None) -> server_metrics.Scrape | None:
    """The server's /metrics for the models under load (None: not configured or unreachable)."""
    if not target.metrics_url:
        return None
    return server_metrics.scrape(target.metrics_url, target, mix.models if mix is not None else (target.model,))


def _run_inline(job: WorkerJob) -> WorkerReport:
    return asyncio.run(run_worker(job, lambda message: None, lambda: time.monotonic() + 0.05))


def _run_processes(
    target: Target, spec: LoadSpec, jobs: list[WorkerJob], progress: Progress | None, mix: Mix | None
) -> tuple[list[WorkerReport], server_metrics.Scrape | None, server_metrics.Scrape | None]:
    ctx = mp.get_context("spawn")  # never fork a process that may hold grpc threads
    messages: Any = ctx.Queue()
    go, start_value = ctx.Event(), ctx.Value("d", 0.0)
    procs = [ctx.Process(target=worker_main, args=(job, messages, go, start_value), daemon=True) for job in jobs]
    for proc in procs:
        proc.start()
    reports: dict[int, WorkerReport] = {}
    before = after = None
    scraped_before = scraped_after = False
    try:
        _await_ready(messages, procs)
        start_at = time.monotonic() + 0.1
        start_value.value = start_at
        go.set()
        window = (start_at + spec.warmup_s, start_at + spec.warmup_s + spec.duration_s)
        deadline = window[1] + target.request_timeout_s + 30.0
        while len(reports) < len(jobs):
            now = time.monotonic()
            if now > deadline:
                raise RuntimeError("generator processes did not finish in time")
            if not scraped_before and now >= window[0]:
                before, scraped_before = scrape_target(target, mix), True
            if not scraped_after and now >= window[1]:
                after, scraped_after = scrape_target(target, mix), True
            _handle(_get(messages, 0.1), reports, progress)
        if not scraped_after:  # the last report can arrive before the loop saw the window end
            after = scrape_target(target, mix)
    finally:
        if progress is not None:
            progress.close()
        for proc in procs:
            proc.join(timeout=5.0)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5.0)
            if not proc.is_alive():
                proc.close()
        messages.close()
        messages.join_thread()
    return [reports[i] for i in sorted(reports)], before, after


def _await_ready(messages: Any, procs: list[Any]) -> None:
    ready: set[int] = set()
    deadline = time.monotonic() + START_TIMEOUT_S
    while len(ready) < len(procs):
        if time.monotonic() > deadline or any(p.exitcode not in (None, 0) for p in procs):
            raise RuntimeError("generator processes failed to start")
        message = _get(messages, 0.1)
        if message is None:
            continue
        if message[0] == "failed":
            raise RuntimeError(f"generator {message[1]} failed: {message[2]}")
        if message[0] == "ready":
            ready.add(message[1])


def _get(messages: Any, timeout_s: float) -> tuple[Any, ...] | None:
    try:
        return messages.get(timeout=timeout_s)  # type: ignore[no-any-return]
    except queue_module.Empty:
        return None


def _handle(message: tuple[Any, ...] | None, reports: dict[int, WorkerReport], progress: Progress | None) -> None:
    if message is None:
        return
    kind = message[0]
    if kind == "tick" and progress is not None:
        progress.tick(message[2], message[3], message[4], message[5])
    elif kind == "done":
        reports[message[1]] = message[2]
    elif kind == "failed":
        raise RuntimeError(f"generator {message[1]} failed: {message[2]}")


def merge_reports(
    target: Target,
    spec: LoadSpec,
    reports: list[WorkerReport],
    server: server_metrics.ServerView | None,
    mix: Mix | None = None,
) -> StepResult:
    """One StepResult from the generators' reports: histograms merged exactly, counts summed."""
    latency = histograms.merge_encoded(r.latency for r in reports)
    service = histograms.merge_encoded(r.service for r in reports)
    lag = histograms.summarize(histograms.merge_encoded(r.send_lag for r in reports))
    ok = sum(r.ok for r in reports)
    errors: dict[str, int] = {}
    for report in reports:
        for kind, n in report.errors.items():
            errors[kind] = errors.get(kind, 0) + n
    measured_sends = lag.count
    missed = sum(r.missed_sends for r in reports) / measured_sends if measured_sends else 0.0
    cpu = max((r.cpu_s / r.wall_s if r.wall_s else 0.0) for r in reports)
    return StepResult(
        protocol=target.protocol if target.protocol == "grpc" else f"http-{target.http_encoding}",
        mode=spec.mode if spec.mode == "closed" else f"open-{spec.arrival}",
        level=spec.level,
        duration_s=spec.duration_s,
        processes=len(reports),
        throughput_rps=ok / spec.duration_s,
        offered_rps=(measured_sends if spec.mode == "open" else ok + sum(errors.values())) / spec.duration_s,
        ok=ok,
        errors=errors,
        latency=histograms.summarize(latency),
        service=histograms.summarize(service),
        send_lag_p99_ms=lag.p99_ms,
        missed_send_fraction=missed,
        generator_cpu=cpu,
        server=server,
        warnings=_warnings(spec, reports, lag.p99_ms, missed, cpu),
        latency_hdr=histograms.encode(latency).decode(),
        model=target.model if mix is None else "+".join(mix.models),
        first_error=next((r.first_error for r in reports if r.first_error), ""),
        per_model=_per_model(reports, mix),
    )


def _per_model(reports: list[WorkerReport], mix: Mix | None) -> tuple[ModelResult, ...]:
    if mix is None:
        return ()
    sent = {m: sum(r.per_model[m].sent for r in reports) for m in mix.models}
    total = sum(sent.values())
    results = []
    for model in mix.models:
        latency = histograms.merge_encoded(r.per_model[model].latency for r in reports)
        errors: dict[str, int] = {}
        for report in reports:
            for kind, n in report.per_model[model].errors.items():
                errors[kind] = errors.get(kind, 0) + n
        results.append(
            ModelResult(
                model=model,
                sent=sent[model],
                share=sent[model] / total if total else 0.0,
                ok=sum(r.per_model[model].ok for r in reports),
                errors=errors,
                latency=histograms.summarize(latency),
                latency_hdr=histograms.encode(latency).decode(),
            )
        )
    return tuple(results)


def _warnings(
    spec: LoadSpec, reports: list[WorkerReport], lag_p99_ms: float, missed: float, cpu: float
) -> tuple[str, ...]:
    notes = []
    if spec.mode == "open" and missed > CLIENT_MISSED_SENDS:
        notes.append(
            f"generator missed {missed:.1%} of send times by > {spec.late_send_ms:g} ms "
            f"(p99 lag {lag_p99_ms:.1f} ms): the client is a bottleneck; add --processes or cores"
        )
    if cpu >= CLIENT_CPU_BUSY:
        notes.append(
            f"a generator process used {cpu:.0%} of a core: the client may be the bottleneck; add --processes or cores"
        )
    usable = len(spec.cpus) if spec.cpus else len(os.sched_getaffinity(0))
    if len(reports) > usable:
        notes.append(f"{len(reports)} generator processes share {usable} cores")
    connect_s = max(r.connect_s for r in reports)
    if connect_s > 1.0:
        notes.append(f"connecting to the server took {connect_s:.1f} s (before the load started)")
    return tuple(notes)
