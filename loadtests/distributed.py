"""Generators as Ray actors on an existing cluster, for when one machine cannot offer the load.

Ray places, starts and stops the actors and carries their reports back; nothing here coordinates
beyond that. Each actor runs the same generator as a local process (loadtests.generator), pinned to
cores of its own node, and returns the same WorkerReport, whose HDR histograms the driver merges
exactly. The actors start together at a wall-clock time chosen by the driver (the nodes' clocks are
assumed NTP-synchronised; on one machine they are the same clock). Ray is imported only here, and
only when `--ray-address` is given.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from . import server_metrics
from .generator import WorkerJob, WorkerReport, run_worker
from .spec import LoadSpec, Target
from .traffic import Mix

if TYPE_CHECKING:
    from .runner import Progress

__all__ = ["GeneratorHost", "place", "run_actors"]

START_LEAD_S = 1.0
"""The common start is this far after the last actor reported ready (covers the `go` calls' latency)."""
READY_TIMEOUT_S = 120.0


class GeneratorHost:
    """One generator in a Ray actor: `prepare` connects (in a thread with its own event loop), `go`
    releases it at a wall-clock time, `result` waits for its report."""

    def __init__(self, job: WorkerJob, rank: int, sharing: int) -> None:
        """Pinned to slice `rank` of `sharing` of its node's cores (job.spec.cpus, else the cores
        this process may use); all of them when there are fewer cores than generators."""
        cores = sorted(job.spec.cpus or os.sched_getaffinity(0))
        os.sched_setaffinity(0, cores[rank::sharing] if len(cores) >= sharing else cores)
        sys.setswitchinterval(0.0005)  # as worker_main: timer wake-ups must not wait for the GIL
        self._job = job
        self._ready = threading.Event()
        self._go = threading.Event()
        self._start_wall = 0.0
        self._report: WorkerReport | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def prepare(self) -> dict[str, Any]:
        """Connect to the target; returns this actor's node, process and cores. Raises on failure."""
        self._thread.start()
        if not self._ready.wait(READY_TIMEOUT_S) or self._error is not None:
            raise RuntimeError(f"generator {self._job.index} did not connect: {self._error}")
        return {"pid": os.getpid(), "cores": sorted(os.sched_getaffinity(0))}

    def go(self, start_wall: float) -> None:
        self._start_wall = start_wall
        self._go.set()

    def result(self) -> WorkerReport:
        self._thread.join()
        if self._error is not None or self._report is None:
            raise RuntimeError(f"generator {self._job.index} failed: {self._error!r}")
        return self._report

    def _sink(self, message: tuple[Any, ...]) -> None:
        if message[0] == "ready":
            self._ready.set()

    def _wait_start(self) -> float:
        if not self._go.wait(READY_TIMEOUT_S):
            raise TimeoutError("no start signal within 120 s")
        return time.monotonic() + (self._start_wall - time.time())

    def _run(self) -> None:
        try:
            try:
                import uvloop

                with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                    self._report = runner.run(run_worker(self._job, self._sink, self._wait_start))
            except ImportError:
                self._report = asyncio.run(run_worker(self._job, self._sink, self._wait_start))
        except BaseException as exc:
            self._error = exc
            self._ready.set()


def place(jobs: int, nodes: list[str]) -> list[tuple[str, int, int]]:
    """(node id, rank on the node, generators on the node) for each job, round-robin over the nodes."""
    if not nodes:
        raise RuntimeError("the Ray cluster has no live node with CPUs")
    assigned = [nodes[i % len(nodes)] for i in range(jobs)]
    return [(node, assigned[:i].count(node), assigned.count(node)) for i, node in enumerate(assigned)]


def run_actors(
    address: str,
    target: Target,
    spec: LoadSpec,
    jobs: list[WorkerJob],
    mix: Mix | None,
    progress: Progress | None,
) -> tuple[list[WorkerReport], server_metrics.Scrape | None, server_metrics.Scrape | None]:
    """Run the jobs as actors on the cluster at `address` (joined if this process is not connected yet),
    scrape the server at the window's edges, return the reports. Raises RuntimeError."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from .runner import scrape_target

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    described: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    nodes = [n["NodeID"] for n in described if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) >= 1]
    actor_class: Any = ray.remote(num_cpus=0)(GeneratorHost)  # pinned by affinity, not by Ray's CPU count
    actors: list[Any] = [
        actor_class.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(
            job, rank, sharing
        )
        for job, (node, rank, sharing) in zip(jobs, place(len(jobs), nodes), strict=True)
    ]
    try:
        ray.get([a.prepare.remote() for a in actors], timeout=READY_TIMEOUT_S)
        start_wall = time.time() + START_LEAD_S
        ray.get([a.go.remote(start_wall) for a in actors], timeout=30.0)
        start_at = time.monotonic() + (start_wall - time.time())
        window = (start_at + spec.warmup_s, start_at + spec.warmup_s + spec.duration_s)
        deadline = window[1] + target.request_timeout_s + 60.0
        pending = [a.result.remote() for a in actors]
        before = after = None
        scraped_before = scraped_after = False
        while True:
            now = time.monotonic()
            if not scraped_before and now >= window[0]:
                before, scraped_before = scrape_target(target, mix), True
            if not scraped_after and now >= window[1]:
                after, scraped_after = scrape_target(target, mix), True
            done, _ = ray.wait(pending, num_returns=len(pending), timeout=0.1)
            if len(done) == len(pending):
                break
            if now > deadline:
                raise RuntimeError("generator actors did not finish in time")
        reports: list[WorkerReport] = ray.get(pending)
        if not scraped_after:
            after = scrape_target(target, mix)
    except ray.exceptions.RayError as exc:
        raise RuntimeError(f"Ray generator failed: {exc}") from exc
    finally:
        if progress is not None:
            progress.close()
        for actor in actors:
            ray.kill(actor)
    return sorted(reports, key=lambda r: r.index), before, after
