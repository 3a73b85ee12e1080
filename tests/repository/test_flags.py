"""The lifecycle flags of `tessera serve` and the settings they make."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.cli import build_parser, serve_settings
from server.settings import ServerSettings


def _settings(*flags: str) -> ServerSettings:
    return serve_settings(build_parser().parse_args(["serve", "--model-repository", "s3://bucket/models", *flags]))


def test_lifecycle_flags_become_settings() -> None:
    settings = _settings("--model-control-mode", "poll", "--repository-poll-secs", "0.5",
                         "--repository-cache-dir", "/var/cache/tessera",
                         "--repository-storage-options", '{"endpoint_url": "http://minio:9000", "anon": true}')
    assert settings.model_control_mode == "poll"
    assert settings.repository_poll_secs == 0.5
    assert settings.repository_cache_dir == Path("/var/cache/tessera")
    assert settings.repository_storage_options == {
        "endpoint_url": "http://minio:9000", "anon": True}


def test_explicit_mode_takes_repeated_load_model_flags() -> None:
    settings = _settings("--model-control-mode", "explicit", "--load-model", "a", "--load-model", "b")
    assert settings.load_models == ("a", "b")


@pytest.mark.parametrize("flags", [
    pytest.param(("--model-control-mode", "poll", "--repository-poll-secs", "0"), id="poll-without-interval"),
    pytest.param(("--repository-storage-options", "{oops"), id="options-not-json"),
    pytest.param(("--repository-storage-options", "[1]"), id="options-not-an-object"),
])
def test_bad_lifecycle_flags_stop_the_server_before_it_starts(flags: tuple[str, ...],
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _settings(*flags)
