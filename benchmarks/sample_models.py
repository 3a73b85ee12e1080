"""The model builders of model_repository/make_models.py, for the benchmarks, loaded from that file.

make_models.py stays a standalone script and the one source of these graphs; loading it by path keeps
model_repository/ a model repository rather than a Python package, and needs no sys.path edit.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

__all__ = ["make_models"]

SCRIPT = Path(__file__).resolve().parents[1] / "model_repository" / "make_models.py"


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_models", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_models = _load(SCRIPT)
