"""Generators as Ray actors on a local Ray cluster (started here, on loopback): their HDR histograms
merge into the same latency distribution one local generator measures at the same total rate.

Noise stated: the server shares this process and a 2-core VM with two actor processes (one more
generator than the local run, competing for the same two cores), so this is a functional check:
the request counts within Poisson noise (5 sigma), every answer once in the merged histogram, no
error, the server's view scraped by the driver. The percentiles are printed, not compared: on this
shared VM (load average 7-12 from other test runs) one stall moved even a p50 from 2 to 13 ms between
two runs of the same local generator. The full
comparison (a separate server process, interleaved rounds, local repeats as the noise floor) is
`python -m benchmarks.ray_vs_local`, in BENCHMARKS.md.
"""

from __future__ import annotations

import gc
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from loadtests import histograms
from loadtests.distributed import place
from loadtests.encoding import encode_payloads
from loadtests.inputs import fetch_model_info, random_samples
from loadtests.runner import run_step
from loadtests.spec import LoadSpec, Target

from ..conftest import RunningServer

ray = pytest.importorskip("ray", reason="the `ray` extra is not installed")

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]


def test_placement_is_round_robin_and_shares_a_node_between_its_generators() -> None:
    assert place(3, ["n1", "n2"]) == [("n1", 0, 2), ("n2", 0, 1), ("n1", 1, 2)]
    with pytest.raises(RuntimeError, match="no live node"):
        place(1, [])


@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    """A local Ray cluster on loopback in its own temporary directory (other sessions on this machine
    may run Ray too). Ray's own start-up can time out on this loaded VM: one retry, then a skip that
    says so; whatever it leaves behind is collected here, not in a later test."""
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths live under it
    started = time.monotonic()
    error: Exception | None = None
    try:
        for _ in range(2):
            try:
                ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
                         _temp_dir=temp, logging_level="WARNING", log_to_driver=False)
                error = None
                break
            # Ray raises RuntimeError ("Timed out waiting for file .../gcs_server_port...") or a bare
            # Exception ("The current node timed out during startup...") when its processes start slowly.
            except Exception as exc:
                error = exc
                ray.shutdown()
        if error is not None:
            pytest.skip(f"a local Ray cluster did not start on this machine: {error}")
        print(f"ray started in {time.monotonic() - started:.1f} s")
        yield ray
    finally:
        ray.shutdown()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()  # Ray's Popen objects, now dead processes
        shutil.rmtree(temp, ignore_errors=True)


def test_two_actors_merge_their_histograms_like_one_local_generator_at_the_same_rate(
    local_ray: Any, running_server: RunningServer
) -> None:
    target = Target(port=running_server.app.grpc_port, model="tabular", request_timeout_s=5.0,
                    metrics_url=f"http://127.0.0.1:{running_server.app.http_port}/metrics")
    payloads = encode_payloads(target, random_samples(fetch_model_info(target), count=8))
    rate, duration = 200.0, 3.0
    local = run_step(target, LoadSpec(mode="open", rate_rps=rate, duration_s=duration, warmup_s=0.5, processes=1),
                     payloads)
    actors = run_step(target, LoadSpec(mode="open", rate_rps=rate, duration_s=duration, warmup_s=0.5, processes=2,
                                       seed=1), payloads, ray_address="local")
    print(f"local  {local.ok} ok {local.latency}\nactors {actors.ok} ok {actors.latency}")
    assert actors.processes == 2 and actors.errors == {} and local.errors == {}
    expected = rate * duration
    for step in (local, actors):
        assert abs(step.ok - expected) <= 5 * expected**0.5  # Poisson arrivals at the same total rate
        merged = histograms.decode(step.latency_hdr.encode())
        assert merged.get_total_count() == step.ok  # every answer in the merged histogram, once
    assert actors.server is not None and actors.server.batches > 0  # the driver scraped the window's edges
