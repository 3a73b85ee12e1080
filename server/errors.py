"""The one error hierarchy of Tessera, and the one table that maps it to wire statuses.

TesseraError
 ├── InvalidInput          the request is malformed or does not match the model
 │    └── PayloadTooLarge  the request body is over the configured limit
 ├── ModelNotFound         no such model, or no such version of it
 ├── ModelNotReady         the model exists but cannot serve now
 ├── Overloaded            a queue is full; retry later
 ├── DeadlineExceeded      the request's timeout passed before it was computed
 ├── Unauthenticated       missing or wrong credentials
 ├── PermissionDenied      valid credentials without the needed scope
 ├── Unsupported           a feature or operation Tessera does not offer (or has switched off)
 ├── ModelLoadError        a model version could not be loaded
 └── ExecutionFailed       the runtime failed while computing a batch

Transports apply STATUS_TABLE in exactly one place each (server/grpc_api/errors.py,
server/http_api/errors.py). gRPC codes are given by name so this module does not import grpc.
"""

from __future__ import annotations

from http import HTTPStatus

__all__ = [
    "STATUS_TABLE",
    "DeadlineExceeded",
    "ExecutionFailed",
    "InvalidInput",
    "ModelLoadError",
    "ModelNotFound",
    "ModelNotReady",
    "Overloaded",
    "PayloadTooLarge",
    "PermissionDenied",
    "TesseraError",
    "Unauthenticated",
    "Unavailable",
    "Unsupported",
    "note_route",
    "status_for",
]


class TesseraError(Exception):
    """Base of every error Tessera reports to a client; the message is shown to the client as is."""

    route: tuple[str, str] | None = None
    """(version, routing label) of the model version the dataplane had routed the request to when this was
    raised; None when it failed before that. Never shown to the client: the request log names them."""

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.__class__.__name__

    @property
    def reason(self) -> str:
        """Short, stable label for metrics (bounded cardinality)."""
        return _REASONS.get(type(self), "error")


def note_route(error: BaseException, version: str, routing: str) -> None:
    """Name on `error` the model version and routing label the request had been routed to when it failed
    (`TesseraError.route`); an error that is not Tessera's takes the attribute too (exceptions carry a
    `__dict__`), so that the request log names where an internal error happened as well."""
    error.route = (version, routing)  # type: ignore[attr-defined]


class InvalidInput(TesseraError):
    """The request is malformed or does not match the model's inputs."""


class PayloadTooLarge(InvalidInput):
    """The request body or message is larger than the server accepts."""


class ModelNotFound(TesseraError):
    """No model, or no version of it, by that name."""


class ModelNotReady(TesseraError):
    """The model is known but not able to serve (loading, unloading, failed)."""


class Overloaded(TesseraError):
    """A bounded queue is full; the request was not accepted."""


class DeadlineExceeded(TesseraError):
    """The request's timeout expired while it waited; it was never computed."""


class Unauthenticated(TesseraError):
    """Credentials are missing or wrong."""


class PermissionDenied(TesseraError):
    """Credentials are valid but lack the scope the operation needs."""


class Unsupported(TesseraError):
    """The operation or configuration is not supported by Tessera (or disabled)."""


class ModelLoadError(TesseraError):
    """A model version could not be loaded; the message says why."""


class ExecutionFailed(TesseraError):
    """ONNX Runtime failed while running a batch."""


class Unavailable(TesseraError):
    """A shared service the operation needs (the fleet's Redis) cannot be reached; try again."""


# (gRPC status code name, HTTP status). Order matters only for readability;
# lookup walks the MRO so PayloadTooLarge finds its own row before InvalidInput's.
STATUS_TABLE: dict[type[TesseraError], tuple[str, HTTPStatus]] = {
    TesseraError: ("INTERNAL", HTTPStatus.INTERNAL_SERVER_ERROR),
    InvalidInput: ("INVALID_ARGUMENT", HTTPStatus.BAD_REQUEST),
    PayloadTooLarge: ("RESOURCE_EXHAUSTED", HTTPStatus.REQUEST_ENTITY_TOO_LARGE),
    ModelNotFound: ("NOT_FOUND", HTTPStatus.NOT_FOUND),
    ModelNotReady: ("UNAVAILABLE", HTTPStatus.SERVICE_UNAVAILABLE),
    Overloaded: ("RESOURCE_EXHAUSTED", HTTPStatus.TOO_MANY_REQUESTS),
    DeadlineExceeded: ("DEADLINE_EXCEEDED", HTTPStatus.GATEWAY_TIMEOUT),
    Unauthenticated: ("UNAUTHENTICATED", HTTPStatus.UNAUTHORIZED),
    PermissionDenied: ("PERMISSION_DENIED", HTTPStatus.FORBIDDEN),
    Unsupported: ("UNIMPLEMENTED", HTTPStatus.NOT_IMPLEMENTED),
    ModelLoadError: ("FAILED_PRECONDITION", HTTPStatus.BAD_REQUEST),
    ExecutionFailed: ("INTERNAL", HTTPStatus.INTERNAL_SERVER_ERROR),
    Unavailable: ("UNAVAILABLE", HTTPStatus.SERVICE_UNAVAILABLE),
}

_REASONS: dict[type[TesseraError], str] = {
    InvalidInput: "invalid_input",
    PayloadTooLarge: "payload_too_large",
    ModelNotFound: "model_not_found",
    ModelNotReady: "model_not_ready",
    Overloaded: "overloaded",
    DeadlineExceeded: "timeout",
    Unauthenticated: "unauthenticated",
    PermissionDenied: "permission_denied",
    Unsupported: "unsupported",
    ModelLoadError: "load_error",
    ExecutionFailed: "execution_failed",
    Unavailable: "unavailable",
}


def status_for(error: TesseraError) -> tuple[str, HTTPStatus]:
    """The (gRPC code name, HTTP status) for an error, by its most specific class."""
    for cls in type(error).__mro__:
        row = STATUS_TABLE.get(cls)
        if row is not None:
            return row
    return STATUS_TABLE[TesseraError]
