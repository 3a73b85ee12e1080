"""Where the repository lives: a local directory, or any fsspec URL (s3://, gs://, ...) mirrored into a
local cache that everything else reads as a local repository.

`sync` lists the remote once and downloads only files whose identity (ETag, else size and mtime)
changed; each file lands through a hidden temporary name and an atomic rename, so a scan never
reads half a file. Blocking: call `sync` through asyncio.to_thread.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from ..errors import ModelLoadError

__all__ = ["LocalStore", "RemoteStore", "RepositoryStore", "is_remote", "open_store"]

logger = logging.getLogger(__name__)


class RepositoryStore(Protocol):
    @property
    def root(self) -> Path:
        """The local directory in Triton's layout."""
        ...

    def sync(self) -> None:
        """Bring `root` up to date with the repository. Blocking."""
        ...

    def close(self) -> None: ...


def is_remote(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


class LocalStore:
    """A repository that is already a local directory: nothing to sync."""

    def __init__(self, path: Path) -> None:
        self._root = path

    @property
    def root(self) -> Path:
        return self._root

    def sync(self) -> None:
        return None

    def close(self) -> None:
        return None


def _identity(info: Mapping[str, Any]) -> str:
    etag = info.get("ETag") or info.get("etag") or info.get("md5Hash")
    if etag:
        return f"etag:{etag}"
    modified = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or info.get("updated")
    return f"size:{info.get('size')}:mtime:{modified}"


class RemoteStore:
    """An fsspec repository mirrored into a local cache directory."""

    def __init__(self, url: str, cache_dir: Path | None, storage_options: Mapping[str, Any]) -> None:
        try:
            import fsspec  # type: ignore[import-untyped]
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise ModelLoadError(f"model repository {url}: remote repositories need fsspec and its "
                                 "filesystem package, e.g. pip install 'tessera[s3]'") from exc
        self._url = url
        self._fs, path = fsspec.core.url_to_fs(url, **dict(storage_options))
        self._prefix = str(path).rstrip("/")
        self._owned = cache_dir is None
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
        self._root = (cache_dir or Path(tempfile.mkdtemp(prefix="tessera-repository-"))).resolve()
        self._identities: dict[str, str] = {}
        self._synced = False

    @property
    def root(self) -> Path:
        return self._root

    def _listing(self) -> dict[str, str]:
        """{path relative to the prefix: identity} of every remote file."""
        self._fs.invalidate_cache()  # fsspec caches listings; a poll must see the store as it is now
        found = self._fs.find(self._prefix, detail=True)
        listing = {}
        for path, info in found.items():
            relative = str(path).removeprefix(self._prefix).lstrip("/")
            if info.get("type") == "directory" or not relative or relative.endswith("/"):
                continue
            listing[relative] = _identity(info)
        return listing

    def _local(self, relative: str) -> Path:
        target = (self._root / relative).resolve()
        if not target.is_relative_to(self._root) or any(p.startswith(".") for p in Path(relative).parts):
            raise ModelLoadError(f"model repository {self._url}: refusing to mirror '{relative}'")
        return target

    def _download(self, relative: str) -> None:
        target = self._local(relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        self._fs.get_file(f"{self._prefix}/{relative}", str(partial))
        os.replace(partial, target)

    def _remove(self, relative: str) -> None:
        target = self._local(relative)
        target.unlink(missing_ok=True)
        parent = target.parent
        while parent != self._root and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent

    def _cached_files(self) -> list[str]:
        """Files already in a cache directory from an earlier run: what the remote lacks must go."""
        found = (p.relative_to(self._root) for p in self._root.rglob("*") if p.is_file())
        return [str(p) for p in found if not any(part.startswith(".") for part in p.parts)]

    def sync(self) -> None:
        """Mirror the remote into the cache. Raises what the filesystem raises (network, credentials)."""
        listing = self._listing()
        changed = [r for r, ident in listing.items()
                   if self._identities.get(r) != ident or not (self._root / r).is_file()]
        known = self._identities if self._synced else self._cached_files()
        gone = [r for r in known if r not in listing]
        for relative in changed:
            self._download(relative)
            self._identities[relative] = listing[relative]
        for relative in gone:
            self._remove(relative)
            self._identities.pop(relative, None)
        self._synced = True
        if changed or gone:
            logger.info("model repository %s: %d files fetched, %d removed", self._url, len(changed), len(gone))

    def close(self) -> None:
        if self._owned:
            shutil.rmtree(self._root, ignore_errors=True)


def open_store(location: str, cache_dir: Path | None, storage_options: Mapping[str, Any]) -> RepositoryStore:
    """The store for `--model-repository`: a path, a file:// URL, or any other fsspec URL."""
    if is_remote(location):
        return RemoteStore(location, cache_dir, storage_options)
    return LocalStore(Path(location.removeprefix("file://")))
