"""Rollouts shared by a fleet: three `tessera serve` processes, one redis-server, traffic over all three."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from redis import Redis

from server.routing import FleetStore, RolloutState
from server.routing.fleet_store import STALE

from ..polling import wait_until
from .replicas import Replica, Traffic, tabular

FAST = {
    "shadow": {"percent": 100, "duration_seconds": 0.5, "min_requests": 20},
    "canary": {"steps": [20, 50, 100], "step_seconds": 0.5, "min_requests": 6},
    # Latency is not what these tests judge (a few busy cores): keep that threshold wide.
    "analysis": {"max_p99_ratio": 100, "min_agreement": 0.99, "failure_limit": 1},
}


def _phases(replicas: list[Replica], model: str) -> list[str]:
    return [r.rollout(model)["phase"] for r in replicas]


def _start(replica: Replica, model: str, spec: dict[str, object]) -> dict[str, object]:
    status, body = replica.call("POST", f"/v2/models/{model}/rollout", {"candidate_version": 2, **spec})
    assert status == 200, body
    return dict(body)


def _events(redis_url: str, model: str, event: str) -> int:
    async def read() -> int:
        store = FleetStore(redis_url)
        try:
            return sum(1 for e in await store.events(model) if e["event"] == event)
        finally:
            await store.close()
    return asyncio.run(read())


def test_one_rollout_per_model_for_the_fleet_promotes_or_rolls_back_everywhere(fleet, tmp_path, own_redis):
    repo = tmp_path / "repo"
    tabular(repo, "same", candidate_seed=7)
    tabular(repo, "differ", candidate_seed=99)
    replicas = fleet(repo)
    with Traffic(replicas, ["same", "differ"]) as traffic:
        wait_until(lambda: len(traffic.answers) > 20, message="traffic")
        assert _start(replicas[0], "same", FAST)["phase"] == "SHADOW"
        assert _start(replicas[1], "differ", FAST)["phase"] == "SHADOW"
        # Started on one replica each, both rollouts reach all three within a tick or two.
        wait_until(lambda: _phases(replicas, "same") != ["NONE"] * 3 and "NONE" not in _phases(replicas, "same")
                 and "NONE" not in _phases(replicas, "differ"), timeout_s=5, message="rollouts on every replica")
        # A second rollout of the same model through another replica is refused: one per model, fleet-wide.
        status, body = replicas[2].call("POST", "/v2/models/same/rollout", {"candidate_version": 2, **FAST})
        assert status == 400 and "already has a rollout" in body["error"]
        wait_until(lambda: _phases(replicas, "same") == ["PROMOTED"] * 3, timeout_s=40, message="promoted everywhere")
        wait_until(lambda: _phases(replicas, "differ") == ["ROLLED_BACK"] * 3, timeout_s=40,
                 message=lambda: f"rolled back everywhere: {[r.rollout('differ') for r in replicas]}")
        time.sleep(0.3)
    assert traffic.errors == []
    url = f"redis://127.0.0.1:{own_redis.port}/0"
    assert _events(url, "same", "promoted") == 1 and _events(url, "differ", "rolled_back") == 1
    assert _events(url, "differ", "promoted") == 0
    # The fleet judged with every replica's evidence: each replica served part of it.
    for replica in replicas:
        assert replica.infer("same") == "2" and replica.infer("differ") == "1"
    assert "outputs agree on" in replicas[2].rollout("differ")["reason"]


def test_canary_split_is_the_same_on_every_replica(fleet, tmp_path):
    repo = tmp_path / "repo"
    tabular(repo, "split", candidate_seed=7)
    replicas = fleet(repo)
    _start(replicas[0], "split", {"shadow": {"percent": 0},
                                  "canary": {"steps": [30, 100], "step_seconds": 3600, "min_requests": 1}})
    wait_until(lambda: _phases(replicas, "split") == ["CANARY"] * 3, timeout_s=5, message="canary everywhere")
    versions: dict[int, str] = {}

    def send(replica: int) -> None:  # keys spread over the replicas, one caller per replica
        for i in range(replica, 10_000, 3):
            versions[i] = replicas[replica].infer("split", key=f"user-{i}")

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(send, range(3)))
    share = list(versions.values()).count("2") / 10_000
    assert abs(share - 0.30) <= 0.02, share
    for i in range(0, 10_000, 50):  # a key gets the same version from every replica
        assert {r.infer("split", key=f"user-{i}") for r in replicas} == {versions[i]}


def test_killing_the_leader_mid_canary_hands_the_rollout_on(fleet, tmp_path, own_redis):
    repo = tmp_path / "repo"
    tabular(repo, "tabular", candidate_seed=7)
    replicas = fleet(repo)
    url = f"redis://127.0.0.1:{own_redis.port}/0"
    lease = Redis.from_url(url)
    spec = {"shadow": {"percent": 0}, "canary": {"steps": [10, 20, 40, 100], "step_seconds": 0.6,
                                                 "min_requests": 4},
            "analysis": {"max_p99_ratio": 100}}
    with Traffic(replicas, ["tabular"]) as traffic:
        _start(replicas[1], "tabular", spec)
        wait_until(lambda: replicas[0].rollout("tabular").get("step", -1) >= 1, timeout_s=20, message="second step")
        token, _, holder = lease.get("tessera:rollouts:leader").decode().partition(" ")
        leader = next(r for r in replicas if r.name == holder)
        at_kill = leader.rollout("tabular")
        step_at_kill = at_kill["step"]
        assert at_kill["phase"] == "CANARY"
        traffic.remove(leader)
        leader.kill()
        survivors = [r for r in replicas if r is not leader]
        took_over = wait_until(lambda: (held := lease.get("tessera:rollouts:leader")) is not None
                             and int(held.split()[0]) > int(token), timeout_s=10, message="a new leader")
        assert took_over < 3.0  # lease 0.5 s (three 0.1 s ticks) + a tick, on a busy machine
        assert survivors[0].rollout("tabular")["step"] >= step_at_kill  # goes on from its step
        wait_until(lambda: _phases(survivors, "tabular") == ["PROMOTED"] * 2, timeout_s=40, message="promoted")
        time.sleep(0.3)
    assert traffic.errors == []
    assert _events(url, "tabular", "promoted") == 1

    async def stale_write() -> tuple[int, RolloutState]:
        store = FleetStore(url)
        try:
            state, revision = (await store.read_all())["tabular"]
            forged = RolloutState.from_json({**state.to_json(), "phase": "ROLLED_BACK", "weight": 0.0})
            result = await store.write(forged, token=int(token), expected_revision=revision, event="rolled_back")
            return result, (await store.read_all())["tabular"][0]
        finally:
            await store.close()

    result, after = asyncio.run(stale_write())
    assert result == STALE  # the old leader's token is behind the fence: refused
    assert after.phase.value == "PROMOTED"
    lease.close()


def test_redis_restarting_mid_rollout_fails_no_request_and_the_rollout_resumes(fleet, tmp_path, own_redis):
    repo = tmp_path / "repo"
    tabular(repo, "tabular", candidate_seed=7)
    replicas = fleet(repo)
    spec = {"shadow": {"percent": 0}, "canary": {"steps": [20, 50, 100], "step_seconds": 0.6, "min_requests": 4},
            "analysis": {"max_p99_ratio": 100}}
    with Traffic(replicas, ["tabular"]) as traffic:
        _start(replicas[2], "tabular", spec)
        wait_until(lambda: _phases(replicas, "tabular") == ["CANARY"] * 3, timeout_s=5, message="canary")
        own_redis.stop()
        served = len(traffic.answers)
        time.sleep(1.0)
        assert len(traffic.answers) > served  # still serving, on the applied split
        assert all(p == "CANARY" for p in _phases(replicas, "tabular"))
        own_redis.start()
        wait_until(lambda: _phases(replicas, "tabular") == ["PROMOTED"] * 3, timeout_s=40, message="resumed")
    assert traffic.errors == []


def test_promote_and_abort_through_any_replica_act_on_all(fleet, tmp_path: Path):
    repo = tmp_path / "repo"
    tabular(repo, "kept", candidate_seed=7)
    tabular(repo, "dropped", candidate_seed=7)
    replicas = fleet(repo)
    hold = {"shadow": {"percent": 0}, "canary": {"steps": [50], "step_seconds": 3600}}
    _start(replicas[0], "kept", hold)
    _start(replicas[0], "dropped", hold)
    wait_until(lambda: _phases(replicas, "kept") + _phases(replicas, "dropped") == ["CANARY"] * 6, timeout_s=5,
             message="canary")
    assert replicas[1].call("POST", "/v2/models/kept/rollout/promote", {"reason": "by hand"})[0] == 200
    assert replicas[2].call("POST", "/v2/models/dropped/rollout/abort", {"reason": "by hand"})[0] == 200
    wait_until(lambda: _phases(replicas, "kept") == ["PROMOTED"] * 3, timeout_s=5, message="promoted")
    wait_until(lambda: _phases(replicas, "dropped") == ["ABORTED"] * 3, timeout_s=5, message="aborted")
    assert {r.infer("kept") for r in replicas} == {"2"}
    assert {r.infer("dropped") for r in replicas} == {"1"}
