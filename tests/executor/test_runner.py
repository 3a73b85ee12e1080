"""The executor on its own: ONNX Runtime sessions from a ModelSpec (providers from instance_group), the
runner's thread pool, and warmup runs."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from server.errors import ModelLoadError
from server.executor.runner import OrtRunner, default_inline_run_us
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


class _ThreadRecorder:
    """A real session that notes which thread made each run."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self._session = session
        self.threads: list[int] = []

    def run(self, names: Any, feeds: Any) -> Any:
        self.threads.append(threading.get_ident())
        return self._session.run(names, feeds)

    def get_providers(self) -> list[str]:
        return list(self._session.get_providers())


def _recorded_runner(spec: ModelSpec, inline_run_us: int) -> tuple[OrtRunner, _ThreadRecorder]:
    from server.executor.session import create_sessions

    recorder = _ThreadRecorder(create_sessions(spec)[0])
    return OrtRunner(spec, [recorder], inline_run_us=inline_run_us), recorder  # type: ignore[list-item]


async def test_a_short_run_is_made_on_the_loop_once_its_batch_size_has_been_measured(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "mlp")
    runner, recorder = _recorded_runner(spec, inline_run_us=1_000_000)
    loop_thread = threading.get_ident()
    name = spec.inputs[0].name
    x = np.random.default_rng(2).standard_normal((4, 8)).astype(np.float32)
    reference = ort.InferenceSession(str(spec.model_path), providers=["CPUExecutionProvider"])
    try:
        for rows in (4, 4, 7, 16, 16):  # 4 and 7 share a bucket (4-7 rows); 16 is a new one
            outputs = await runner.run({name: np.resize(x, (rows, 8))})
            expected = reference.run(None, {name: np.resize(x, (rows, 8))})[0]
            np.testing.assert_allclose(outputs[spec.outputs[0].name], expected, rtol=1e-5, atol=1e-6)
        on_loop = [thread == loop_thread for thread in recorder.threads]
        assert on_loop == [False, True, True, False, True]
    finally:
        runner.close()


async def test_runs_slower_than_the_limit_or_with_it_off_stay_on_the_pool(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "mlp")
    name = spec.inputs[0].name
    x = np.ones((2, 8), np.float32)
    for limit in (0, 1):  # off; and 1 us, which no run of this model takes
        runner, recorder = _recorded_runner(spec, inline_run_us=limit)
        try:
            for _ in range(3):
                await runner.run({name: x})
            assert threading.get_ident() not in recorder.threads
        finally:
            runner.close()


async def test_a_model_parameter_overrides_the_server_and_multithreaded_sessions_never_run_inline(
        tmp_path: Path) -> None:
    spec = _spec(tmp_path, "mlp", 'parameters { key: "inline_run_us" value: { string_value: "0" } }\n'
                                  "dynamic_batching { }\n")
    assert spec.inline_run_us == 0
    runner, _ = _recorded_runner(spec, inline_run_us=1_000_000)
    assert runner.inline_limit_us == 0
    runner.close()
    threaded = dataclasses.replace(_spec(tmp_path, "mlp2"), intra_op_threads=2)
    runner, _ = _recorded_runner(threaded, inline_run_us=1_000_000)
    assert runner.inline_limit_us == 0
    runner.close()


def test_a_bad_inline_parameter_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="inline_run_us"):
        _spec(tmp_path, "mlp", 'parameters { key: "inline_run_us" value: { string_value: "soon" } }\n')


def test_the_default_limit_follows_the_cpus_and_a_servers_own_limit_is_kept(tmp_path: Path) -> None:
    for cpus, expected in ((1.0, 500), (0.5, 500), (2.0, 20), (1.5, 20)):
        assert default_inline_run_us(cpus) == expected
    runner, _ = _recorded_runner(_spec(tmp_path, "mlp"), inline_run_us=7)
    try:
        assert runner.inline_limit_us == 7
    finally:
        runner.close()
