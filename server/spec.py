"""ModelSpec: one model version's configuration, parsed once into frozen dataclasses; the model's
description every layer may import (it imports nothing of Tessera's but the generated config).

The hot path reads only attributes of these; config.pbtxt is never consulted per request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from ._generated import model_config_pb2 as mc

__all__ = [
    "BatchingSpec",
    "DeviceKind",
    "GraphTensor",
    "InstanceGroupSpec",
    "ModelSpec",
    "TensorSpec",
    "VersionPolicy",
]


class DeviceKind(Enum):
    CPU = "CPU"
    GPU = "GPU"


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """An input or output as the client sees it: `dims` excludes the batch dimension."""

    name: str
    datatype: str
    dims: tuple[int, ...]
    reshape: tuple[int, ...] | None = None
    optional: bool = False

    def describe(self) -> str:
        return f"{self.datatype}[{','.join(str(d) for d in self.dims)}]"


@dataclass(frozen=True, slots=True)
class InstanceGroupSpec:
    kind: DeviceKind
    count: int
    gpus: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class BatchingSpec:
    """Triton's dynamic_batching block, units in the field names."""

    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 0
    max_queue_size: int = 0
    default_timeout_us: int = 0
    allow_timeout_override: bool = False


@dataclass(frozen=True, slots=True)
class VersionPolicy:
    """Which versions on disk are served: latest N, all, or a specific set."""

    kind: str = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def select(self, available: list[int]) -> list[int]:
        ordered = sorted(available)
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            return [v for v in ordered if v in self.versions]
        return ordered[-max(self.num_versions, 1) :]


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Everything needed to load and serve one version of one model."""

    name: str
    version: int
    model_path: Path
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    instance_groups: tuple[InstanceGroupSpec, ...]
    batching: BatchingSpec | None
    version_policy: VersionPolicy
    config: mc.ModelConfig
    platform: str = "onnxruntime_onnx"
    graph_optimization_level: int = 0
    gpu_accelerators: tuple[str, ...] = ()
    cpu_accelerators: tuple[str, ...] = ()
    parameters: dict[str, str] = field(default_factory=dict)
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    allow_spinning: bool = False
    inline_run_us: int | None = None
    """The model's `inline_run_us` parameter (executor/runner.py); None: the server's --inline-run-us."""
    adaptive_batching: bool = True
    """The model's `adaptive_batching` parameter: a queue delay while the loop is saturated (batching/batcher.py)."""

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 0

    @property
    def instance_count(self) -> int:
        return sum(g.count * max(len(g.gpus), 1) for g in self.instance_groups)

    def input(self, name: str) -> TensorSpec | None:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        return None

    def output(self, name: str) -> TensorSpec | None:
        for spec in self.outputs:
            if spec.name == name:
                return spec
        return None


@dataclass(frozen=True, slots=True)
class GraphTensor:
    """An input or output as the ONNX graph declares it; None or str dims are dynamic."""

    name: str
    onnx_type: str
    shape: tuple[int | str | None, ...]

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in self.shape)
