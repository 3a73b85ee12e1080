"""TLS and mTLS on both transports with tritonclient's TLS options and certificates made by trustme:
encrypted serving, a client without a certificate refused under mTLS, client-certificate identities
mapped to scopes, and certificate rotation without a restart; the drift service's endpoint too."""

from __future__ import annotations

import http.client
import ssl
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent.ssl
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import trustme
from prometheus_client import CollectorRegistry
from tritonclient.utils import InferenceServerException

from server.drift.metrics import MonitorMetrics
from server.drift.report_http import ReportServer
from server.drift.reports import ReportBook
from server.tls import ServerTlsContext, TlsFiles

from ..conftest import RunningServer, make_models

PROTOCOLS = [pytest.param("grpc", id="grpc"), pytest.param("http", id="http")]
X = np.random.default_rng(9).random((1, 8), dtype=np.float32)
# A refused connection: tritonclient's error, a TLS/socket error, or the HTTP client seeing it closed.
CONNECTION_REFUSED = (InferenceServerException, OSError, http.client.HTTPException)


@dataclass
class Pki:
    """A server CA and certificate, and a client CA with two client certificates, as files."""

    root: Path
    server_ca: trustme.CA
    client_ca: trustme.CA

    def path(self, name: str) -> Path:
        return self.root / name

    def issue_server(self, ca: trustme.CA, prefix: str) -> None:
        cert = ca.issue_cert("127.0.0.1", "localhost")
        cert.cert_chain_pems[0].write_to_path(str(self.path(f"{prefix}.crt")))
        cert.private_key_pem.write_to_path(str(self.path(f"{prefix}.key")))


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    root = tmp_path / "pki"
    root.mkdir()
    p = Pki(root, trustme.CA(), trustme.CA())
    p.server_ca.cert_pem.write_to_path(str(p.path("server-ca.pem")))
    p.client_ca.cert_pem.write_to_path(str(p.path("client-ca.pem")))
    p.issue_server(p.server_ca, "server")
    for name in ("alice", "bob"):
        cert = p.client_ca.issue_cert(f"{name}.clients.example", common_name=name)
        cert.cert_chain_pems[0].write_to_path(str(p.path(f"{name}.crt")))
        cert.private_key_pem.write_to_path(str(p.path(f"{name}.key")))
    return p


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    make_models.make_samples(tmp_path / "repo")
    return tmp_path / "repo"


class HttpClient(httpclient.InferenceServerClient):  # type: ignore[misc]
    def __del__(self) -> None:  # the base joins a gevent pool, which fails on the GC's thread
        pass


def _client(protocol: str, server: RunningServer, ca: Path, cert: str | None = None) -> Any:
    """A tritonclient over TLS trusting `ca`, presenting the client certificate `cert` if given."""
    pki = ca.parent
    if protocol == "grpc":
        key = dict(private_key=str(pki / f"{cert}.key"), certificate_chain=str(pki / f"{cert}.crt")) if cert else {}
        # Each client gets its own connection (grpc shares subchannels between channels by default).
        return grpcclient.InferenceServerClient(server.grpc_url, ssl=True, root_certificates=str(ca),
                                                channel_args=[("grpc.use_local_subchannel_pool", 1)], **key)

    def context() -> ssl.SSLContext:
        ctx = gevent.ssl.create_default_context(cafile=str(ca))
        if cert:
            ctx.load_cert_chain(pki / f"{cert}.crt", pki / f"{cert}.key")
        return ctx

    return HttpClient(server.http_url, ssl=True, ssl_context_factory=context,
                      ssl_options={"server_hostname": "127.0.0.1"})


def _infer(protocol: str, client: Any, model: str = "tabular") -> Any:
    module: Any = grpcclient if protocol == "grpc" else httpclient
    item = module.InferInput("features", [1, 8], "FP32")
    item.set_data_from_numpy(X)
    return client.infer(model, [item])


def _tls_server(server_factory: Callable[..., RunningServer], repo: Path, pki: Pki, **more: Any) -> RunningServer:
    return server_factory(repo, tls_cert=pki.path("server.crt"), tls_key=pki.path("server.key"),
                          drift_enabled=False, state_dir=pki.root / "state", **more)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_tls_serves_inference_and_refuses_plaintext(
        protocol: str, repo: Path, pki: Pki, server_factory: Callable[..., RunningServer]) -> None:
    server = _tls_server(server_factory, repo, pki)
    client = _client(protocol, server, pki.path("server-ca.pem"))
    try:
        assert _infer(protocol, client).as_numpy("probabilities").shape == (1, 3)
    finally:
        client.close()
    plain = (grpcclient.InferenceServerClient(server.grpc_url) if protocol == "grpc"
             else HttpClient(server.http_url))
    try:
        with pytest.raises(CONNECTION_REFUSED):
            plain.is_server_live()
    finally:
        plain.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_mtls_refuses_a_client_without_a_certificate(
        protocol: str, repo: Path, pki: Pki, server_factory: Callable[..., RunningServer]) -> None:
    server = _tls_server(server_factory, repo, pki, tls_client_ca=pki.path("client-ca.pem"))
    before = [s.inference_count for s in (mv.stats for mv in server.app.manager.loaded_versions("tabular"))]
    anonymous = _client(protocol, server, pki.path("server-ca.pem"))
    try:
        with pytest.raises(CONNECTION_REFUSED):
            _infer(protocol, anonymous)
    finally:
        anonymous.close()
    assert [s.inference_count for s in (mv.stats for mv in server.app.manager.loaded_versions("tabular"))] == before
    alice = _client(protocol, server, pki.path("server-ca.pem"), "alice")
    try:
        assert _infer(protocol, alice).as_numpy("label").shape == (1, 1)
    finally:
        alice.close()


def _refusal(protocol: str, call: Callable[[], Any]) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as info:
        call()
    return str(info.value.status()), str(info.value.message())


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_mtls_certificate_identity_maps_to_its_scopes(
        protocol: str, repo: Path, pki: Pki, server_factory: Callable[..., RunningServer]) -> None:
    identities = pki.path("identities")
    identities.write_text("# identity:scopes\nalice:infer=tabular\nbob.clients.example:read\n")
    server = _tls_server(server_factory, repo, pki, tls_client_ca=pki.path("client-ca.pem"),
                         auth_cert_identities_file=identities)
    forbidden = "StatusCode.PERMISSION_DENIED" if protocol == "grpc" else "403"
    alice = _client(protocol, server, pki.path("server-ca.pem"), "alice")
    bob = _client(protocol, server, pki.path("server-ca.pem"), "bob")  # matched by its SAN
    try:
        assert _infer(protocol, alice).as_numpy("label").shape == (1, 1)
        assert _refusal(protocol, lambda: alice.get_model_metadata("tabular")) == (
            forbidden, "'alice' lacks the 'read' scope")
        assert bob.get_model_metadata("tabular")
        assert _refusal(protocol, lambda: _infer(protocol, bob)) == (
            forbidden, "'bob.clients.example' lacks the 'infer' scope")
    finally:
        alice.close()
        bob.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_rotated_certificate_is_served_to_new_connections_without_a_restart(
        protocol: str, repo: Path, pki: Pki, server_factory: Callable[..., RunningServer]) -> None:
    server = _tls_server(server_factory, repo, pki, tls_reload_s=0.1)
    old_ca, new_ca = pki.path("server-ca.pem"), pki.path("new-server-ca.pem")

    def live(ca: Path) -> bool:
        client = _client(protocol, server, ca)
        try:
            return bool(client.is_server_live())
        except CONNECTION_REFUSED:
            return False
        finally:
            client.close()

    assert live(old_ca)
    rotated = trustme.CA()
    rotated.cert_pem.write_to_path(str(new_ca))
    pki.issue_server(rotated, "next")
    pki.path("next.crt").replace(pki.path("server.crt"))  # cert first, key a moment later:
    time.sleep(0.3)  # a half-rotated pair is not loaded and the old certificate keeps serving
    assert live(old_ca)
    pki.path("next.key").replace(pki.path("server.key"))
    deadline = time.monotonic() + 15
    while not live(new_ca):
        assert time.monotonic() < deadline, "the rotated certificate was never served"
        time.sleep(0.1)
    assert not live(old_ca)


# -- the drift service's endpoint ------------------------------------------------------------------
def _drift_server(pki: Pki, mutual: bool) -> ReportServer:
    registry = CollectorRegistry()
    files = TlsFiles(pki.path("server.crt"), pki.path("server.key"),
                     pki.path("client-ca.pem") if mutual else None)
    server = ReportServer(ReportBook(MonitorMetrics(registry)), registry, "127.0.0.1", 0, ServerTlsContext(files))
    server.start()
    return server


def _https_get(port: int, ca: Path, cert: str | None = None) -> int:
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert:
        ctx.load_cert_chain(ca.parent / f"{cert}.crt", ca.parent / f"{cert}.key")
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=ctx, timeout=5) as response:
        return int(response.status)


def test_drift_endpoint_serves_https_and_refuses_plaintext(pki: Pki) -> None:
    server = _drift_server(pki, mutual=False)
    try:
        assert _https_get(server.port, pki.path("server-ca.pem")) == 200
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        with pytest.raises((OSError, http.client.HTTPException)):
            conn.request("GET", "/healthz")
            conn.getresponse()
        conn.close()
    finally:
        server.stop()


def test_drift_endpoint_under_mtls_needs_a_client_certificate(pki: Pki) -> None:
    server = _drift_server(pki, mutual=True)
    try:
        with pytest.raises(OSError):
            _https_get(server.port, pki.path("server-ca.pem"))
        assert _https_get(server.port, pki.path("server-ca.pem"), "alice") == 200
    finally:
        server.stop()
