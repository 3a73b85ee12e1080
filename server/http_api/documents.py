"""JSON documents of the non-inference routes, in Triton's field names: metadata, model config,
statistics and repository index out; repository load / unload / index request bodies in.

Pure functions (no Starlette), so they are tested by calling them.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from google.protobuf import json_format

from .._generated import model_config_pb2 as mc
from ..dataplane import ServerMetadata
from ..errors import InvalidInput
from ..model_statistics import BatchStatistics, Duration, ModelStatistics
from ..protocol.http_codec import parse_json_object
from ..repository.manager import IndexEntry, ModelMetadata, TensorMetadata
from ..routing.spec import RolloutSpec

__all__ = [
    "check_unload_request",
    "decode_index_request",
    "decode_load_request",
    "encode_index",
    "encode_model_config",
    "encode_model_metadata",
    "encode_server_metadata",
    "encode_statistics",
]

_FILE_PREFIX = "file:"


# -- out -----------------------------------------------------------------------------------------
def encode_server_metadata(meta: ServerMetadata) -> dict[str, Any]:
    return {"name": meta.name, "version": meta.version, "extensions": list(meta.extensions)}


def _tensor(t: TensorMetadata) -> dict[str, Any]:
    return {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}


def encode_model_metadata(meta: ModelMetadata) -> dict[str, Any]:
    return {
        "name": meta.name,
        "versions": list(meta.versions),
        "platform": meta.platform,
        "inputs": [_tensor(t) for t in meta.inputs],
        "outputs": [_tensor(t) for t in meta.outputs],
    }


def encode_model_config(config: mc.ModelConfig) -> dict[str, Any]:
    """The config as Triton's HTTP API shows it: proto field names, defaults included, int64 as numbers."""
    document: dict[str, Any] = json_format.MessageToDict(
        config, always_print_fields_with_no_presence=True, preserving_proto_field_name=True,
        unquote_int64_if_possible=True)
    return document


def _duration(d: Duration) -> dict[str, int]:
    return {"count": d.count, "ns": d.ns}


def _batch(b: BatchStatistics) -> dict[str, Any]:
    return {"batch_size": b.batch_size, "compute_input": _duration(b.compute_input),
            "compute_infer": _duration(b.compute_infer), "compute_output": _duration(b.compute_output)}


def _model_statistics(s: ModelStatistics) -> dict[str, Any]:
    zero = Duration()
    return {
        "name": s.name,
        "version": s.version,
        "last_inference": s.last_inference_ms,
        "inference_count": s.inference_count,
        "execution_count": s.execution_count,
        "inference_stats": {
            "success": _duration(s.success), "fail": _duration(s.fail), "queue": _duration(s.queue),
            "compute_input": _duration(s.compute_input), "compute_infer": _duration(s.compute_infer),
            "compute_output": _duration(s.compute_output),
            "cache_hit": _duration(zero), "cache_miss": _duration(zero),
        },
        "batch_stats": [_batch(b) for _, b in sorted(s.batches.items())],
    }


def encode_statistics(stats: list[ModelStatistics]) -> dict[str, Any]:
    return {"model_stats": [_model_statistics(s) for s in stats]}


def encode_index(entries: list[IndexEntry]) -> list[dict[str, str]]:
    return [{"name": e.name, "version": e.version, "state": e.state, "reason": e.reason} for e in entries]


# -- in ------------------------------------------------------------------------------------------
def _body_parameters(body: bytes, what: str) -> dict[str, Any]:
    """The `parameters` object of an optional JSON body (tritonclient may send an empty body)."""
    if not body.strip():
        return {}
    params = parse_json_object(body, what).get("parameters", {})
    if not isinstance(params, dict):
        raise InvalidInput(f"{what}: 'parameters' must be a JSON object")
    return params


def decode_index_request(body: bytes) -> bool:
    """Whether only READY models are asked for."""
    ready = parse_json_object(body, "repository index request").get("ready", False) if body.strip() else False
    if not isinstance(ready, bool):
        raise InvalidInput("repository index request: 'ready' must be a boolean")
    return ready


def decode_load_request(body: bytes) -> tuple[str | None, dict[str, bytes]]:
    """(config JSON or None, {"file:<version>/<path>": content}) from a repository load body."""
    params = _body_parameters(body, "model load request")
    config = params.get("config")
    if config is not None and not isinstance(config, str):
        raise InvalidInput("model load request: parameter 'config' must be a string of JSON")
    files = {key: _base64(key, value) for key, value in params.items() if key.startswith(_FILE_PREFIX)}
    if files and config is None:
        raise InvalidInput("model load request: file overrides need the 'config' parameter too")
    return config, files


def _base64(key: str, value: Any) -> bytes:
    if not isinstance(value, str):
        raise InvalidInput(f"model load request: parameter '{key}' must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        raise InvalidInput(f"model load request: parameter '{key}' is not valid base64") from None


def check_unload_request(body: bytes) -> None:
    """Refuse a malformed unload body. Its one parameter, `unload_dependents`, changes nothing: Tessera
    serves no ensembles, so no model depends on another."""
    dependents = _body_parameters(body, "model unload request").get("unload_dependents", False)
    if not isinstance(dependents, bool):
        raise InvalidInput("model unload request: parameter 'unload_dependents' must be a boolean")


def decode_rollout_spec(body: bytes) -> RolloutSpec:
    """A RolloutSpec in protobuf JSON (candidate_version, shadow, canary, analysis)."""
    return RolloutSpec.from_dict(parse_json_object(body, "rollout spec"))


def decode_reason(body: bytes) -> str:
    """The optional `reason` of a promote or abort request."""
    if not body.strip():
        return ""
    reason = parse_json_object(body, "rollout request").get("reason", "")
    if not isinstance(reason, str):
        raise InvalidInput("rollout request: 'reason' must be a string")
    return reason
