"""Warmup: run a version before it takes traffic, so the first real request is not the first run.

Uses the config's `model_warmup` samples when given (zero_data / random_data / input_data_file),
otherwise one generated batch of zeros at each preferred batch size (or one row).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np

from .._generated import model_config_pb2 as mc
from ..datatypes import CONFIG_TO_V2, V2_TO_NUMPY
from ..errors import InvalidInput, ModelLoadError
from ..names import check_file_name
from ..spec import ModelSpec, TensorSpec
from ..tensors import Tensor
from .runner import OrtRunner

__all__ = ["warm_up", "warmup_batches"]


def _zeros(datatype: str, shape: tuple[int, ...]) -> Tensor:
    if datatype == "BYTES":
        out = np.empty(shape, dtype=np.object_)
        out.fill(b"")
        return out
    return np.zeros(shape, dtype=V2_TO_NUMPY[datatype])


def _random(datatype: str, shape: tuple[int, ...], rng: np.random.Generator) -> Tensor:
    dtype = V2_TO_NUMPY[datatype]
    if datatype == "BYTES":
        return _zeros(datatype, shape)
    if dtype.kind == "f":
        return rng.random(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(dtype)
    return rng.integers(0, 8, shape).astype(dtype)


def _concrete(dims: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(1 if d == -1 else d for d in dims)


def _shape(spec: ModelSpec, tensor: TensorSpec, rows: int) -> tuple[int, ...]:
    dims = tensor.reshape if tensor.reshape is not None else tensor.dims
    return ((rows,) if spec.batched else ()) + _concrete(dims)


def _from_sample(spec: ModelSpec, sample: mc.ModelWarmup, model_dir: Path) -> dict[str, Tensor]:
    rng = np.random.default_rng(0)
    rows = max(sample.batch_size, 1)
    feeds: dict[str, Tensor] = {}
    for tensor in spec.inputs:
        if tensor.name not in sample.inputs:
            raise ModelLoadError(f"model_warmup '{sample.name}': no data for input '{tensor.name}'")
        item = sample.inputs[tensor.name]
        datatype = CONFIG_TO_V2[mc.DataType.Name(item.data_type)]
        shape = ((rows,) if spec.batched else ()) + _concrete(tuple(item.dims))
        which = item.WhichOneof("input_data_type")
        if which == "random_data":
            feeds[tensor.name] = _random(datatype, shape, rng)
        elif which == "input_data_file":
            raw = _warmup_file(model_dir, item.input_data_file)
            one = np.frombuffer(raw, V2_TO_NUMPY[datatype]).reshape(shape[1:] if spec.batched else shape)
            feeds[tensor.name] = np.stack([one] * rows) if spec.batched else one
        else:
            feeds[tensor.name] = _zeros(datatype, shape)
    return feeds


def _warmup_file(model_dir: Path, name: str) -> bytes:
    """The bytes of `<model>/warmup/<name>`; `name` comes from a config a client may have sent."""
    try:
        path = model_dir / "warmup" / check_file_name(name, "model_warmup input_data_file")
        return path.read_bytes()
    except InvalidInput as exc:
        raise ModelLoadError(exc.message) from None
    except OSError as exc:
        raise ModelLoadError(f"model_warmup input_data_file 'warmup/{name}': {exc.strerror}") from None


def warmup_batches(spec: ModelSpec) -> list[tuple[dict[str, Tensor], int]]:
    """(feeds, repeat count) for each warmup run of the version."""
    model_dir = spec.model_path.parent.parent
    if spec.config.model_warmup:
        return [(_from_sample(spec, s, model_dir), max(s.count, 1)) for s in spec.config.model_warmup]
    sizes = spec.batching.preferred_batch_sizes if spec.batching and spec.batching.preferred_batch_sizes \
        else (1,)
    return [({t.name: _zeros(t.datatype, _shape(spec, t, size)) for t in spec.inputs}, 1) for size in sizes]


async def warm_up(spec: ModelSpec, runner: OrtRunner) -> int:
    """Run every warmup batch on every instance; return the number of runs. Raises ModelLoadError."""
    runs = 0
    try:
        batches: list[tuple[dict[str, Any], int]] = warmup_batches(spec)
    except ModelLoadError:
        raise
    except Exception as exc:  # an unreadable input_data_file, data that does not fit the dims
        raise ModelLoadError(f"model '{spec.name}' version {spec.version}: warmup data: {exc}") from exc
    for feeds, count in batches:
        for _ in range(count):
            # One run per instance at once, so every session (not just one) is warmed.
            try:
                await asyncio.gather(*(runner.run(feeds) for _ in range(runner.instances)))
            except Exception as exc:
                raise ModelLoadError(f"model '{spec.name}' version {spec.version}: warmup failed: {exc}") \
                    from exc
            runs += runner.instances
    return runs
