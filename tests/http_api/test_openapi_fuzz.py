"""A bounded schemathesis run against the real server's /v2/openapi.json, admin routes included.

The server runs over a throwaway repository in explicit model-control mode, so load, unload and
rollout requests act on copies. Every answer must be a non-5xx that conforms to the document
(status code, content type, body schema). Generation is derandomized so CI runs the same requests.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import IDENTITY_TYPES, SAMPLE_MODELS, RunningServer, build_repository

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = 15  # per operation and generation mode: about 30 requests an operation, under a minute in all
IDENTITY_DATATYPES = [datatype for datatype, _ in IDENTITY_TYPES]
# Real names for {name} half the time (else schemathesis's strings), so requests reach actual models.
MODEL_NAMES = [*SAMPLE_MODELS, "mlp", *(f"identity_{datatype.lower()}" for datatype in IDENTITY_DATATYPES)]
Case = schemathesis.Case[Any]
Operation = schemathesis.APIOperation[Any, Any, Any, Any]
_JSON_VALUE = {"BOOL": True, "BYTES": "a", "FP16": 0.5, "FP32": 0.5, "FP64": 0.5}


@pytest.fixture
def fuzz_server(tmp_path: Path, server_factory: Callable[..., RunningServer]) -> RunningServer:
    root = tmp_path / "srv"  # everything the server may write (overrides, rollouts, audit) stays here
    repository = build_repository(root / "repository")
    return server_factory(repository, model_control_mode="explicit", load_models=("*",),
                          allow_repository_admin=True, repository_cache_dir=root / "cache",
                          state_dir=root / "state")


@st.composite
def _identity_infer(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A valid JSON infer request for one of the identity models, so 200 answers get checked too."""
    datatype = draw(st.sampled_from(IDENTITY_DATATYPES))
    rows = draw(st.integers(1, 3))
    tensor = {"name": "INPUT0", "datatype": datatype, "shape": [rows, 4],
              "data": [_JSON_VALUE.get(datatype, 1)] * (rows * 4)}
    return f"identity_{datatype.lower()}", {"inputs": [tensor]}


def _cases(operation: Operation, mode: GenerationMode) -> st.SearchStrategy[Case]:
    """Schemathesis's cases for the operation, with real model names, versions and infer bodies mixed in."""
    parameters = {p.name for p in operation.path_parameters}
    infer = operation.path.endswith("/infer") and mode is GenerationMode.POSITIVE

    def adjust(case: Case, name: str | None, version: str | None,
               valid: tuple[str, dict[str, Any]] | None) -> Case:
        path = dict(case.path_parameters or {})
        if "name" in parameters and name is not None:
            path["name"] = name
        if "version" in parameters and version is not None:
            path["version"] = version
        if valid is not None:
            path["name"], case.body = valid
            case.media_type = "application/json"
        case.path_parameters = path
        return case

    return st.builds(adjust, operation.as_strategy(generation_mode=mode), st.sampled_from(MODEL_NAMES) | st.none(),
                     st.sampled_from(["1", "2"]) | st.none(), (_identity_infer() | st.none()) if infer else st.none())


def test_no_operation_answers_5xx_or_off_schema(fuzz_server: RunningServer) -> None:
    base_url = f"http://{fuzz_server.http_url}"
    session = requests.Session()
    document = session.get(f"{base_url}/v2/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(document)
    failures: list[str] = []
    labels: list[str] = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # the document itself is valid
        operation = result.ok()
        labels.append(operation.label)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=_cases(operation, mode))
            def run(case: Case) -> None:
                case.call_and_validate(base_url=base_url, session=session, checks=CHECKS, timeout=30)

            try:
                run()
            except Unsatisfiable:  # nothing to negate: no body or query, and any string is a valid name
                assert mode is GenerationMode.NEGATIVE
            except Exception as exc:  # collect every operation's failure, then fail once naming them all
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    documented = [f"{method.upper()} {path}" for path, item in document["paths"].items() for method in item
                  if method in ("get", "post")]
    assert sorted(labels) == sorted(documented)
    assert not failures, "\n\n".join(failures)
