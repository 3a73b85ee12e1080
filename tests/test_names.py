"""Names and paths from requests: what is a model name, a version, a file name, and what stays inside."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from server.errors import InvalidInput
from server.names import check_file_name, check_model_name, check_version, path_inside
from server.routing import FileStateStore, RolloutSpec, RolloutState
from server.routing.state import Phase


@pytest.mark.parametrize("name", ["tabular", "m", "model_1.v2", "A-b", "_x", "x" * 128])
def test_safe_model_names_are_accepted(name: str) -> None:
    assert check_model_name(name) == name


@pytest.mark.parametrize("name", [
    pytest.param("", id="empty"), pytest.param(".", id="dot"), pytest.param("..", id="dot-dot"),
    pytest.param(".hidden", id="hidden"), pytest.param("-flag", id="leading-dash"),
    pytest.param("a/b", id="slash"), pytest.param("a\\b", id="backslash"), pytest.param("/abs", id="absolute"),
    pytest.param("a\x00b", id="nul"), pytest.param("a b", id="space"), pytest.param("x" * 129, id="too-long"),
    pytest.param("modèle", id="non-ascii"),
])
def test_unsafe_model_names_are_invalid_input(name: str) -> None:
    with pytest.raises(InvalidInput, match="invalid model name"):
        check_model_name(name)


@pytest.mark.parametrize("version", ["-1", "", "1.0", "+1", " 1", "\u0661", "1_0", "9" * 19])
def test_versions_are_plain_non_negative_integers(version: str) -> None:
    with pytest.raises(InvalidInput, match="invalid model version"):
        check_version(version)
    assert check_version("0") == 0 and check_version("42") == 42


@pytest.mark.parametrize("name", ["../x.onnx", "/etc/passwd", "sub/model.onnx", "..", ""])
def test_a_file_name_from_a_config_is_a_file_name(name: str) -> None:
    with pytest.raises(InvalidInput, match="must be a file name"):
        check_file_name(name, "default_model_filename")


def test_path_inside_refuses_climbing_out_through_dots_and_links(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "link").symlink_to(tmp_path)
    assert path_inside(tmp_path / "root", "a", "b") == (tmp_path / "root" / "a" / "b").resolve()
    for parts in (("..", "x"), ("link", "x"), ("/etc",), (".",)):
        with pytest.raises(InvalidInput, match="leaves its directory"):
            path_inside(tmp_path / "root", *parts)


def test_the_rollout_state_store_never_writes_outside_its_directory(tmp_path: Path) -> None:
    store = FileStateStore(tmp_path / "state")
    spec = RolloutSpec.from_dict({"candidate_version": 2})
    for name in ("../escaped", "/tmp/escaped"):
        with pytest.raises(InvalidInput):
            asyncio.run(store.save(RolloutState(name, 1, 2, spec, Phase.SHADOW)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]
