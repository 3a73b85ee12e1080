"""Bearer tokens with scopes on both transports, with unmodified tritonclient: wrong, expired or
missing tokens are UNAUTHENTICATED / 401, a missing scope PERMISSION_DENIED / 403, and neither
reaches the model; health stays open; admin actions and refusals are audit lines."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from server.auth import hash_token

from ..conftest import RunningServer, make_models

PROTOCOLS = [pytest.param("grpc", id="grpc"), pytest.param("http", id="http")]
X = np.random.default_rng(5).random((2, 8), dtype=np.float32)
TOKENS = {  # token -> tokens-file line (without the hash)
    "t-admin": "ops:admin,read,infer",
    "t-infer": "app:infer",
    "t-tabular": "tab-only:infer=tabular",
    "t-read": "dash:read",
    "t-old": "retired:infer,read:expires=1000",
}
REFUSED = {"grpc": {401: "StatusCode.UNAUTHENTICATED", 403: "StatusCode.PERMISSION_DENIED"},
           "http": {401: "401", 403: "403"}}


def tokens_file(path: Path) -> Path:
    lines = []
    for token, entry in TOKENS.items():
        name, scopes, *rest = entry.split(":")
        lines.append(":".join([name, scopes, hash_token(token), *rest]))
    path.write_text("# name:scopes:sha256[:expires=unix_seconds]\n" + "\n".join(lines) + "\n")
    return path


class HttpClient(httpclient.InferenceServerClient):  # type: ignore[misc]
    def __del__(self) -> None:  # the base joins a gevent pool, which fails on the GC's thread
        pass


class Client:
    """One tritonclient (gRPC or HTTP) that sends `token` as a bearer token on every call."""

    def __init__(self, protocol: str, server: RunningServer, token: str | None = None) -> None:
        self.protocol = protocol
        self.module: Any = grpcclient if protocol == "grpc" else httpclient
        self.raw: Any = (grpcclient.InferenceServerClient(server.grpc_url) if protocol == "grpc"
                         else HttpClient(server.http_url))
        self.headers = {"authorization": f"Bearer {token}"} if token is not None else {}
        if protocol == "http":
            self.headers["Content-Type"] = "application/json"

    def infer(self, model: str = "tabular") -> Any:
        inputs = {"tabular": [("features", X)],
                  "two_input": [("a", np.ones((1, 4), np.int32)), ("b", np.ones((1, 4), np.float32))]}[model]
        items = []
        for name, array in inputs:
            item = self.module.InferInput(name, list(array.shape), "FP32" if array.dtype == np.float32 else "INT32")
            item.set_data_from_numpy(array)
            items.append(item)
        return self.raw.infer(model, items, headers=self.headers)

    def refused(self, call: Callable[[], Any]) -> tuple[int, str]:
        """(401 or 403, message) of a refused call, whichever transport."""
        with pytest.raises(InferenceServerException) as info:
            call()
        status = str(info.value.status())
        code = {v: k for k, v in REFUSED[self.protocol].items()}.get(status)
        assert code is not None, f"not a refusal: {status} {info.value.message()}"
        return code, str(info.value.message())

    def close(self) -> None:
        self.raw.close()


def _served(server: RunningServer, model: str = "tabular") -> list[tuple[int, int, int]]:
    """(inferences, successes, failures) of each loaded version: what reached the model."""
    return [(s.inference_count, s.success.count, s.fail.count)
            for s in (mv.stats for mv in server.app.manager.loaded_versions(model))]


@pytest.fixture
def secured(tmp_path: Path, server_factory: Callable[..., RunningServer]) -> RunningServer:
    repo = tmp_path / "repo"
    make_models.make_samples(repo)
    return server_factory(repo, auth_tokens_file=tokens_file(tmp_path / "tokens"), state_dir=tmp_path / "state",
                          drift_enabled=False)


@pytest.fixture(params=PROTOCOLS)
def connect(request: pytest.FixtureRequest, secured: RunningServer) -> Any:
    clients: list[Client] = []

    def make(token: str | None = None) -> Client:
        client = Client(request.param, secured, token)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.mark.parametrize("token", [pytest.param(None, id="no-token"), pytest.param("nope", id="wrong-token"),
                                   pytest.param("t-old", id="expired-token")])
def test_missing_wrong_or_expired_token_is_unauthenticated_and_never_reaches_the_model(
        secured: RunningServer, connect: Any, token: str | None) -> None:
    before = _served(secured)
    client = connect(token)
    code, message = client.refused(client.infer)
    assert code == 401
    assert message == {None: "missing bearer token (send 'authorization: Bearer <token>')",
                       "nope": "invalid bearer token", "t-old": "bearer token expired"}[token]
    assert _served(secured) == before


def test_missing_scope_is_permission_denied_and_never_reaches_the_model(
        secured: RunningServer, connect: Any) -> None:
    before = _served(secured)
    reader, app = connect("t-read"), connect("t-infer")
    assert reader.refused(reader.infer) == (403, "'dash' lacks the 'infer' scope")
    assert app.refused(lambda: app.raw.get_model_metadata("tabular", headers=app.headers)) == (
        403, "'app' lacks the 'read' scope")
    assert app.refused(lambda: app.raw.unload_model("tabular", headers=app.headers)) == (
        403, "'app' lacks the 'admin' scope")
    assert _served(secured) == before
    assert app.infer().as_numpy("probabilities").shape == (2, 3)
    assert reader.raw.get_model_metadata("tabular", headers=reader.headers)


def test_an_inference_checks_its_token_once(secured: RunningServer, connect: Any,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # The transport checks before it reads the body and hands the answer on: the token's hash is
    # computed once per request, not again in the DataPlane.
    authorizer = secured.app.dataplane._authorizer
    checks: list[str | None] = []
    original = authorizer.authorize

    def counted(creds: Any, scope: Any, model: str | None = None) -> Any:
        checks.append(model)
        return original(creds, scope, model)

    monkeypatch.setattr(authorizer, "authorize", counted)
    assert connect("t-infer").infer().as_numpy("probabilities").shape == (2, 3)
    assert checks == ["tabular"]


def test_infer_scope_limited_to_a_model_refuses_another_model(secured: RunningServer, connect: Any) -> None:
    client = connect("t-tabular")
    assert client.infer("tabular").as_numpy("label").shape == (2, 1)
    before = _served(secured, "two_input")
    assert client.refused(lambda: client.infer("two_input")) == (
        403, "'tab-only' may not run inference on model 'two_input'")
    assert _served(secured, "two_input") == before


def test_health_stays_open_without_a_token(secured: RunningServer, connect: Any) -> None:
    client = connect(None)
    assert client.raw.is_server_live() and client.raw.is_server_ready()
    with grpc.insecure_channel(secured.grpc_url) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _audit(server: RunningServer) -> list[dict[str, Any]]:
    server.call(server.app.audit.flush())
    return server.app.audit.read()


def test_admin_actions_and_refusals_are_audit_lines(secured: RunningServer, connect: Any) -> None:
    admin, stranger = connect("t-admin"), connect("nope")
    admin.raw.unload_model("fixed", headers=admin.headers)
    admin.raw.load_model("fixed", headers=admin.headers)
    stranger.refused(lambda: stranger.raw.unload_model("fixed", headers=stranger.headers))
    lines = _audit(secured)
    admin_lines = [(e["action"], e["model"], e["identity"], e["outcome"]) for e in lines if e["event"] == "admin"]
    assert admin_lines == [("unload", "fixed", "ops", "ok"), ("load", "fixed", "ops", "ok")]
    assert all(e["source"].rsplit(":", 1)[0] in ("127.0.0.1", "ipv4:127.0.0.1")
               for e in lines if e["event"] in ("admin", "refused"))
    refused = [e for e in lines if e["event"] == "refused"]
    assert [(e["action"], e["model"], e["outcome"], e["identity"]) for e in refused] == [
        ("unload", "fixed", "unauthenticated", "token:" + hash_token("nope")[:8])]
    assert "nope" not in json.dumps(lines), "a presented token is never written down"


def test_failed_admin_action_is_an_audit_line_with_its_outcome(secured: RunningServer, connect: Any) -> None:
    admin = connect("t-admin")
    with pytest.raises(InferenceServerException):
        admin.raw.load_model("no_such_model", headers=admin.headers)
    (line,) = [e for e in _audit(secured) if e["event"] == "admin"]
    assert (line["action"], line["model"], line["identity"]) == ("load", "no_such_model", "ops")
    assert line["outcome"] != "ok" and line["reason"]


def test_refused_credential_flood_is_bounded_and_counted(secured: RunningServer) -> None:
    conn = http.client.HTTPConnection(secured.http_url)
    for _ in range(300):  # over the audit rate (100 lines per second): the rest are dropped and counted
        conn.request("GET", "/v2/models/tabular", headers={"Authorization": "Bearer nope"})
        assert conn.getresponse().read() and True
    conn.close()
    lines = _audit(secured)
    refused = [e for e in lines if e["event"] == "refused"]
    assert len(refused) >= 100
    assert len(refused) + secured.app.audit.dropped == 300, "every refusal is written or counted"
    assert sum(e["count"] for e in lines if e["event"] == "audit_dropped") <= secured.app.audit.dropped


# -- HTTP only ------------------------------------------------------------------------------------
def _http(server: RunningServer, method: str, path: str, body: bytes = b"",
          headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(server.http_url)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def test_http_401_names_the_bearer_scheme(secured: RunningServer) -> None:
    status, headers, body = _http(secured, "GET", "/v2/models/tabular/config")
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    assert json.loads(body) == {"error": "missing bearer token (send 'authorization: Bearer <token>')"}


@pytest.mark.parametrize("content_type", [pytest.param("text/plain", id="text-plain"),
                                          pytest.param("application/x-www-form-urlencoded", id="form"),
                                          pytest.param(None, id="none")])
def test_admin_post_that_is_not_json_is_415_and_changes_nothing(
        secured: RunningServer, content_type: str | None) -> None:
    # What a page in an operator's browser can send cross-site without a preflight: no Authorization.
    headers = {"Content-Type": content_type} if content_type else {}
    status, _, body = _http(secured, "POST", "/v2/repository/models/tabular/unload", b"{}", headers)
    assert status == 415 and json.loads(body) == {"error": "admin requests need 'Content-Type: application/json'"}
    assert secured.app.manager.is_ready("tabular", None)


def test_admin_post_with_a_bearer_token_needs_no_content_type(secured: RunningServer) -> None:
    # A browser never sends Authorization cross-site without asking first; tritonclient sends no type.
    status, _, _ = _http(secured, "POST", "/v2/repository/models/two_input/load", b"",
                         {"Authorization": "Bearer t-admin"})
    assert status == 200


def test_metrics_are_open_by_default_and_need_read_with_metrics_auth(
        tmp_path: Path, secured: RunningServer, server_factory: Callable[..., RunningServer]) -> None:
    assert _http(secured, "GET", "/metrics")[0] == 200
    guarded = server_factory(secured.repository, auth_tokens_file=tokens_file(tmp_path / "tokens2"),
                             metrics_auth=True, drift_enabled=False, state_dir=tmp_path / "state2")
    assert _http(guarded, "GET", "/metrics")[0] == 401
    assert _http(guarded, "GET", "/metrics", headers={"Authorization": "Bearer t-infer"})[0] == 403
    assert _http(guarded, "GET", "/metrics", headers={"Authorization": "Bearer t-read"})[0] == 200


def test_cors_is_off_by_default_and_answers_configured_origins(
        tmp_path: Path, server_factory: Callable[..., RunningServer]) -> None:
    repo = tmp_path / "repo"
    make_models.make_samples(repo)
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"}
    closed = server_factory(repo, drift_enabled=False, state_dir=tmp_path / "a")
    status, headers, _ = _http(closed, "OPTIONS", "/v2/models/tabular/infer", headers=preflight)
    assert "access-control-allow-origin" not in headers and status >= 400
    opened = server_factory(repo, drift_enabled=False, state_dir=tmp_path / "b",
                            cors_origins=("https://app.example",))
    status, headers, _ = _http(opened, "OPTIONS", "/v2/models/tabular/infer", headers=preflight)
    assert status == 200 and headers["access-control-allow-origin"] == "https://app.example"


def test_tokens_file_is_reloaded_when_it_changes(
        tmp_path: Path, server_factory: Callable[..., RunningServer]) -> None:
    repo = tmp_path / "repo"
    make_models.make_samples(repo)
    tokens = tmp_path / "tokens"
    tokens.write_text(f"a:read:{hash_token('first')}\n")
    server = server_factory(repo, auth_tokens_file=tokens, tls_reload_s=0.1, drift_enabled=False,
                            state_dir=tmp_path / "state")
    path, first, second = "/v2/models/tabular", {"Authorization": "Bearer first"}, {"Authorization": "Bearer second"}
    assert _http(server, "GET", path, headers=first)[0] == 200
    tokens.write_text(f"b:read:{hash_token('second')}\n")
    deadline = time.monotonic() + 10
    while _http(server, "GET", path, headers=second)[0] != 200:
        assert time.monotonic() < deadline, "the new tokens file was never loaded"
        time.sleep(0.05)
    assert _http(server, "GET", path, headers=first)[0] == 401


def test_grpc_stream_infer_with_a_wrong_token_answers_an_error_in_the_stream(secured: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(secured.grpc_url)
    results: list[Any] = []
    client.start_stream(callback=lambda result, error: results.append(error),
                        headers={"authorization": "Bearer nope"})
    item = grpcclient.InferInput("features", [2, 8], "FP32")
    item.set_data_from_numpy(X)
    before = _served(secured)
    client.async_stream_infer("tabular", [item])
    deadline = time.monotonic() + 10
    while not results:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    client.stop_stream()
    client.close()
    assert "invalid bearer token" in str(results[0])
    assert _served(secured) == before


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_admin_is_off_by_default_on_both_transports(
        protocol: str, tmp_path: Path, server_factory: Callable[..., RunningServer]) -> None:
    repo = tmp_path / "repo"
    make_models.make_samples(repo)
    server = server_factory(repo, allow_repository_admin=False, drift_enabled=False, state_dir=tmp_path / "s")
    client = Client(protocol, server)
    try:
        with pytest.raises(InferenceServerException) as info:
            client.raw.unload_model("tabular", headers=client.headers)
        assert str(info.value.status()) in ("StatusCode.UNIMPLEMENTED", "501")
        assert "--allow-repository-admin true" in str(info.value.message())
        assert client.infer().as_numpy("label").shape == (2, 1), "the model still serves"
    finally:
        client.close()
    (line,) = [e for e in _audit(server) if e["event"] == "admin"]
    assert (line["action"], line["outcome"]) == ("unload", "unsupported")
