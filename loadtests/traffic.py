"""Explicit traffic: which payload goes at which offset, and which model each payload belongs to.

A scenario's rate schedule and a replayed arrival log both become `Arrivals` before the load starts;
the generator then only follows the list (open loop: latency counts from each scheduled time).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["Arrivals", "Mix"]


@dataclass(frozen=True, slots=True)
class Mix:
    """The models a step sends to, and the model (index into `models`) of each payload."""

    models: tuple[str, ...]
    payload_model: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.models or any(not 0 <= m < len(self.models) for m in self.payload_model):
            raise ValueError("a mix needs models and a valid model index for every payload")


@dataclass(frozen=True, slots=True)
class Arrivals:
    """Send times (seconds after the common start, ascending) and the payload sent at each."""

    offsets_s: npt.NDArray[np.float64]
    payloads: npt.NDArray[np.int64]

    def __post_init__(self) -> None:
        if len(self.offsets_s) != len(self.payloads):
            raise ValueError("one payload per arrival")
        if len(self.offsets_s) and (self.offsets_s[0] < 0 or np.any(np.diff(self.offsets_s) < 0)):
            raise ValueError("arrival offsets must be >= 0 and ascending")

    def __len__(self) -> int:
        return len(self.offsets_s)

    @property
    def span_s(self) -> float:
        """Offset of the last arrival (0 when empty)."""
        return float(self.offsets_s[-1]) if len(self.offsets_s) else 0.0

    def split(self, parts: int) -> list[Arrivals]:
        """Round-robin over `parts` generators: each keeps every parts-th arrival, so each sees the
        same schedule shape at 1/parts of the rate."""
        return [Arrivals(self.offsets_s[i::parts], self.payloads[i::parts]) for i in range(parts)]

    def head(self, count: int) -> Arrivals:
        return Arrivals(self.offsets_s[:count], self.payloads[:count])
