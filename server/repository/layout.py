"""The Triton repository layout on disk: <root>/<model>/config.pbtxt and <root>/<model>/<version>/<file>."""

from __future__ import annotations

from pathlib import Path

from ..errors import InvalidInput

__all__ = ["list_models", "list_versions", "write_override_files"]


def list_models(root: Path) -> list[str]:
    """Every visible subdirectory of the repository is a model."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_versions(model_dir: Path) -> list[int]:
    """Numeric subdirectories, as integers; anything else is not a version."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def write_override_files(root: Path, name: str, files: dict[str, bytes]) -> None:
    """Write the repository extension's `file:<version>/<name>` contents into the model's directory."""
    model_dir = (root / name).resolve()
    for key, content in files.items():
        relative = key.removeprefix("file:")
        target = (model_dir / relative).resolve()
        if not target.is_relative_to(model_dir) or not relative.split("/")[0].isdigit():
            raise InvalidInput(f"file override '{key}': must be file:<version>/<path> inside the model")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
