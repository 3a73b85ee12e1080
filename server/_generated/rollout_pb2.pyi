from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RolloutSpec(_message.Message):
    __slots__ = ("candidate_version", "stable_version", "shadow", "canary", "analysis")
    class Shadow(_message.Message):
        __slots__ = ("percent", "duration_seconds", "min_requests")
        PERCENT_FIELD_NUMBER: _ClassVar[int]
        DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
        MIN_REQUESTS_FIELD_NUMBER: _ClassVar[int]
        percent: float
        duration_seconds: float
        min_requests: int
        def __init__(self, percent: _Optional[float] = ..., duration_seconds: _Optional[float] = ..., min_requests: _Optional[int] = ...) -> None: ...
    class Canary(_message.Message):
        __slots__ = ("steps", "step_seconds", "min_requests")
        STEPS_FIELD_NUMBER: _ClassVar[int]
        STEP_SECONDS_FIELD_NUMBER: _ClassVar[int]
        MIN_REQUESTS_FIELD_NUMBER: _ClassVar[int]
        steps: _containers.RepeatedScalarFieldContainer[float]
        step_seconds: float
        min_requests: int
        def __init__(self, steps: _Optional[_Iterable[float]] = ..., step_seconds: _Optional[float] = ..., min_requests: _Optional[int] = ...) -> None: ...
    class Analysis(_message.Message):
        __slots__ = ("max_error_rate_increase", "max_p99_ratio", "min_agreement", "max_abs_diff", "failure_limit")
        MAX_ERROR_RATE_INCREASE_FIELD_NUMBER: _ClassVar[int]
        MAX_P99_RATIO_FIELD_NUMBER: _ClassVar[int]
        MIN_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
        MAX_ABS_DIFF_FIELD_NUMBER: _ClassVar[int]
        FAILURE_LIMIT_FIELD_NUMBER: _ClassVar[int]
        max_error_rate_increase: float
        max_p99_ratio: float
        min_agreement: float
        max_abs_diff: float
        failure_limit: int
        def __init__(self, max_error_rate_increase: _Optional[float] = ..., max_p99_ratio: _Optional[float] = ..., min_agreement: _Optional[float] = ..., max_abs_diff: _Optional[float] = ..., failure_limit: _Optional[int] = ...) -> None: ...
    CANDIDATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    STABLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    CANARY_FIELD_NUMBER: _ClassVar[int]
    ANALYSIS_FIELD_NUMBER: _ClassVar[int]
    candidate_version: int
    stable_version: int
    shadow: RolloutSpec.Shadow
    canary: RolloutSpec.Canary
    analysis: RolloutSpec.Analysis
    def __init__(self, candidate_version: _Optional[int] = ..., stable_version: _Optional[int] = ..., shadow: _Optional[_Union[RolloutSpec.Shadow, _Mapping]] = ..., canary: _Optional[_Union[RolloutSpec.Canary, _Mapping]] = ..., analysis: _Optional[_Union[RolloutSpec.Analysis, _Mapping]] = ...) -> None: ...

class RolloutStatus(_message.Message):
    __slots__ = ("model", "stable_version", "candidate_version", "phase", "step", "weight", "failed_checks", "reason", "last_analysis_json", "spec")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STABLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    FAILED_CHECKS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    LAST_ANALYSIS_JSON_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    model: str
    stable_version: int
    candidate_version: int
    phase: str
    step: int
    weight: float
    failed_checks: int
    reason: str
    last_analysis_json: str
    spec: RolloutSpec
    def __init__(self, model: _Optional[str] = ..., stable_version: _Optional[int] = ..., candidate_version: _Optional[int] = ..., phase: _Optional[str] = ..., step: _Optional[int] = ..., weight: _Optional[float] = ..., failed_checks: _Optional[int] = ..., reason: _Optional[str] = ..., last_analysis_json: _Optional[str] = ..., spec: _Optional[_Union[RolloutSpec, _Mapping]] = ...) -> None: ...

class StartRolloutRequest(_message.Message):
    __slots__ = ("model", "spec")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    model: str
    spec: RolloutSpec
    def __init__(self, model: _Optional[str] = ..., spec: _Optional[_Union[RolloutSpec, _Mapping]] = ...) -> None: ...

class RolloutRequest(_message.Message):
    __slots__ = ("model", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    reason: str
    def __init__(self, model: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...
