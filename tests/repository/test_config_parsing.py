"""config.pbtxt parsing, auto-completion from the ONNX graph, and load errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.errors import ModelLoadError
from server.executor.session import graph_tensors
from server.metrics import Metrics
from server.repository.config import build_spec, complete_config, read_config
from server.repository.manager import ModelManager
from server.settings import ServerSettings
from server.spec import ModelSpec

from ..sample_models import make_models


def _manager(root: Path) -> ModelManager:
    return ModelManager(root, ServerSettings(model_repository=str(root)), Metrics())


def _index(manager: ModelManager) -> dict[tuple[str, str], tuple[str, str]]:
    return {(e.name, e.version): (e.state, e.reason) for e in manager.index()}


@pytest.mark.parametrize(("snippet", "field"), [
    pytest.param("sequence_batching { }", "sequence_batching", id="sequence-batching"),
    pytest.param("ensemble_scheduling { }", "ensemble_scheduling", id="ensemble"),
    pytest.param("response_cache { enable: true }", "response_cache", id="response-cache"),
    pytest.param('backend: "pytorch"', "backend", id="other-backend"),
    pytest.param("instance_group [ { kind: KIND_MODEL } ]", "KIND_MODEL", id="kind-model"),
    pytest.param("dynamic_batching { default_queue_policy { timeout_action: DELAY } }", "DELAY", id="delay"),
    pytest.param('output [ { name: "output" data_type: TYPE_FP32 dims: [10] label_filename: "l.txt" } ]',
                 "label_filename", id="labels"),
])
async def test_unsupported_config_fails_the_load_naming_the_field(tmp_path, snippet, field):
    make_models.make_mlp(tmp_path, "m", [4, 10], config_extra=snippet + "\n")
    manager = _manager(tmp_path)
    with pytest.raises(ModelLoadError, match=field):
        await manager.load("m")
    states = _index(manager)
    assert any(state == "FAILED" and field in reason for state, reason in states.values())


async def test_a_broken_model_fails_alone(tmp_path):
    make_models.make_tabular(tmp_path)
    make_models.make_mlp(tmp_path, "broken", [4, 10])
    (tmp_path / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    manager = _manager(tmp_path)
    await manager.load_all()
    states = _index(manager)
    assert states[("tabular", "1")] == ("READY", "")
    assert states[("broken", "1")][0] == "FAILED" and "not a loadable ONNX model" in states[("broken", "1")][1]
    await manager.stop()


async def test_missing_config_is_completed_from_the_graph(tmp_path):
    make_models.make_mlp(tmp_path, "auto", [4, 10])
    (tmp_path / "auto" / "config.pbtxt").unlink()
    manager = _manager(tmp_path)
    await manager.load("auto")
    spec = manager.get("auto").spec
    assert spec.max_batch_size == 4  # Triton's default for a batchable graph
    assert [(t.name, t.datatype, t.dims) for t in spec.inputs] == [("input", "FP32", (4,))]
    assert [(t.name, t.datatype, t.dims) for t in spec.outputs] == [("output", "FP32", (10,))]
    assert spec.batching is not None
    await manager.stop()


def test_config_dims_that_contradict_the_graph_are_rejected(tmp_path):
    make_models.make_mlp(tmp_path, "m", [4, 10],
                         config_extra='input [ { name: "input" data_type: TYPE_FP32 dims: [ 5 ] } ]\n')
    from server.executor.session import graph_tensors

    inputs, outputs = graph_tensors(str(tmp_path / "m" / "1" / "model.onnx"))
    with pytest.raises(ModelLoadError, match=r"config dims \[5\] do not match the graph's \[4\]"):
        complete_config(read_config(tmp_path / "m"), "m", inputs, outputs)


def test_wrong_datatype_in_config_is_rejected(tmp_path):
    make_models.make_mlp(tmp_path, "m", [4, 10],
                         config_extra='input [ { name: "input" data_type: TYPE_INT64 dims: [ 4 ] } ]\n')
    from server.executor.session import graph_tensors

    inputs, outputs = graph_tensors(str(tmp_path / "m" / "1" / "model.onnx"))
    with pytest.raises(ModelLoadError, match="config says TYPE_INT64, the graph has tensor"):
        complete_config(read_config(tmp_path / "m"), "m", inputs, outputs)


async def test_kind_gpu_without_cuda_fails_with_a_reason_that_says_so(tmp_path):
    from server.executor.session import gpu_available

    if gpu_available():  # pragma: no cover - only on GPU machines
        pytest.skip("this machine's onnxruntime has CUDA; the GPU path is checked on the device machine")
    make_models.make_mlp(tmp_path, "gpu", [4, 10],
                         config_extra="instance_group [ { kind: KIND_GPU, count: 1, gpus: [ 0 ] } ]\n")
    manager = _manager(tmp_path)
    with pytest.raises(ModelLoadError, match="KIND_GPU but this onnxruntime has no CUDA execution provider"):
        await manager.load("gpu")


def _built_spec(root: Path, config_extra: str) -> ModelSpec:
    make_models.make_mlp(root, "m", [4, 10], config_extra=config_extra)
    model_file = root / "m" / "1" / "model.onnx"
    inputs, outputs = graph_tensors(str(model_file))
    config = complete_config(read_config(root / "m"), "m", inputs, outputs)
    return build_spec(config, 1, model_file, gpu_available=False, intra_op_threads=1, allow_spinning=False)


@pytest.mark.parametrize(("value", "expected"), [("false", False), ("0", False), ("TRUE", True), (None, True)])
def test_the_adaptive_batching_parameter_is_read_as_a_boolean(tmp_path, value, expected):
    extra = "dynamic_batching { }\n"
    if value is not None:
        extra += f'parameters {{ key: "adaptive_batching" value: {{ string_value: "{value}" }} }}\n'
    assert _built_spec(tmp_path, extra).adaptive_batching is expected


def test_an_adaptive_batching_value_that_is_not_a_boolean_fails_the_load(tmp_path):
    with pytest.raises(ModelLoadError, match="adaptive_batching: 'sometimes' is not true or false"):
        _built_spec(tmp_path, 'parameters { key: "adaptive_batching" value: { string_value: "sometimes" } }\n')
