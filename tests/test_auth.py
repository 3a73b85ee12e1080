"""Credentials, scopes and the Authorizer called directly; safe defaults and the start-up refusal of an
exposed admin API; credential extraction from a gRPC-style context."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

from server.app import App
from server.auth import Authorizer, Credentials, Grant, Scope, hash_token, parse_scopes, parse_tokens
from server.cli import build_parser, main, serve_settings
from server.errors import PermissionDenied, Unauthenticated
from server.grpc_api.credentials import credentials_from_context
from server.settings import ServerSettings
from server.tls import TlsFiles, auth_context_from_peercert


def _tokens(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "tokens"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_scopes_parse_into_a_grant() -> None:
    assert parse_scopes("infer,read") == Grant(infer=True, read=True)
    assert parse_scopes("infer=a|b, admin") == Grant(infer=True, infer_models=frozenset({"a", "b"}), admin=True)
    with pytest.raises(ValueError, match="unknown scope 'write'"):
        parse_scopes("read,write")


@pytest.mark.parametrize("line", [
    pytest.param("name:read", id="two-fields"),
    pytest.param("name:read:abc", id="short-hash"),
    pytest.param("name:read:" + "0" * 64 + ":until=5", id="bad-expiry"),
    pytest.param(":read:" + "0" * 64, id="no-name"),
])
def test_malformed_tokens_line_names_its_line(line: str) -> None:
    with pytest.raises(ValueError, match="tokens file line 2"):
        parse_tokens("# comment\n" + line)


def test_token_checks(tmp_path: Path) -> None:
    now = 1_000_000.0
    auth = Authorizer(_tokens(tmp_path, f"ops:admin,read:{hash_token('a')}",
                              f"app:infer=m1:{hash_token('b')}:expires={now + 10}",
                              f"old:infer:{hash_token('c')}:expires={now - 1}"), clock=lambda: now)
    assert auth.authorize(Credentials(token="a"), Scope.ADMIN).name == "ops"
    assert auth.authorize(Credentials(token="b"), Scope.INFER, "m1").name == "app"
    with pytest.raises(PermissionDenied, match="'app' may not run inference on model 'm2'"):
        auth.authorize(Credentials(token="b"), Scope.INFER, "m2")
    with pytest.raises(PermissionDenied, match="'ops' lacks the 'infer' scope"):
        auth.authorize(Credentials(token="a"), Scope.INFER, "m1")
    with pytest.raises(Unauthenticated, match="bearer token expired"):
        auth.authorize(Credentials(token="c"), Scope.INFER, "m1")
    with pytest.raises(Unauthenticated, match="invalid bearer token"):
        auth.authorize(Credentials(token="d"), Scope.READ)
    with pytest.raises(Unauthenticated, match="missing bearer token"):
        auth.authorize(Credentials(cert_identities=("someone",)), Scope.READ)


def test_certificate_identities_map_to_scopes(tmp_path: Path) -> None:
    identities = tmp_path / "identities"
    identities.write_text("client-a:infer\nspiffe://example.org/ns/x:read\n")
    auth = Authorizer(identities_file=identities)
    assert auth.authorize(Credentials(cert_identities=("client-a",)), Scope.INFER, "m").name == "client-a"
    assert auth.authorize(Credentials(cert_identities=("cn", "spiffe://example.org/ns/x")), Scope.READ)
    with pytest.raises(PermissionDenied, match="client certificate 'other' is not granted any scope"):
        auth.authorize(Credentials(cert_identities=("other",)), Scope.READ)
    with pytest.raises(Unauthenticated, match="client certificate"):
        auth.authorize(Credentials(), Scope.READ)


def test_without_auth_files_everyone_may_do_everything() -> None:
    auth = Authorizer()
    assert not auth.enabled
    for scope in Scope:
        assert auth.authorize(Credentials(), scope, "m").name == "anonymous"


def test_a_broken_tokens_file_on_reload_keeps_the_previous_one(tmp_path: Path) -> None:
    path = _tokens(tmp_path, f"ops:read:{hash_token('a')}")
    auth = Authorizer(path)
    path.write_text("garbage\n")
    assert not auth.refresh()
    assert auth.authorize(Credentials(token="a"), Scope.READ).name == "ops"


def test_describe_never_shows_the_token() -> None:
    assert Credentials(token="secret").describe() == "token:" + hash_token("secret")[:8]
    assert Credentials(cert_identities=("cn",)).describe() == "cert:cn"


class FakeContext:
    """What any gRPC server's context offers: grpc.aio's, or the HTTP/2 server's own."""

    def __init__(self, metadata: Iterable[tuple[str, str | bytes]], auth: Mapping[str, Iterable[bytes]]) -> None:
        self._metadata, self._auth = tuple(metadata), auth

    def invocation_metadata(self) -> Iterable[tuple[str, str | bytes]]:
        return self._metadata

    def peer(self) -> str:
        return "ipv4:127.0.0.1:5555"

    def auth_context(self) -> Mapping[str, Iterable[bytes]]:
        return self._auth


def test_grpc_credentials_come_from_metadata_and_auth_context() -> None:
    ctx = FakeContext([("tessera-routing-key", "k"), ("authorization", "Bearer tok")],
                      {"x509_common_name": [b"alice"], "x509_subject_alternative_name": [b"alice.example"],
                       "transport_security_type": [b"ssl"]})
    assert credentials_from_context(ctx) == Credentials(token="tok", cert_identities=("alice", "alice.example"),
                                                        peer="ipv4:127.0.0.1:5555")
    assert credentials_from_context(FakeContext([("authorization", "Basic xyz")], {})).token == ""


def test_a_peer_certificate_becomes_the_same_identities_on_any_grpc_server() -> None:
    peercert = {"subject": ((("organizationName", "o"),), (("commonName", "alice"),)),
                "subjectAltName": (("DNS", "alice.example"), ("URI", "spiffe://x/y"))}
    ctx = FakeContext([], auth_context_from_peercert(peercert))
    assert credentials_from_context(ctx).cert_identities == ("alice", "alice.example", "spiffe://x/y")


# -- safe defaults -------------------------------------------------------------------------------
def test_defaults_are_loopback_with_admin_off() -> None:
    settings = ServerSettings(model_repository="r")
    assert (settings.host, settings.allow_repository_admin, settings.cors_origins) == ("127.0.0.1", False, ())
    parsed = serve_settings(build_parser().parse_args(["serve", "--model-repository", "r"]))
    assert (parsed.host, parsed.allow_repository_admin, parsed.metrics_auth) == ("127.0.0.1", False, False)


@pytest.mark.parametrize("host", [
    pytest.param("0.0.0.0", id="exposed-admin"),
    pytest.param("::", id="exposed-admin-ipv6"),
    pytest.param("tessera.internal", id="exposed-admin-hostname"),
])
def test_startup_refuses_admin_off_loopback_without_authentication(host: str) -> None:
    args = build_parser().parse_args(["serve", "--model-repository", "r", "--host", host,
                                      "--allow-repository-admin", "true"])
    with pytest.raises(SystemExit, match=r"set --auth-tokens-file .*--tls-client-ca"):
        serve_settings(args)
    with pytest.raises(ValueError, match="refusing to serve the admin API"):
        App(ServerSettings(model_repository="r", host=host, allow_repository_admin=True))


@pytest.mark.parametrize("overrides", [
    pytest.param({"host": "0.0.0.0"}, id="exposed-no-admin"),
    pytest.param({"host": "127.0.0.1", "allow_repository_admin": True}, id="loopback-admin"),
    pytest.param({"host": "::1", "allow_repository_admin": True}, id="loopback-v6-admin"),
    pytest.param({"host": "0.0.0.0", "allow_repository_admin": True, "auth_tokens_file": Path("t")},
                 id="exposed-admin-with-tokens"),
    pytest.param({"host": "0.0.0.0", "allow_repository_admin": True, "tls_cert": Path("c"), "tls_key": Path("k"),
                  "tls_client_ca": Path("ca")}, id="exposed-admin-with-mtls"),
])
def test_startup_allows_the_safe_combinations(overrides: dict[str, object]) -> None:
    assert ServerSettings(model_repository="r", **overrides).exposure_problem() is None  # type: ignore[arg-type]


def test_tls_needs_both_cert_and_key() -> None:
    with pytest.raises(SystemExit, match="both --tls-cert and --tls-key"):
        serve_settings(build_parser().parse_args(["serve", "--model-repository", "r", "--tls-cert", "c"]))
    with pytest.raises(ValueError, match="--tls-client-ca needs"):
        TlsFiles.from_settings(ServerSettings(model_repository="r", tls_client_ca=Path("ca")))


def test_unreadable_or_malformed_auth_files_stop_the_start_with_a_message(tmp_path: Path) -> None:
    base = ["serve", "--model-repository", "r"]
    with pytest.raises(SystemExit, match=r"tessera serve: .*No such file"):
        serve_settings(build_parser().parse_args([*base, "--auth-tokens-file", str(tmp_path / "missing")]))
    (tmp_path / "tokens").write_text("ops:read\n")
    with pytest.raises(SystemExit, match="tessera serve: tokens file line 1"):
        serve_settings(build_parser().parse_args([*base, "--auth-tokens-file", str(tmp_path / "tokens")]))


def test_hash_token_prints_what_the_tokens_file_stores(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("s3cret\n"))
    assert main(["hash-token"]) == 0
    assert capsys.readouterr().out.strip() == hash_token("s3cret")
