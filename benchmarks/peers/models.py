"""Builds the benchmark's model repository under .bench/: the MLP 64->256->256->10 (FP32, batched),
plus a copy of the sample repository's `tabular` model when it exists.

    python -m benchmarks.peers.models [--out DIR]
"""

from __future__ import annotations

import argparse
import itertools
import shutil
from pathlib import Path

import numpy as np

__all__ = ["build_mlp", "build_repository"]

MLP_CONFIG = """name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ {n_in} ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ {n_out} ] }} ]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
dynamic_batching {{ max_queue_delay_microseconds: 500 }}
"""


def build_mlp(path: Path, widths: tuple[int, ...] = (64, 256, 256, 10), seed: int = 0) -> None:
    """An MLP with ReLUs between layers, input `x` [-1, widths[0]], output `y` [-1, widths[-1]]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, current = [], [], "x"
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        w = numpy_helper.from_array((rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32), f"w{i}")
        bias = numpy_helper.from_array(np.zeros(b, np.float32), f"b{i}")
        inits += [w, bias]
        out = "y" if i == len(widths) - 2 else f"h{i}"
        mm, add = f"mm{i}", (out if i == len(widths) - 2 else f"a{i}")
        nodes += [
            helper.make_node("MatMul", [current, f"w{i}"], [mm]),
            helper.make_node("Add", [mm, f"b{i}"], [add]),
        ]
        if i < len(widths) - 2:
            nodes.append(helper.make_node("Relu", [add], [out]))
        current = out
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", widths[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", widths[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def build_repository(out: Path, sample_repository: Path | None = None) -> list[str]:
    """Write a Triton-layout repository; returns the model names in it. Idempotent."""
    names = ["mlp"]
    if not (out / "mlp" / "1" / "model.onnx").exists():
        build_mlp(out / "mlp" / "1" / "model.onnx")
    (out / "mlp" / "config.pbtxt").write_text(MLP_CONFIG.format(name="mlp", n_in=64, n_out=10))
    if sample_repository is not None and (sample_repository / "tabular").is_dir():
        shutil.copytree(sample_repository / "tabular", out / "tabular", dirs_exist_ok=True)
        names.append("tabular")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(".bench/peers/models"))
    parser.add_argument("--sample-repository", type=Path, default=Path("model_repository"))
    args = parser.parse_args()
    print(build_repository(args.out, args.sample_repository))


if __name__ == "__main__":
    main()
