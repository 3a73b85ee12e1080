"""Cheap fingerprints of a model directory, to tell what changed between two looks at the repository.

Model files are compared by stat alone (size, mtime, inode: nothing is read), config.pbtxt by the
hash of its text, re-read only when its stat changes, so touching it is not a change.
Everything here blocks on the file system: call it through asyncio.to_thread.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .config import CONFIG_FILENAME
from .layout import is_version_name

__all__ = ["DigestCache", "FileStamp", "ModelFingerprint", "fingerprint_model", "scan_repository"]

FileStamp = tuple[str, int, int, int]
"""(path relative to its directory, size in bytes, mtime in ns, inode)."""


@dataclass(frozen=True, slots=True)
class ModelFingerprint:
    """What a model directory holds, as far as loading it is concerned."""

    config_digest: str
    """sha256 of config.pbtxt; empty when there is none."""

    shared: tuple[FileStamp, ...]
    """Files outside the version directories (warmup data, labels): a change reloads every version."""

    versions: dict[int, tuple[FileStamp, ...]]
    """Each numeric version directory and the stamps of its files."""


class DigestCache:
    """sha256 of small files, recomputed only when a file's (size, mtime, inode) changes.

    Shared by scans running on worker threads; a lock keeps the dict consistent.
    """

    def __init__(self) -> None:
        self._entries: dict[str, tuple[tuple[int, int, int], str]] = {}
        self._lock = threading.Lock()

    def digest(self, path: Path) -> str:
        try:
            stat = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return ""
        key = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
        with self._lock:
            cached = self._entries.get(str(path))
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except FileNotFoundError:
            return ""
        with self._lock:
            self._entries[str(path)] = (key, digest)
        return digest

    def keep_only(self, root: Path, paths: set[str]) -> None:
        """Forget files below `root` other than `paths`, so the cache stays as small as the repository."""
        under = f"{root}{os.sep}"
        with self._lock:
            for stale in [p for p in self._entries if p.startswith(under) and p not in paths]:
                del self._entries[stale]


def _walk(directory: str, prefix: str = "") -> Iterator[FileStamp]:
    """Stamps of every visible file below `directory`; entries that vanish mid-walk are skipped."""
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        if entry.name.startswith("."):  # editor swap files, partial downloads
            continue
        try:
            if entry.is_dir():
                yield from _walk(entry.path, f"{prefix}{entry.name}/")
                continue
            stat = entry.stat()
        except FileNotFoundError:
            continue
        yield (f"{prefix}{entry.name}", stat.st_size, stat.st_mtime_ns, stat.st_ino)


def fingerprint_model(model_dir: Path, digests: DigestCache) -> ModelFingerprint:
    """The fingerprint of one model directory (an absent directory has no versions)."""
    shared: list[FileStamp] = []
    versions: dict[int, tuple[FileStamp, ...]] = {}
    try:
        entries = sorted(os.scandir(model_dir), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        entries = []
    for entry in entries:
        if entry.name.startswith(".") or entry.name == CONFIG_FILENAME:
            continue
        try:
            is_dir = entry.is_dir()
        except FileNotFoundError:
            continue
        if is_dir and is_version_name(entry.name):
            versions[int(entry.name)] = tuple(_walk(entry.path))
        elif is_dir:
            shared.extend(_walk(entry.path, f"{entry.name}/"))
        else:
            shared.extend(_walk_file(entry))
    return ModelFingerprint(digests.digest(model_dir / CONFIG_FILENAME), tuple(shared), versions)


def _walk_file(entry: os.DirEntry[str]) -> Iterator[FileStamp]:
    try:
        stat = entry.stat()
    except FileNotFoundError:
        return
    yield (entry.name, stat.st_size, stat.st_mtime_ns, stat.st_ino)


def scan_repository(root: Path, digests: DigestCache) -> dict[str, ModelFingerprint]:
    """Fingerprint every model directory of the repository (a missing root has no models)."""
    try:
        names = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        names = []
    scan = {name: fingerprint_model(root / name, digests) for name in names}
    digests.keep_only(root, {str(root / name / CONFIG_FILENAME) for name in names})
    return scan
