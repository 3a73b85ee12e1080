"""The bounded-decoding, slow-client and rate-limit flags of `tessera serve` and their defaults."""

from __future__ import annotations

import pytest

from server.cli import build_parser, serve_settings
from server.settings import ServerSettings


def _settings(*flags: str) -> ServerSettings:
    return serve_settings(build_parser().parse_args(["serve", "--model-repository", "models", *flags]))


def test_defaults_match_the_settings_defaults() -> None:
    parsed = _settings()
    defaults = ServerSettings(model_repository="models")
    for name in ("max_request_elements", "max_request_tensor_bytes", "max_strings_per_row", "decode_off_loop_bytes",
                 "body_budget_bytes",
                 "http_header_timeout_s", "http_body_timeout_s", "http_max_header_bytes", "http_max_connections",
                 "grpc_max_connection_idle_s", "rate_limit_rps", "rate_limit_burst", "stream_queue_share"):
        assert getattr(parsed, name) == getattr(defaults, name), name
    assert parsed.rate_limit_rps == 0  # rate limits are off unless asked for


def test_limit_flags_become_settings() -> None:
    settings = _settings("--max-request-elements", "1000", "--max-request-tensor-bytes", "4096",
                         "--max-strings-per-row", "0",
                         "--decode-off-loop-bytes", "1", "--body-budget-bytes", "0",
                         "--http-header-timeout-s", "2.5", "--http-body-timeout-s", "4",
                         "--http-max-header-bytes", "8192", "--http-max-connections", "10",
                         "--grpc-max-connection-idle-s", "60", "--rate-limit-rps", "20",
                         "--rate-limit-burst", "40", "--stream-queue-share", "0.5")
    assert (settings.max_request_elements, settings.max_request_tensor_bytes) == (1000, 4096)
    assert settings.max_strings_per_row == 0
    assert (settings.decode_off_loop_bytes, settings.body_budget_bytes) == (1, 0)
    assert (settings.http_header_timeout_s, settings.http_body_timeout_s) == (2.5, 4.0)
    assert (settings.http_max_header_bytes, settings.http_max_connections) == (8192, 10)
    assert settings.grpc_max_connection_idle_s == 60.0
    assert (settings.rate_limit_rps, settings.rate_limit_burst, settings.stream_queue_share) == (20.0, 40, 0.5)


def test_the_inline_run_flag_becomes_a_setting_and_defaults_to_the_cpus_default(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # None: the executor picks by the CPUs the process can use (executor/runner.py default_inline_run_us)
    assert _settings().inline_run_us is None
    assert ServerSettings(model_repository="models").inline_run_us is None
    assert _settings("--inline-run-us", "0").inline_run_us == 0
    monkeypatch.setenv("TESSERA_INLINE_RUN_US", "0")
    assert _settings().inline_run_us == 0
    monkeypatch.setenv("TESSERA_INLINE_RUN_US", "")
    assert _settings().inline_run_us is None
