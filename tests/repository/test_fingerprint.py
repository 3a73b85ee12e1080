"""Fingerprints: what counts as a change of a model directory, and what does not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from server.repository.fingerprint import DigestCache, fingerprint_model, scan_repository


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "model.onnx").write_bytes(b"one")
    (tmp_path / "m" / "config.pbtxt").write_text('name: "m"\n')
    return tmp_path / "m"


def _bump_mtime(path: Path) -> None:
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))


def test_touching_the_config_is_not_a_change_but_editing_it_is(model_dir: Path) -> None:
    digests = DigestCache()
    before = fingerprint_model(model_dir, digests)
    _bump_mtime(model_dir / "config.pbtxt")
    assert fingerprint_model(model_dir, digests) == before
    (model_dir / "config.pbtxt").write_text('name: "m"\nmax_batch_size: 8\n')
    assert fingerprint_model(model_dir, digests).config_digest != before.config_digest


def test_a_changed_model_file_changes_only_its_version(model_dir: Path) -> None:
    (model_dir / "2").mkdir()
    (model_dir / "2" / "model.onnx").write_bytes(b"two")
    digests = DigestCache()
    before = fingerprint_model(model_dir, digests)
    (model_dir / "2" / "model.onnx").write_bytes(b"two, retrained")
    after = fingerprint_model(model_dir, digests)
    assert after.versions[1] == before.versions[1]
    assert after.versions[2] != before.versions[2]
    assert after.config_digest == before.config_digest


def test_versions_are_numeric_directories_and_other_files_are_shared(model_dir: Path) -> None:
    (model_dir / "warmup").mkdir()
    (model_dir / "warmup" / "input").write_bytes(b"\0" * 16)
    (model_dir / "notes").mkdir()
    (model_dir / "1" / ".model.onnx.partial").write_bytes(b"half")
    (model_dir / ".swp").write_bytes(b"editor")
    found = fingerprint_model(model_dir, DigestCache())
    assert list(found.versions) == [1]
    assert [stamp[0] for stamp in found.versions[1]] == ["model.onnx"]  # hidden files are not the model's
    assert [stamp[0] for stamp in found.shared] == ["warmup/input"]


def test_scan_lists_every_model_and_a_missing_repository_has_none(model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "other" / "3").mkdir(parents=True)
    scan = scan_repository(tmp_path, DigestCache())
    assert sorted(scan) == ["m", "other"]
    assert list(scan["other"].versions) == [3] and scan["other"].config_digest == ""
    assert scan_repository(tmp_path / "absent", DigestCache()) == {}
