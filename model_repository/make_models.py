"""Builds the sample models of model_repository/ (and the ones the tests use) with onnx.helper.

    python model_repository/make_models.py [OUT_DIR]

Weights come from a fixed seed, so the files are reproducible. Needs the `onnx` package (dev extra).
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # readable by every onnxruntime >= 1.14

TABULAR_CONFIG = """\
# A tabular classifier: 8 named features in, class probabilities and the predicted label out.
name: "tabular"
max_batch_size: 64
input [
  { name: "features", data_type: TYPE_FP32, dims: [ 8 ] }
]
output [
  { name: "probabilities", data_type: TYPE_FP32, dims: [ 3 ] },
  { name: "label", data_type: TYPE_INT64, dims: [ 1 ] }
]
instance_group [ { kind: KIND_CPU, count: 1 } ]
dynamic_batching {
  max_queue_delay_microseconds: 500
  default_queue_policy { max_queue_size: 1024 }
}
parameters { key: "feature_names" value: { string_value: "age,income,tenure,balance,products,score,active,region" } }
"""

TWO_INPUT_CONFIG = """\
# Two inputs of different types, two outputs: sum = a + b, product = a * b (a cast to FP32).
name: "two_input"
max_batch_size: 32
input [
  { name: "a", data_type: TYPE_INT32, dims: [ 4 ] },
  { name: "b", data_type: TYPE_FP32, dims: [ 4 ] }
]
output [
  { name: "sum", data_type: TYPE_FP32, dims: [ 4 ] },
  { name: "product", data_type: TYPE_FP32, dims: [ 4 ] }
]
dynamic_batching { }
"""

FIXED_CONFIG = """\
# No batching: the client sends exactly [2, 3] and gets [2, 2].
name: "fixed"
max_batch_size: 0
input [ { name: "x", data_type: TYPE_FP32, dims: [ 2, 3 ] } ]
output [ { name: "y", data_type: TYPE_FP32, dims: [ 2, 2 ] } ]
"""


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="tessera-make-models")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def mlp_graph(name: str, sizes: Sequence[int], seed: int, input_name: str = "input",
              output_name: str = "output", softmax: bool = False) -> onnx.GraphProto:
    """A ReLU MLP [-1, sizes[0]] -> [-1, sizes[-1]] with fixed random weights."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    current = input_name
    for layer, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        w = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        b = (rng.standard_normal(fan_out) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{layer}"), numpy_helper.from_array(b, f"b{layer}")]
        last = layer == len(sizes) - 2
        gemm_out = f"gemm{layer}" if (not last or softmax) else output_name
        nodes.append(helper.make_node("Gemm", [current, f"w{layer}", f"b{layer}"], [gemm_out]))
        if not last:
            nodes.append(helper.make_node("Relu", [gemm_out], [f"relu{layer}"]))
            current = f"relu{layer}"
        elif softmax:
            nodes.append(helper.make_node("Softmax", [gemm_out], [output_name], axis=1))
    inputs = [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", sizes[0]])]
    outputs = [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", sizes[-1]])]
    return helper.make_graph(nodes, name, inputs, outputs, inits)


def make_tabular(root: Path, version: int = 1, seed: int = 7) -> None:
    graph = mlp_graph("tabular", [8, 16, 3], seed, "features", "probabilities", softmax=True)
    graph.node.append(helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=1))
    graph.output.append(helper.make_tensor_value_info("label", TensorProto.INT64, ["batch", 1]))
    _save(graph, root / "tabular" / str(version) / "model.onnx")
    (root / "tabular" / "config.pbtxt").write_text(TABULAR_CONFIG)


def make_two_input(root: Path, version: int = 1) -> None:
    nodes = [
        helper.make_node("Cast", ["a"], ["a_float"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["a_float", "b"], ["sum"]),
        helper.make_node("Mul", ["a_float", "b"], ["product"]),
    ]
    graph = helper.make_graph(
        nodes, "two_input",
        [helper.make_tensor_value_info("a", TensorProto.INT32, ["batch", 4]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("product", TensorProto.FLOAT, ["batch", 4])],
    )
    _save(graph, root / "two_input" / str(version) / "model.onnx")
    (root / "two_input" / "config.pbtxt").write_text(TWO_INPUT_CONFIG)


def make_fixed(root: Path, version: int = 1, seed: int = 3) -> None:
    w = np.random.default_rng(seed).standard_normal((3, 2)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
        [numpy_helper.from_array(w, "w")],
    )
    _save(graph, root / "fixed" / str(version) / "model.onnx")
    (root / "fixed" / "config.pbtxt").write_text(FIXED_CONFIG)


def make_identity(root: Path, name: str, elem_type: int, dims: Sequence[int | str] = ("batch", 4),
                  config: str | None = None) -> None:
    """Identity model for one ONNX element type (datatype round trips)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])], name,
        [helper.make_tensor_value_info("INPUT0", elem_type, list(dims))],
        [helper.make_tensor_value_info("OUTPUT0", elem_type, list(dims))],
    )
    _save(graph, root / name / "1" / "model.onnx")
    if config is not None:
        (root / name / "config.pbtxt").write_text(config)


def make_mlp(root: Path, name: str, sizes: Sequence[int], max_batch_size: int = 64, seed: int = 11,
             config_extra: str = "dynamic_batching { }\n") -> None:
    """A bare MLP [batch, sizes[0]] -> [batch, sizes[-1]] with a minimal config (the rest auto-completed)."""
    _save(mlp_graph(name, sizes, seed), root / name / "1" / "model.onnx")
    (root / name / "config.pbtxt").write_text(f'name: "{name}"\nmax_batch_size: {max_batch_size}\n{config_extra}')


def make_samples(root: Path) -> None:
    make_tabular(root)
    make_two_input(root)
    make_fixed(root)


if __name__ == "__main__":
    make_samples(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent)
