"""Override directories: a load's own files go to a temporary directory, never into the repository."""

from __future__ import annotations

from pathlib import Path

import pytest

from server._generated import model_config_pb2 as mc
from server.errors import InvalidInput
from server.repository.config import read_config
from server.repository.overrides import OverrideArea


def test_override_files_make_a_complete_model_directory_outside_the_repository(tmp_path: Path) -> None:
    area = OverrideArea(tmp_path / "cache")
    config = mc.ModelConfig(name="m", max_batch_size=4)
    directory = area.create("m", config, {"file:1/model.onnx": b"onnx", "file:1/sub/data.bin": b"data"})
    assert directory.is_relative_to(tmp_path / "cache")
    assert (directory / "1" / "model.onnx").read_bytes() == b"onnx"
    assert (directory / "1" / "sub" / "data.bin").read_bytes() == b"data"
    assert read_config(directory).max_batch_size == 4
    area.discard(directory)
    assert not directory.exists()
    area.close()
    assert not any((tmp_path / "cache").iterdir())


@pytest.mark.parametrize("key", [
    pytest.param("file:../../etc/passwd", id="escapes"),
    pytest.param("file:1/../../x", id="escapes-after-version"),
    pytest.param("file:model.onnx", id="no-version"),
    pytest.param("file:latest/model.onnx", id="non-numeric-version"),
    pytest.param("file:/1/model.onnx", id="absolute"),
])
def test_file_keys_that_leave_the_model_are_invalid(tmp_path: Path, key: str) -> None:
    area = OverrideArea(tmp_path)
    with pytest.raises(InvalidInput, match="must be file:<version>/<path> inside the model"):
        area.create("m", mc.ModelConfig(name="m"), {key: b"x"})
    area.close()


def test_discard_leaves_directories_it_did_not_make(tmp_path: Path) -> None:
    area = OverrideArea(tmp_path / "cache")
    (tmp_path / "repository" / "m").mkdir(parents=True)
    area.discard(tmp_path / "repository" / "m")
    assert (tmp_path / "repository" / "m").is_dir()
