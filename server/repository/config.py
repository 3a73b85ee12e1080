"""config.pbtxt -> ModelConfig (protobuf text_format) -> completed from the ONNX graph -> ModelSpec.

Fields Tessera cannot honour fail the load with an error naming them; nothing is silently ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from google.protobuf import text_format
from google.protobuf.json_format import ParseDict, ParseError

from .._generated import model_config_pb2 as mc
from ..datatypes import CONFIG_TO_V2, ONNX_TO_V2, V2_TO_CONFIG
from ..errors import ModelLoadError
from ..spec import (
    BatchingSpec,
    DeviceKind,
    GraphTensor,
    InstanceGroupSpec,
    ModelSpec,
    TensorSpec,
    VersionPolicy,
)

__all__ = [
    "CONFIG_FILENAME",
    "DEFAULT_MODEL_FILENAME",
    "build_spec",
    "complete_config",
    "parse_config_json",
    "read_config",
    "version_policy",
]

CONFIG_FILENAME = "config.pbtxt"
DEFAULT_MODEL_FILENAME = "model.onnx"
# Triton's --backend-config=default-max-batch-size when auto-completing a batchable model.
AUTOCOMPLETE_MAX_BATCH_SIZE = 4
_PLATFORMS = ("", "onnxruntime_onnx")
_BACKENDS = ("", "onnxruntime")
_GRAPH_LEVELS = {-1: "basic", 0: "all", 1: "extended"}


def read_config(model_dir: Path) -> mc.ModelConfig:
    """Parse <model_dir>/config.pbtxt; a missing file gives an empty config to be completed."""
    path = model_dir / CONFIG_FILENAME
    config = mc.ModelConfig()
    if not path.exists():
        return config
    try:
        text_format.Parse(path.read_text(), config)
    except text_format.ParseError as exc:
        raise ModelLoadError(f"{CONFIG_FILENAME}: {exc}") from exc
    return config


def parse_config_json(text: str) -> mc.ModelConfig:
    """An inline config override (the repository extension's `config` parameter), in JSON."""
    import orjson

    try:
        config = mc.ModelConfig()
        ParseDict(orjson.loads(text), config)
        return config
    except (orjson.JSONDecodeError, ParseError, TypeError) as exc:
        raise ModelLoadError(f"config override: {exc}") from exc


def _check_supported(config: mc.ModelConfig) -> None:
    if config.platform not in _PLATFORMS:
        raise ModelLoadError(f"platform: '{config.platform}' is not served; Tessera serves onnxruntime_onnx")
    if config.backend not in _BACKENDS:
        raise ModelLoadError(f"backend: '{config.backend}' is not served; Tessera serves onnxruntime")
    if config.runtime:
        raise ModelLoadError("runtime: custom backend libraries are not supported")
    for out in config.output:
        if out.label_filename:
            raise ModelLoadError(f"output '{out.name}': label_filename (classification extension) "
                                 "is not supported")
    if config.HasField("dynamic_batching"):
        policy = config.dynamic_batching.default_queue_policy
        if policy.timeout_action == mc.ModelQueuePolicy.DELAY:
            raise ModelLoadError("dynamic_batching.default_queue_policy.timeout_action: DELAY is not "
                                 "supported; use REJECT")
    for group in config.instance_group:
        if group.kind == mc.ModelInstanceGroup.KIND_MODEL:
            raise ModelLoadError("instance_group.kind: KIND_MODEL is not supported; use KIND_CPU or KIND_GPU")
    if config.optimization.graph.level not in _GRAPH_LEVELS:
        raise ModelLoadError(f"optimization.graph.level: {config.optimization.graph.level} is not one of "
                             "-1, 0, 1")
    for acc in config.optimization.execution_accelerators.gpu_execution_accelerator:
        if acc.name != "tensorrt":
            raise ModelLoadError(f"gpu_execution_accelerator: '{acc.name}' is not supported; use tensorrt")
    for acc in config.optimization.execution_accelerators.cpu_execution_accelerator:
        if acc.name != "openvino":
            raise ModelLoadError(f"cpu_execution_accelerator: '{acc.name}' is not supported; use openvino")


def _batchable(graph: Sequence[GraphTensor]) -> bool:
    return all(t.shape and t.dims[0] == -1 for t in graph)


def _complete_tensors(declared: Sequence[mc.ModelInput] | Sequence[mc.ModelOutput],
                      graph: Sequence[GraphTensor], batched: bool, kind: str, model: str) -> None:
    """Check declared tensors against the graph; add those the config leaves out."""
    by_name = {t.name: t for t in graph}
    for tensor in declared:
        found = by_name.get(tensor.name)
        if found is None:
            raise ModelLoadError(f"{kind} '{tensor.name}' of model '{model}' is not in the ONNX graph, "
                                 f"which has: {', '.join(by_name)}")
        want = ONNX_TO_V2.get(found.onnx_type)
        got = CONFIG_TO_V2.get(mc.DataType.Name(tensor.data_type))
        if want != got:
            raise ModelLoadError(f"{kind} '{tensor.name}' of model '{model}': config says "
                                 f"{mc.DataType.Name(tensor.data_type)}, the graph has {found.onnx_type}")
        if not tensor.HasField("reshape"):
            graph_dims = found.dims[1:] if batched else found.dims
            if len(graph_dims) != len(tensor.dims) or any(
                g not in (-1, d) and d != -1 for g, d in zip(graph_dims, tensor.dims, strict=True)
            ):
                raise ModelLoadError(f"{kind} '{tensor.name}' of model '{model}': config dims "
                                     f"{list(tensor.dims)} do not match the graph's {list(graph_dims)}"
                                     f"{' after the batch dimension' if batched else ''}")
    names = {t.name for t in declared}
    for found in graph:
        if found.name in names:
            continue
        v2 = ONNX_TO_V2.get(found.onnx_type)
        if v2 is None:
            raise ModelLoadError(f"{kind} '{found.name}' of model '{model}' has unsupported type "
                                 f"{found.onnx_type}")
        added = declared.add()  # type: ignore[union-attr]
        added.name = found.name
        added.data_type = mc.DataType.Value(V2_TO_CONFIG[v2])
        added.dims.extend(found.dims[1:] if batched else found.dims)


def complete_config(config: mc.ModelConfig, name: str, inputs: Sequence[GraphTensor],
                    outputs: Sequence[GraphTensor]) -> mc.ModelConfig:
    """A copy of `config` completed from the graph, as Triton's auto-complete does."""
    _check_supported(config)
    done = mc.ModelConfig()
    done.CopyFrom(config)
    done.name = done.name or name
    if done.name != name:
        raise ModelLoadError(f"name: config says '{done.name}' but the model directory is '{name}'")
    done.platform = "onnxruntime_onnx"
    done.backend = "onnxruntime"
    if not config.input and not config.output and config.max_batch_size == 0 and _batchable(
        [*inputs, *outputs]
    ):
        done.max_batch_size = AUTOCOMPLETE_MAX_BATCH_SIZE
        if not done.HasField("dynamic_batching"):
            done.dynamic_batching.SetInParent()
    batched = done.max_batch_size > 0
    if batched and not _batchable([*inputs, *outputs]):
        raise ModelLoadError(f"max_batch_size: {done.max_batch_size} needs a dynamic first dimension on "
                             f"every input and output of model '{name}'")
    _complete_tensors(done.input, inputs, batched, "input", name)
    _complete_tensors(done.output, outputs, batched, "output", name)
    if not done.instance_group:
        group = done.instance_group.add()
        group.kind = mc.ModelInstanceGroup.KIND_CPU
        group.count = 1
    for index, group in enumerate(done.instance_group):
        group.name = group.name or f"{name}_{index}"
        group.count = group.count or 1
    if not done.HasField("version_policy"):
        done.version_policy.latest.num_versions = 1
    return done


def _tensor(t: mc.ModelInput | mc.ModelOutput, optional: bool = False) -> TensorSpec:
    reshape = tuple(t.reshape.shape) if t.HasField("reshape") else None
    return TensorSpec(t.name, CONFIG_TO_V2[mc.DataType.Name(t.data_type)], tuple(t.dims), reshape, optional)


def version_policy(config: mc.ModelConfig) -> VersionPolicy:
    which = config.version_policy.WhichOneof("policy_choice")
    if which == "all":
        return VersionPolicy("all")
    if which == "specific":
        return VersionPolicy("specific", versions=tuple(config.version_policy.specific.versions))
    return VersionPolicy("latest", num_versions=config.version_policy.latest.num_versions or 1)


def _batching(config: mc.ModelConfig) -> BatchingSpec | None:
    if not config.HasField("dynamic_batching") or config.max_batch_size == 0:
        return None
    db = config.dynamic_batching
    for size in db.preferred_batch_size:
        if not 0 < size <= config.max_batch_size:
            raise ModelLoadError(f"dynamic_batching.preferred_batch_size: {size} is not within "
                                 f"1..max_batch_size ({config.max_batch_size})")
    policy = db.default_queue_policy
    return BatchingSpec(
        preferred_batch_sizes=tuple(sorted(db.preferred_batch_size)),
        max_queue_delay_us=db.max_queue_delay_microseconds,
        max_queue_size=policy.max_queue_size,
        default_timeout_us=policy.default_timeout_microseconds,
        allow_timeout_override=policy.allow_timeout_override,
    )


def _instance_groups(config: mc.ModelConfig, gpu_available: bool) -> tuple[InstanceGroupSpec, ...]:
    groups = []
    for group in config.instance_group:
        kind = group.kind
        if kind == mc.ModelInstanceGroup.KIND_AUTO:
            kind = mc.ModelInstanceGroup.KIND_GPU if gpu_available else mc.ModelInstanceGroup.KIND_CPU
        if kind == mc.ModelInstanceGroup.KIND_CPU and group.gpus:
            raise ModelLoadError(f"instance_group '{group.name}': gpus cannot be set with KIND_CPU")
        device = DeviceKind.GPU if kind == mc.ModelInstanceGroup.KIND_GPU else DeviceKind.CPU
        groups.append(InstanceGroupSpec(device, group.count, tuple(group.gpus)))
    return tuple(groups)


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _bool_parameter(config: mc.ModelConfig, key: str, default: bool) -> bool:
    if key not in config.parameters:
        return default
    value = config.parameters[key].string_value
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ModelLoadError(f"parameters.{key}: '{value}' is not true or false")


def _int_parameter(config: mc.ModelConfig, key: str, default: int) -> int:
    if key not in config.parameters:
        return default
    value = config.parameters[key].string_value
    try:
        return int(value)
    except ValueError as exc:
        raise ModelLoadError(f"parameters.{key}: '{value}' is not an integer") from exc


def build_spec(config: mc.ModelConfig, version: int, model_path: Path, *, gpu_available: bool,
               intra_op_threads: int, allow_spinning: bool) -> ModelSpec:
    """The frozen spec of one version from its completed config."""
    optional = {t.name for t in config.input if t.optional}
    accelerators = config.optimization.execution_accelerators
    spinning = config.parameters["allow_spinning"].string_value if "allow_spinning" in config.parameters \
        else ("1" if allow_spinning else "0")
    return ModelSpec(
        name=config.name,
        version=version,
        model_path=model_path,
        max_batch_size=config.max_batch_size,
        inputs=tuple(_tensor(t, t.name in optional) for t in config.input),
        outputs=tuple(_tensor(t) for t in config.output),
        instance_groups=_instance_groups(config, gpu_available),
        batching=_batching(config),
        version_policy=version_policy(config),
        config=config,
        graph_optimization_level=config.optimization.graph.level,
        gpu_accelerators=tuple(a.name for a in accelerators.gpu_execution_accelerator),
        cpu_accelerators=tuple(a.name for a in accelerators.cpu_execution_accelerator),
        parameters={k: v.string_value for k, v in config.parameters.items()},
        intra_op_threads=_int_parameter(config, "intra_op_thread_count", intra_op_threads),
        inter_op_threads=_int_parameter(config, "inter_op_thread_count", 1),
        allow_spinning=spinning.lower() in ("1", "true", "yes"),
        inline_run_us=max(_int_parameter(config, "inline_run_us", 0), 0) if "inline_run_us" in config.parameters
        else None,
        adaptive_batching=_bool_parameter(config, "adaptive_batching", True),
    )
