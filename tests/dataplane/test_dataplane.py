"""The DataPlane called directly, as both transports call it: names checked, callers authorized once at
its entry (a refusal never reaches the model), admin switched off by default."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from server.auth import Authorizer, Credentials, hash_token
from server.dataplane import DataPlane
from server.errors import InvalidInput, PermissionDenied, Unauthenticated, Unsupported
from server.metrics import Metrics
from server.repository.manager import ModelManager
from server.settings import ServerSettings
from server.tensors import InferRequest

from ..sample_models import make_models


@pytest.fixture
async def dataplane(tmp_path: Path) -> DataPlane:
    make_models.make_samples(tmp_path / "repo")
    tokens = tmp_path / "tokens"
    tokens.write_text(f"app:infer=tabular:{hash_token('t-app')}\nops:admin,read:{hash_token('t-ops')}\n")
    settings = ServerSettings(model_repository=str(tmp_path / "repo"), drift_enabled=False)
    manager = ModelManager(tmp_path / "repo", settings, Metrics())
    await manager.load_all()
    plane = DataPlane(manager, Metrics(), admin_enabled=False, authorizer=Authorizer(tokens))
    yield plane
    await manager.stop()


def _request(model: str) -> InferRequest:
    return InferRequest(model_name=model, inputs={"features": np.ones((1, 8), np.float32)},
                        datatypes={"features": "FP32"})


def _served(plane: DataPlane, model: str) -> int:
    return sum(s.inference_count for s in plane.model_statistics(model, creds=Credentials(token="t-ops")))


async def test_a_caller_with_the_scope_is_served(dataplane: DataPlane) -> None:
    response = await dataplane.infer(_request("tabular"), Credentials(token="t-app"))
    assert set(response.outputs) == {"probabilities", "label"}
    assert _served(dataplane, "tabular") == 1
    # How it was served, for the request log: rows, queue ns, routing, the caller, its batch.
    assert response.served is not None
    rows, queue_ns, routing, caller, (dispatched_ns, compute_ns, batch_rows, batch_requests) = response.served
    assert (rows, routing, caller, batch_rows, batch_requests) == (1, "", "app", 1, 1)  # no router: no label
    assert queue_ns >= 0 and compute_ns > 0 and dispatched_ns > 0


async def test_a_failure_after_routing_names_the_version_it_was_routed_to(dataplane: DataPlane) -> None:
    wrong = InferRequest(model_name="tabular", inputs={"features": np.ones((1, 3), np.float32)},
                         datatypes={"features": "FP32"})
    with pytest.raises(InvalidInput) as raised:
        await dataplane.infer(wrong, Credentials(token="t-app"))
    assert raised.value.route == ("1", "")
    with pytest.raises(PermissionDenied) as refused:  # refused before routing: nowhere to name
        await dataplane.infer(_request("two_input"), Credentials(token="t-app"))
    assert refused.value.route is None


@pytest.mark.parametrize(("creds", "error"), [
    pytest.param(Credentials(), Unauthenticated, id="no-token"),
    pytest.param(Credentials(token="wrong"), Unauthenticated, id="wrong-token"),
    pytest.param(Credentials(token="t-ops"), PermissionDenied, id="no-infer-scope"),
])
async def test_a_refused_caller_never_reaches_the_model(dataplane: DataPlane, creds: Credentials,
                                                        error: type[Exception]) -> None:
    with pytest.raises(error):
        await dataplane.infer(_request("tabular"), creds)
    assert _served(dataplane, "tabular") == 0


async def test_infer_limited_to_a_model_refuses_another(dataplane: DataPlane) -> None:
    with pytest.raises(PermissionDenied, match="may not run inference on model 'two_input'"):
        await dataplane.infer(_request("two_input"), Credentials(token="t-app"))


async def test_names_are_checked_before_anything_else(dataplane: DataPlane) -> None:
    with pytest.raises(InvalidInput, match="invalid model name"):
        await dataplane.load_model("../x", creds=Credentials(token="t-ops"))


async def test_admin_is_off_unless_switched_on(dataplane: DataPlane) -> None:
    with pytest.raises(Unsupported, match="--allow-repository-admin true"):
        await dataplane.unload_model("tabular", creds=Credentials(token="t-ops"))
    assert dataplane.model_ready("tabular", creds=Credentials(token="t-ops"))
