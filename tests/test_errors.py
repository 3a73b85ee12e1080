"""The error hierarchy is mapped once, completely, to gRPC and HTTP statuses."""

from __future__ import annotations

from http import HTTPStatus

import grpc
import pytest

import server.errors as errors
from server.errors import STATUS_TABLE, TesseraError, status_for


def _all_subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub} | _all_subclasses(sub)
    return found


def test_every_error_class_has_a_row_of_its_own():
    missing = [c.__name__ for c in _all_subclasses(TesseraError) if c not in STATUS_TABLE]
    assert missing == []


def test_every_row_names_a_real_grpc_code():
    for code_name, http in STATUS_TABLE.values():
        assert isinstance(grpc.StatusCode[code_name], grpc.StatusCode)
        assert isinstance(http, HTTPStatus)


@pytest.mark.parametrize(("error", "expected"), [
    pytest.param(errors.InvalidInput("x"), ("INVALID_ARGUMENT", 400), id="invalid-input"),
    pytest.param(errors.PayloadTooLarge("x"), ("RESOURCE_EXHAUSTED", 413), id="payload-too-large"),
    pytest.param(errors.ModelNotFound("x"), ("NOT_FOUND", 404), id="not-found"),
    pytest.param(errors.ModelNotReady("x"), ("UNAVAILABLE", 503), id="not-ready"),
    pytest.param(errors.Overloaded("x"), ("RESOURCE_EXHAUSTED", 429), id="overloaded"),
    pytest.param(errors.DeadlineExceeded("x"), ("DEADLINE_EXCEEDED", 504), id="deadline"),
])
def test_status_for_uses_the_most_specific_row(error, expected):
    code, http = status_for(error)
    assert (code, int(http)) == expected


def test_any_error_can_name_the_version_it_was_routed_to() -> None:
    from server.errors import note_route

    internal = RuntimeError("a batch failed outside the model run")
    note_route(internal, "2", "candidate")
    tessera = errors.Overloaded("queue is full")
    assert getattr(internal, "route", None) == ("2", "candidate") and tessera.route is None
