"""Stacking requests into one batch and splitting the batch's outputs back, as views where possible."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..tensors import Tensor

__all__ = ["batch_key", "split_outputs", "stack_inputs"]

BatchKey = tuple[tuple[str, np.dtype[Any], tuple[int, ...]], ...]


def batch_key(feeds: dict[str, Tensor]) -> BatchKey:
    """Requests merge only when every input agrees on dtype and non-batch dims."""
    # The dtype itself, not its .str: numpy formats that string anew on every read.
    return tuple((name, array.dtype, tuple(array.shape[1:])) for name, array in feeds.items())


def stack_inputs(parts: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    """One concatenate per input; a batch of one request is passed through without a copy."""
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([p[name] for p in parts], axis=0) for name in parts[0]}


def split_outputs(outputs: dict[str, Tensor], rows: Sequence[int]) -> list[dict[str, Tensor]]:
    """Slice each output along the batch dimension: views, no copies."""
    if len(rows) == 1:
        return [outputs]
    pieces: list[dict[str, Tensor]] = [{} for _ in rows]
    for name, array in outputs.items():
        offset = 0
        for index, count in enumerate(rows):
            pieces[index][name] = array[offset : offset + count]
            offset += count
    return pieces
