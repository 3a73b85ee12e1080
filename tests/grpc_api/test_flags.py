"""The gRPC flags of `tessera serve` and the settings they make."""

from __future__ import annotations

import pytest

from server.cli import build_parser, serve_settings
from server.settings import ServerSettings


def _settings(*flags: str) -> ServerSettings:
    return serve_settings(build_parser().parse_args(["serve", "--model-repository", "/models", *flags]))


def test_our_grpc_server_is_the_default_and_grpcio_stays_selectable() -> None:
    assert _settings().grpc_server == "ours"
    settings = _settings("--grpc-server", "grpcio", "--grpc-max-concurrent-streams", "64",
                         "--grpc-max-connection-idle-s", "30")
    assert (settings.grpc_server, settings.grpc_max_concurrent_streams, settings.grpc_max_connection_idle_s) == (
        "grpcio", 64, 30.0)


def test_an_unknown_grpc_server_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _settings("--grpc-server", "h2o")
    assert "--grpc-server" in capsys.readouterr().err
