"""FleetStore against a real redis-server: the lease, its fencing token, and compare-and-set writes."""

from __future__ import annotations

import os

import pytest

from server.routing import FleetStore, Phase, RolloutSpec, RolloutState, replica_name
from server.routing.fleet_store import ADMIN_TOKEN, CONFLICT, STALE
from server.settings import ServerSettings
from tests.drift.conftest import drift_redis_proc, drift_redisdb, redis_url

__all__ = ["drift_redis_proc", "drift_redisdb", "redis_url"]


@pytest.fixture
async def store(redis_url: str):
    s = FleetStore(redis_url)
    yield s
    await s.close()


def _state(phase: Phase = Phase.CANARY, step: int = 0) -> RolloutState:
    return RolloutState("m", 1, 2, RolloutSpec(candidate_version=2), phase, step=step, weight=5.0)


async def test_one_replica_holds_the_lease_and_each_new_holder_gets_a_higher_token(store: FleetStore):
    first = await store.acquire("a", 0.2)
    assert first > 0 and await store.acquire("b", 0.2) == 0  # held
    assert await store.acquire("a", 0.2) == first  # renewed, same token
    await store.release("a")
    second = await store.acquire("b", 5.0)
    assert second > first
    assert await store.leader() == (second, "b")


async def test_a_write_with_an_older_token_than_the_newest_lease_is_refused(store: FleetStore):
    old = await store.acquire("a", 5.0)
    assert await store.write(_state(), token=old, expected_revision=0, event="rollout_started") == 1
    await store.release("a")
    new = await store.acquire("b", 5.0)
    # The old leader, unaware, tries to promote: refused before it can change anything.
    assert await store.write(_state(Phase.PROMOTED), token=old, expected_revision=1, event="promoted") == STALE
    assert await store.write(_state(step=1), token=new, expected_revision=1, event="step") == 2
    (state, revision), = (await store.read_all()).values()
    assert (state.phase, state.step, revision) == (Phase.CANARY, 1, 2)
    assert [e["event"] for e in await store.events("m")] == ["rollout_started", "step"]


async def test_a_write_based_on_an_old_revision_is_refused(store: FleetStore):
    assert await store.write(_state(), token=ADMIN_TOKEN, expected_revision=0, event="rollout_started") == 1
    assert await store.write(_state(Phase.ABORTED), token=ADMIN_TOKEN, expected_revision=1, event="aborted") == 2
    # A leader that read revision 1 (before the abort) cannot step the aborted rollout on.
    token = await store.acquire("a", 5.0)
    assert await store.write(_state(step=1), token=token, expected_revision=1, event="step") == CONFLICT
    assert (await store.load_all())["m"].phase is Phase.ABORTED


async def test_a_fence_lost_with_redis_data_restarts_above_the_floor(store: FleetStore):
    token = await store.acquire("a", 5.0)
    await store.client.flushdb()  # Redis restarted without persistence
    assert await store.acquire("b", 5.0, floor=token + 10) == token + 11


@pytest.mark.parametrize(("replica_id", "workers", "unique"), [
    pytest.param("pod-a", 1, False, id="named-pod"),
    pytest.param("pod-a", 2, True, id="named-pod-with-workers"),
    pytest.param("", 1, True, id="unnamed"),
])
def test_every_process_has_its_own_name_in_the_fleet(replica_id: str, workers: int, unique: bool) -> None:
    name = replica_name(ServerSettings(model_repository=".", replica_id=replica_id, workers=workers))
    assert name.startswith(replica_id) and name.endswith(f"-{os.getpid()}") == unique
