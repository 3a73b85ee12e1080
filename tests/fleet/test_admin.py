"""Repository admin for a fleet (explicit mode): a load or unload through one replica reaches every replica."""

from __future__ import annotations

from ..polling import wait_until
from ..sample_models import make_models
from .replicas import Replica, tabular


def _ready(replica: Replica, model: str) -> bool:
    return replica.call("GET", f"/v2/models/{model}/ready")[0] == 200


def test_explicit_load_and_unload_through_one_replica_reach_every_replica(fleet, tmp_path):
    repo = tmp_path / "repo"
    tabular(repo, "tabular", candidate_seed=7)
    make_models.make_mlp(repo, "extra", [8, 16, 4])
    replicas = fleet(repo, "--model-control-mode", "explicit", "--load-model", "tabular",
                     "--fleet-admin-timeout-s", "20")
    assert not any(_ready(r, "extra") for r in replicas)

    status, body = replicas[0].call("POST", "/v2/repository/models/extra/load")
    assert status == 200, body  # answered once every replica has loaded it
    assert all(_ready(r, "extra") for r in replicas)
    status, index = replicas[2].call("GET", "/v2/repository/fleet")
    assert status == 200 and set(index["replicas"]) == {r.name for r in replicas}
    wait_until(lambda: all(any(e["name"] == "extra" and e["state"] == "READY" for e in entries)
                         for entries in replicas[2].call("GET", "/v2/repository/fleet")[1]["replicas"].values()),
             timeout_s=5, message="every replica's index shows extra READY")

    late = fleet(repo, "--model-control-mode", "explicit", "--load-model", "tabular", count=1)[0]
    assert _ready(late, "extra")  # a replica that starts later replays the fleet's commands

    status, body = replicas[1].call("POST", "/v2/repository/models/extra/unload")
    assert status == 200, body
    assert not any(_ready(r, "extra") for r in [*replicas, late])
    assert all(_ready(r, "tabular") for r in [*replicas, late])

    status, body = replicas[1].call("POST", "/v2/repository/models/missing/load")
    assert status == 404, body  # refused where it was asked, sent nowhere
