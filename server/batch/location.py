"""Where batch data lives: a local path (file, directory or glob) or an fsspec URL (s3://...), as a
pyarrow FileSystem plus paths in it, so reading and writing use one API for both.
"""

from __future__ import annotations

import glob
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from ..repository.store import is_remote

__all__ = ["Location", "has_magic", "resolve"]


def has_magic(path: str) -> bool:
    """Whether `path` is a glob pattern."""
    return any(c in path for c in "*?[")


@dataclass(frozen=True, slots=True)
class Location:
    """A resolved location: `path` is in `filesystem`'s own terms (no scheme)."""

    filesystem: pafs.FileSystem
    path: str
    url: str
    """What the user gave, for messages."""

    remote: bool
    fsspec: Any = None
    """The fsspec filesystem behind a remote location (globbing), else None."""

    def join(self, *parts: str) -> str:
        return "/".join([self.path.rstrip("/"), *parts])

    def glob(self, pattern: str) -> list[str]:
        """Files matching `pattern` (a path in this filesystem), sorted."""
        if self.fsspec is not None:
            return sorted(str(p) for p in self.fsspec.glob(pattern))
        return sorted(glob.glob(pattern, recursive=True))

    def files_below(self, path: str) -> list[str]:
        """Every file below directory `path`, recursively, sorted; [] when it does not exist."""
        info = self.filesystem.get_file_info(path)
        if info.type != pafs.FileType.Directory:
            return []
        found = self.filesystem.get_file_info(pafs.FileSelector(path, recursive=True))
        return sorted(f.path for f in found if f.type == pafs.FileType.File)


def resolve(location: str, storage_options: Mapping[str, Any]) -> Location:
    """Resolve a path, file:// URL or fsspec URL. Raises SystemExit when fsspec is missing."""
    if not is_remote(location):
        path = location.removeprefix("file://")
        absolute = path if has_magic(path) else str(Path(path).resolve())
        return Location(pafs.LocalFileSystem(), absolute, location, remote=False)
    try:
        import fsspec  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise SystemExit(f"tessera batch: {location} needs fsspec and its filesystem package, "
                         "e.g. pip install 'tessera[s3]'") from exc
    fs, path = fsspec.core.url_to_fs(location, **dict(storage_options))
    handler = pafs.PyFileSystem(pafs.FSSpecHandler(fs))
    return Location(handler, str(path).rstrip("/"), location, remote=True, fsspec=fs)
