"""Names and paths that arrive from outside (requests, uploaded configs), checked before they touch a disk.

A model name is one path segment from a safe alphabet; a version is a decimal number; a file name
from a config is a file name and nothing more; and every path built from them is resolved and
must stay inside its root. Messages quote what arrived, shortened, and never a server path.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import InvalidInput

__all__ = ["MAX_NAME_CHARS", "check_file_name", "check_model_name", "check_version", "is_file_name", "path_inside",
           "quoted"]

MAX_NAME_CHARS = 128
"""Longest model or file name accepted (file systems allow 255 bytes; names are also metric labels)."""

# Letters, digits, '_', '-' and '.', starting with a letter, digit or '_': no separators, no '.'/'..',
# no hidden names (the repository scan skips those), nothing a shell or a URL needs to escape.
_SEGMENT = re.compile(rf"[A-Za-z0-9_][A-Za-z0-9_.\-]{{0,{MAX_NAME_CHARS - 1}}}")
_VERSION = re.compile(r"[0-9]{1,18}")


def quoted(text: str, limit: int = 64) -> str:
    """`text` as a short repr for messages and logs: a hostile 4 KB name must not flood either."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


def check_model_name(name: str) -> str:
    """`name` if it is a valid model name; raises InvalidInput naming the rule otherwise."""
    if _SEGMENT.fullmatch(name) is None:
        raise InvalidInput(f"invalid model name {quoted(name)}: a model name is 1-{MAX_NAME_CHARS} letters, "
                           "digits, '_', '-' or '.', not starting with '.' or '-'")
    return name


def check_version(version: str) -> int:
    """A version label as its number (non-negative decimal); raises InvalidInput otherwise."""
    if _VERSION.fullmatch(version) is None:
        raise InvalidInput(f"invalid model version {quoted(version)}: a version is a non-negative integer")
    return int(version)


def is_file_name(name: str) -> bool:
    """Whether `name` is one file name: no directories, not '.' or '..', nothing hidden."""
    return _SEGMENT.fullmatch(name) is not None


def check_file_name(name: str, what: str) -> str:
    """`name` if it is one file name (no directories, not '.' or '..'); raises InvalidInput otherwise."""
    if not is_file_name(name):
        raise InvalidInput(f"{what} {quoted(name)}: must be a file name (1-{MAX_NAME_CHARS} letters, digits, "
                           "'_', '-' or '.'), not a path")
    return name


def path_inside(root: Path, *parts: str) -> Path:
    """`root/parts...`, resolved; raises InvalidInput when the result is not strictly inside `root`.

    Symbolic links in `root` itself are the operator's choice and are followed; links and '..' that
    lead a request-derived path out of `root` are refused.
    """
    base = root.resolve()
    target = base.joinpath(*parts).resolve()
    if target == base or not target.is_relative_to(base):
        raise InvalidInput(f"path {quoted('/'.join(parts))} leaves its directory")
    return target
