"""InferRequest and InferResponse: the numpy-backed request and answer shared by every layer.

Transports decode into these once; nothing below the transports sees protobuf or JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy.typing as npt

__all__ = ["BatchRun", "InferRequest", "InferResponse", "Parameters", "RequestedOutput", "Served", "Tensor"]

Tensor = npt.NDArray[Any]
Parameters = dict[str, bool | int | float | str]
BatchRun = tuple[int, int, int, int]
"""The batch a request ran in, shared by its members: (dispatched ns (perf_counter), compute ns, rows,
requests)."""
Served = tuple[int, int, str, str, BatchRun]
"""How the dataplane served a request: (rows, ns it waited in the batch queue, routing label (stable,
candidate or pinned), the caller's name, its batch). A plain tuple: it is made for every request."""

# The classes below are made for every request and write their own __init__: the one @dataclass
# generates is interpreted code even when mypyc compiles the module (0.18 against 0.06 us a call here),
# while dataclass still gives them eq, repr and replace. Keep each __init__'s parameters as the fields.


@dataclass(slots=True)
class RequestedOutput:
    """An output the client asked for; `binary` is the HTTP binary-data extension's choice."""

    name: str
    binary: bool | None = None
    parameters: Parameters = field(default_factory=dict)

    def __init__(self, name: str, binary: bool | None = None, parameters: Parameters | None = None) -> None:
        self.name = name
        self.binary = binary
        self.parameters = {} if parameters is None else parameters


@dataclass(slots=True)
class InferRequest:
    """One inference request, inputs already decoded to numpy arrays (views of the wire bytes).

    `model_version` is None when the client left the version to the server.
    `outputs` empty means every output of the model.
    `timeout_us` is the client's `timeout` parameter, 0 when not given.
    `datatypes` keeps the wire datatype of each input (BF16 travels as uint16 views).
    """

    model_name: str
    inputs: dict[str, Tensor]
    datatypes: dict[str, str]
    model_version: str | None = None
    id: str = ""
    outputs: list[RequestedOutput] = field(default_factory=list)
    parameters: Parameters = field(default_factory=dict)
    timeout_us: int = 0
    routing_key: str | None = None

    def __init__(self, model_name: str, inputs: dict[str, Tensor], datatypes: dict[str, str],
                 model_version: str | None = None, id: str = "", outputs: list[RequestedOutput] | None = None,
                 parameters: Parameters | None = None, timeout_us: int = 0, routing_key: str | None = None
                 ) -> None:
        self.model_name = model_name
        self.inputs = inputs
        self.datatypes = datatypes
        self.model_version = model_version
        self.id = id
        self.outputs = [] if outputs is None else outputs
        self.parameters = {} if parameters is None else parameters
        self.timeout_us = timeout_us
        self.routing_key = routing_key

    def batch_rows(self) -> int:
        """Rows along the first dimension of the first input (1 for a scalar-shaped input)."""
        for array in self.inputs.values():
            return int(array.shape[0]) if array.ndim else 1
        return 0


@dataclass(slots=True)
class InferResponse:
    """The answer to one InferRequest: outputs by name, in the order they are to be returned."""

    model_name: str
    model_version: str
    outputs: dict[str, Tensor]
    datatypes: dict[str, str]
    id: str = ""
    parameters: Parameters = field(default_factory=dict)
    served: Served | None = None
    """How it was served, for the request log; never sent to the client."""

    def __init__(self, model_name: str, model_version: str, outputs: dict[str, Tensor], datatypes: dict[str, str],
                 id: str = "", parameters: Parameters | None = None, served: Served | None = None) -> None:
        self.model_name = model_name
        self.model_version = model_version
        self.outputs = outputs
        self.datatypes = datatypes
        self.id = id
        self.parameters = {} if parameters is None else parameters
        self.served = served

