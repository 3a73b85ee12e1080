"""Reference answers: the same ONNX file run in-process with ONNX Runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

_sessions: dict[Path, ort.InferenceSession] = {}


def run_reference(repository: Path, model: str, feeds: dict[str, np.ndarray], version: int = 1
                  ) -> dict[str, Any]:
    path = repository / model / str(version) / "model.onnx"
    if path not in _sessions:
        _sessions[path] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    session = _sessions[path]
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def sample_inputs(model: str, rows: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for each sample model, with the datatypes their configs declare."""
    rng = np.random.default_rng(seed)
    if model == "tabular":
        return {"features": rng.standard_normal((rows, 8)).astype(np.float32)}
    if model == "two_input":
        return {"a": rng.integers(-5, 5, (rows, 4)).astype(np.int32),
                "b": rng.standard_normal((rows, 4)).astype(np.float32)}
    if model == "fixed":
        return {"x": rng.standard_normal((2, 3)).astype(np.float32)}
    if model == "mlp":
        return {"input": rng.standard_normal((rows, 64)).astype(np.float32)}
    raise KeyError(model)
