"""ONNX Runtime sessions from a ModelSpec: providers from instance_group, threads and spinning set deliberately.

ORT's default intra-op pool spin-waits after each run and, on a 2-core machine, burns most of both
cores even at one request in flight, starving the event loop. Sessions here default to one intra-op
thread without spinning; models opt in through config parameters (see README).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnxruntime as ort

from ..errors import ModelLoadError
from ..spec import DeviceKind, GraphTensor, InstanceGroupSpec, ModelSpec

__all__ = ["available_providers", "create_sessions", "gpu_available", "graph_tensors"]

_LEVELS = {
    -1: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    0: ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    1: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
}


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


def gpu_available() -> bool:
    return "CUDAExecutionProvider" in available_providers()


def _options(spec: ModelSpec) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(spec.intra_op_threads, 0)
    options.inter_op_num_threads = max(spec.inter_op_threads, 0)
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = _LEVELS[spec.graph_optimization_level]
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spec.allow_spinning else "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "1" if spec.allow_spinning else "0")
    options.log_severity_level = 3
    return options


def _providers(spec: ModelSpec, group: InstanceGroupSpec, device_id: int) -> list[Any]:
    available = available_providers()
    if group.kind is DeviceKind.GPU:
        if "CUDAExecutionProvider" not in available:
            raise ModelLoadError(
                f"model '{spec.name}' asks for KIND_GPU but this onnxruntime has no CUDA execution "
                f"provider (available: {', '.join(available)}); install tessera[gpu] on a machine with "
                "an NVIDIA GPU, or use KIND_CPU"
            )
        providers: list[Any] = []
        if "tensorrt" in spec.gpu_accelerators:
            if "TensorrtExecutionProvider" not in available:
                raise ModelLoadError(f"model '{spec.name}' asks for the tensorrt accelerator, which this "
                                     "onnxruntime does not offer")
            providers.append(("TensorrtExecutionProvider", {"device_id": device_id}))
        providers.append(("CUDAExecutionProvider", {"device_id": device_id}))
        return [*providers, "CPUExecutionProvider"]
    providers = []
    if "openvino" in spec.cpu_accelerators:
        if "OpenVINOExecutionProvider" not in available:
            raise ModelLoadError(f"model '{spec.name}' asks for the openvino accelerator, which this "
                                 "onnxruntime does not offer")
        providers.append("OpenVINOExecutionProvider")
    return [*providers, "CPUExecutionProvider"]


def _create(spec: ModelSpec, group: InstanceGroupSpec, device_id: int) -> ort.InferenceSession:
    providers = _providers(spec, group, device_id)
    try:
        session = ort.InferenceSession(str(spec.model_path), sess_options=_options(spec), providers=providers)
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
        raise ModelLoadError(f"model '{spec.name}' version {spec.version}: {exc}") from exc
    if group.kind is DeviceKind.GPU and "CUDAExecutionProvider" not in session.get_providers():
        raise ModelLoadError(f"model '{spec.name}': the CUDA provider could not be initialised on device "
                             f"{device_id} (session fell back to {session.get_providers()})")
    return session


def create_sessions(spec: ModelSpec) -> list[ort.InferenceSession]:
    """One session per instance: `count` per group, times each listed GPU. Blocking."""
    sessions = []
    for group in spec.instance_groups:
        devices = group.gpus or (0,)
        for device_id in devices:
            for _ in range(group.count):
                sessions.append(_create(spec, group, device_id))
    return sessions


def graph_tensors(path: str) -> tuple[list[GraphTensor], list[GraphTensor]]:
    """Inputs and outputs declared by the ONNX graph at `path` (loads a CPU session). Blocking."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelLoadError(f"{Path(path).name}: not a loadable ONNX model: {exc}") from exc
    inputs = [GraphTensor(i.name, i.type, tuple(i.shape)) for i in session.get_inputs()]
    outputs = [GraphTensor(o.name, o.type, tuple(o.shape)) for o in session.get_outputs()]
    return inputs, outputs
