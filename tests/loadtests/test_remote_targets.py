"""Targets beyond the default: URLs, host names and loopback aliases, TLS with a CA bundle, a client
certificate and a server-name override, and bearer tokens, against a real Tessera run with both.

Every server here binds a loopback address (127.0.0.1 or the alias 127.0.0.2) and every request the
tests make goes to it: what is exercised for "remote" targets is parsing and connection set-up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import trustme

from loadtests.cli import main
from loadtests.encoding import encode_payloads
from loadtests.inputs import fetch_model_info, random_samples
from loadtests.runner import run_step
from loadtests.spec import LoadSpec, Target, TlsOptions, is_loopback, parse_url
from loadtests.target_flags import parse_header, redact_argv
from server.auth import hash_token

from ..conftest import RunningServer, make_models

ALIAS = "127.0.0.2"  # a loopback alias: Linux answers on all of 127/8
SERVER_NAME = "tessera.staging.internal"  # in the certificate only; resolves nowhere
TOKEN = "t-load-3f9a"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param("grpc://10.1.2.3:9001", ("grpc", False, "10.1.2.3", 9001), id="grpc-address"),
        pytest.param("grpcs://tessera.prod.example", ("grpc", True, "tessera.prod.example", 8001), id="grpcs-name"),
        pytest.param("http://infer.example:8080/", ("http", False, "infer.example", 8080), id="http-name"),
        pytest.param("https://infer.example", ("http", True, "infer.example", 443), id="https-default-port"),
        pytest.param("https://[2001:db8::5]:8443", ("http", True, "2001:db8::5", 8443), id="https-ipv6"),
        pytest.param("staging.example:8001", ("grpc", False, "staging.example", 8001), id="bare-is-grpc"),
    ],
)
def test_urls_name_protocol_tls_host_and_port(url: str, expected: tuple[object, ...]) -> None:
    parsed = parse_url(url)
    assert (parsed.protocol, parsed.tls, parsed.host, parsed.port) == expected


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("ftp://h:21", id="scheme"),
        pytest.param("http://h:8000/v2/models", id="path"),
        pytest.param("grpc://:8001", id="no-host"),
        pytest.param("http://h:99999", id="bad-port"),
    ],
)
def test_bad_urls_are_refused_with_a_reason(url: str) -> None:
    with pytest.raises(ValueError, match="target URL"):
        parse_url(url)


def test_headers_parse_and_credentials_never_reach_results_files() -> None:
    assert parse_header("x-tenant: blue") == ("x-tenant", "blue")
    with pytest.raises(ValueError):
        parse_header("no-colon")
    with pytest.raises(ValueError):
        parse_header("x-evil: a\r\nHost: elsewhere")
    argv = ["run", "--token", "secret", "--header=authorization: Bearer s2", "--header", "k: v", "--model", "m"]
    assert redact_argv(argv) == ["run", "--token", "***", "--header=***", "--header", "***", "--model", "m"]
    assert "secret" not in repr(Target(port=1, model="m", headers=(("authorization", "Bearer secret"),)))


def test_the_alias_is_loopback_on_this_machine() -> None:
    assert is_loopback(ALIAS) and is_loopback("localhost")
    assert not is_loopback("192.0.2.1")  # TEST-NET-1: only resolved, never contacted


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    make_models.make_samples(tmp_path / "repo")
    return tmp_path / "repo"


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_loopback_alias_and_a_host_name_are_targets_like_any_other(
    repo: Path, server_factory: Callable[..., RunningServer], protocol: str
) -> None:
    server = server_factory(repo, host=ALIAS, drift_enabled=False)
    port = server.app.grpc_port if protocol == "grpc" else server.app.http_port
    target = Target(host=ALIAS, port=port, protocol=protocol, model="tabular", request_timeout_s=5.0,  # type: ignore[arg-type]
                    metrics_url=f"http://{ALIAS}:{server.app.http_port}/metrics")
    payloads = encode_payloads(target, random_samples(fetch_model_info(target), count=4))
    spec = LoadSpec(mode="open", rate_rps=100, arrival="constant", duration_s=0.5, warmup_s=0.1)
    step = run_step(target, spec, payloads, inline=True)
    assert step.errors == {} and step.ok >= 40
    assert step.server is not None and step.server.batches > 0
    local = server_factory(repo, drift_enabled=False)  # on 127.0.0.1, reached by the name "localhost"
    by_name = replace(target, host="localhost", port=local.app.grpc_port if protocol == "grpc" else local.app.http_port,
                      metrics_url=None)
    assert fetch_model_info(by_name).name == "tabular"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pki")
    server_ca, client_ca = trustme.CA(), trustme.CA()
    server_ca.cert_pem.write_to_path(str(root / "ca.pem"))
    client_ca.cert_pem.write_to_path(str(root / "client-ca.pem"))
    cert = server_ca.issue_cert(SERVER_NAME)
    cert.private_key_and_cert_chain_pem.write_to_path(str(root / "server.pem"))
    cert.cert_chain_pems[0].write_to_path(str(root / "server.crt"))
    cert.private_key_pem.write_to_path(str(root / "server.key"))
    client = client_ca.issue_cert("loadgen.clients.example", common_name="loadgen")
    client.cert_chain_pems[0].write_to_path(str(root / "client.crt"))
    client.private_key_pem.write_to_path(str(root / "client.key"))
    return {p.stem: p for p in root.iterdir()}


@pytest.fixture
def secured(
    tmp_path: Path, repo: Path, pki: dict[str, Path], server_factory: Callable[..., RunningServer]
) -> RunningServer:
    """Tessera on the alias with TLS, mTLS (client CA) and bearer tokens, /metrics behind `read`."""
    tokens = tmp_path / "tokens"
    tokens.write_text(f"loadgen:infer,read:{hash_token(TOKEN)}\n")
    return server_factory(repo, host=ALIAS, tls_cert=pki["server"].with_suffix(".crt"),
                          tls_key=pki["server"].with_suffix(".key"), tls_client_ca=pki["client-ca"],
                          auth_tokens_file=tokens, metrics_auth=True,
                          state_dir=tmp_path / "state", drift_enabled=False)


def _tls(pki: dict[str, Path]) -> TlsOptions:
    return TlsOptions(ca_file=pki["ca"], cert_file=pki["client"].with_suffix(".crt"),
                      key_file=pki["client"].with_suffix(".key"), server_name=SERVER_NAME)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_url_target_with_tls_and_a_token_reaches_a_tessera_running_with_both(
    secured: RunningServer, pki: dict[str, Path], protocol: str
) -> None:
    port = secured.app.grpc_port if protocol == "grpc" else secured.app.http_port
    parsed = parse_url(f"{'grpcs' if protocol == 'grpc' else 'https'}://{ALIAS}:{port}")
    assert parsed.tls
    target = Target(host=parsed.host, port=parsed.port, protocol=parsed.protocol, model="tabular",
                    request_timeout_s=5.0, tls=_tls(pki), headers=(("authorization", f"Bearer {TOKEN}"),),
                    metrics_url=f"https://{ALIAS}:{secured.app.http_port}/metrics")
    info = fetch_model_info(target)  # gRPC: grpcio's secure channel; HTTP: https with the same files
    payloads = encode_payloads(target, random_samples(info, count=4))
    spec = LoadSpec(mode="open", rate_rps=100, arrival="constant", duration_s=0.5, warmup_s=0.1)
    step = run_step(target, spec, payloads, inline=True)  # the harness's own clients, over TLS
    assert step.errors == {}, step.first_error
    assert step.ok >= 40
    assert step.server is not None and step.server.batches > 0  # /metrics over mTLS with the token

    wrong = run_step(replace(target, headers=(("authorization", "Bearer nope"),), metrics_url=None), spec, payloads,
                     inline=True)
    assert wrong.ok == 0
    assert set(wrong.errors) == {"grpc_UNAUTHENTICATED" if protocol == "grpc" else "http_401"}


@pytest.mark.parametrize(
    "tls",
    [
        pytest.param({"server_name": None}, id="name-mismatch"),
        pytest.param({"cert_file": None, "key_file": None}, id="no-client-certificate"),
        pytest.param({"ca_file": None}, id="unknown-ca"),
    ],
)
def test_tls_failures_are_connection_errors_not_traffic(secured: RunningServer, pki: dict[str, Path],
                                                       tls: dict[str, object]) -> None:
    target = Target(host=ALIAS, port=secured.app.grpc_port, protocol="grpc", model="tabular", request_timeout_s=3.0,
                    tls=replace(_tls(pki), **tls), headers=(("authorization", f"Bearer {TOKEN}"),))
    spec = LoadSpec(mode="open", rate_rps=50, arrival="constant", duration_s=0.2, warmup_s=0.0)
    with pytest.raises((OSError, TimeoutError)):
        run_step(target, spec, [b"unused"], inline=True)


def test_the_cli_takes_url_tls_files_and_a_token_file(secured: RunningServer, pki: dict[str, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "token").write_text(TOKEN + "\n")
    out = tmp_path / "out"
    code = main(["run", "--url", f"grpcs://{ALIAS}:{secured.app.grpc_port}", "--tls-ca", str(pki["ca"]),
                 "--tls-cert", str(pki["client"].with_suffix(".crt")),
                 "--tls-key", str(pki["client"].with_suffix(".key")),
                 "--tls-server-name", SERVER_NAME, "--token-file", str(tmp_path / "token"),
                 "--metrics-url", f"https://{ALIAS}:{secured.app.http_port}/metrics", "--model", "tabular",
                 "--mode", "open", "--rate", "50", "--duration", "0.5", "--warmup", "0.1", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert TOKEN not in (out / "results.json").read_text()


def test_the_suite_refuses_to_connect_anywhere_but_loopback() -> None:
    import socket

    with socket.socket() as sock, pytest.raises(RuntimeError, match="loopback only"):
        sock.connect(("192.0.2.1", 9))  # TEST-NET-1: refused by the guard before any packet leaves
