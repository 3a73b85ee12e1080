"""The executor on its own: ONNX Runtime sessions from a ModelSpec (providers from instance_group), the
runner's thread pool, and warmup runs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from server.errors import ModelLoadError
from server.executor.runner import OrtRunner
from server.executor.session import gpu_available, graph_tensors
from server.executor.warmup import warm_up
from server.repository.config import build_spec, complete_config, read_config
from server.spec import ModelSpec

from ..sample_models import make_models


def _spec(root: Path, name: str, config_extra: str = "dynamic_batching { }\n") -> ModelSpec:
    make_models.make_mlp(root, name, [8, 16, 3], config_extra=config_extra)
    model_file = root / name / "1" / "model.onnx"
    inputs, outputs = graph_tensors(str(model_file))
    config = complete_config(read_config(root / name), name, inputs, outputs)
    return build_spec(config, 1, model_file, gpu_available=gpu_available(), intra_op_threads=1, allow_spinning=False)


async def test_a_runner_answers_as_onnxruntime_does_on_every_instance(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "mlp", "instance_group [ { kind: KIND_CPU, count: 2 } ]\ndynamic_batching { }\n")
    runner = await asyncio.to_thread(OrtRunner.create, spec)
    try:
        assert runner.instances == 2
        x = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)
        reference = ort.InferenceSession(str(spec.model_path), providers=["CPUExecutionProvider"])
        expected = reference.run(None, {spec.inputs[0].name: x})[0]
        answers = await asyncio.gather(*(runner.run({spec.inputs[0].name: x}) for _ in range(2)))
        for outputs in answers:
            np.testing.assert_allclose(outputs[spec.outputs[0].name], expected, rtol=1e-5, atol=1e-6)
    finally:
        runner.close()


async def test_warmup_runs_each_preferred_size_on_every_instance(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "warm", "instance_group [ { kind: KIND_CPU, count: 2 } ]\n"
                                   "dynamic_batching { preferred_batch_size: [ 2, 8 ] }\n")
    runner = await asyncio.to_thread(OrtRunner.create, spec)
    try:
        assert await warm_up(spec, runner) == 4
    finally:
        runner.close()


@pytest.mark.skipif(gpu_available(), reason="this onnxruntime has CUDA; the GPU path runs on a GPU machine")
def test_kind_gpu_without_cuda_fails_with_a_reason_that_says_so(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "gpu", "instance_group [ { kind: KIND_GPU, count: 1, gpus: [ 0 ] } ]\n")
    with pytest.raises(ModelLoadError, match="KIND_GPU but this onnxruntime has no CUDA execution provider"):
        OrtRunner.create(spec)
