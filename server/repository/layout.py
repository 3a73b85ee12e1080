"""The Triton repository layout on disk: <root>/<model>/config.pbtxt and <root>/<model>/<version>/<file>."""

from __future__ import annotations

from pathlib import Path

__all__ = ["is_version_name", "list_models"]


def is_version_name(name: str) -> bool:
    """A version directory is named by a non-negative integer; anything else is not a version."""
    return name.isdigit()


def list_models(root: Path) -> list[str]:
    """Every visible subdirectory of the repository is a model."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))

