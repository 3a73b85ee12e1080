"""Tiny models for the lifecycle tests: x FP32[batch, 8] -> y FP32[batch, 3], one weight matrix per seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CONFIG = 'name: "m"\nmax_batch_size: 8\ndynamic_batching { }\n'


def weights(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((8, 3)).astype(np.float32)


def expected(seed: int, x: np.ndarray) -> np.ndarray:
    product: np.ndarray = x @ weights(seed)
    return product


def _save(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], path: Path, opset: int = 17) -> None:
    graph = helper.make_graph(
        nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def make_version(root: Path, version: int, seed: int | None = None, name: str = "m", opset: int = 17) -> Path:
    """y = x @ W(seed); seed defaults to the version number."""
    path = root / name / str(version) / "model.onnx"
    w = numpy_helper.from_array(weights(version if seed is None else seed), "w")
    _save([helper.make_node("MatMul", ["x", "w"], ["y"])], [w], path, opset)
    return path


def make_failing_at_run(root: Path, version: int) -> None:
    """Loads fine, fails on every run: 8 values per row cannot be reshaped into rows of 3."""
    shape = numpy_helper.from_array(np.array([-1, 3], np.int64), "shape")
    _save([helper.make_node("Reshape", ["x", "shape"], ["y"])], [shape], root / "m" / str(version) / "model.onnx")


def make_model(root: Path, versions: tuple[int, ...] = (1,), config: str = CONFIG) -> Path:
    for version in versions:
        make_version(root, version)
    (root / "m" / "config.pbtxt").write_text(config)
    return root / "m"
