"""Temporary model directories for loads that carry their own files (the repository extension's
`file:<version>/<name>` parameters), as Triton does: the user's repository is never written to.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path, PurePosixPath

from google.protobuf import text_format

from .._generated import model_config_pb2 as mc
from ..errors import InvalidInput
from ..names import MAX_NAME_CHARS, check_model_name, is_file_name, path_inside, quoted
from .config import CONFIG_FILENAME
from .layout import is_version_name

__all__ = ["FILE_PREFIX", "OverrideArea"]

FILE_PREFIX = "file:"


MAX_DEPTH = 8
"""Most path segments below the version directory in one `file:` key."""


def _relative(key: str) -> PurePosixPath:
    """`file:<version>/<path>` -> <version>/<path>, refusing anything that could leave the directory or
    that the file system would choke on (separators, '..', NUL bytes, over-long or deeply nested names)."""
    parts = key.removeprefix(FILE_PREFIX).split("/")
    if (not key.startswith(FILE_PREFIX) or not 2 <= len(parts) <= MAX_DEPTH + 1
            or not is_version_name(parts[0]) or len(parts[0]) > 18 or not all(map(is_file_name, parts[1:]))):
        raise InvalidInput(f"file override {quoted(key)}: must be file:<version>/<path> inside the model, at most "
                           f"{MAX_DEPTH} folders deep, each segment 1-{MAX_NAME_CHARS} letters, digits, '_', '-' "
                           "or '.'")
    return PurePosixPath(*parts)


class OverrideArea:
    """Owns one temporary directory; each override load gets a fresh model directory inside it.

    Blocking file I/O: call `create` and `discard` through asyncio.to_thread.
    """

    def __init__(self, parent: Path | None = None) -> None:
        self._parent = parent
        self._root: Path | None = None

    def create(self, name: str, config: mc.ModelConfig, files: dict[str, bytes]) -> Path:
        """A complete model directory: config.pbtxt from `config`, plus every file. Raises InvalidInput."""
        relatives = {key: _relative(key) for key in files}
        if self._root is None:
            if self._parent is not None:
                self._parent.mkdir(parents=True, exist_ok=True)
            self._root = Path(tempfile.mkdtemp(prefix="tessera-overrides-", dir=self._parent))
        directory = Path(tempfile.mkdtemp(prefix=f"{check_model_name(name)}.", dir=self._root))
        try:
            (directory / CONFIG_FILENAME).write_text(text_format.MessageToString(config))
            for key, content in files.items():
                target = path_inside(directory, *relatives[key].parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)  # a failed load leaves nothing behind
            raise
        return directory

    def owns(self, directory: Path) -> bool:
        return self._root is not None and directory.parent == self._root

    def discard(self, directory: Path) -> None:
        """Remove a directory made by `create`; loaded sessions no longer need its files."""
        if self.owns(directory):
            shutil.rmtree(directory, ignore_errors=True)

    def close(self) -> None:
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None
