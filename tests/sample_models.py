"""The model builders of model_repository/make_models.py, for the tests: `from tests.sample_models import make_models`.

make_models.py stays a standalone script (`python model_repository/make_models.py` regenerates the bundled
models) and the one source of these graphs. Loading it by path, here and only here, spares the tests any
sys.path edit and keeps model_repository/ a model repository rather than a Python package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

__all__ = ["SCRIPT", "make_models"]

SCRIPT = Path(__file__).resolve().parents[1] / "model_repository" / "make_models.py"


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_models", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_models = _load(SCRIPT)
