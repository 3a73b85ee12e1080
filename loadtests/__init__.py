"""Load generator and capacity planner for Open Inference Protocol servers (`python -m loadtests`).

Open and closed loops over gRPC or HTTP (TLS, tokens, any target) from several processes or Ray
actors, HDR histograms merged exactly; traffic mixes and replays; SLO sweeps and fleet plans; see
loadtests/README.md.
"""

from __future__ import annotations

from .plan import CapacityPlan, FleetOptions, plan_capacity
from .results import ModelResult, StepResult
from .runner import run_step
from .spec import LoadSpec, Target, TlsOptions, parse_url
from .sweep import Slo, SweepResult, run_sweep
from .traffic import Arrivals, Mix

__all__ = [
    "Arrivals",
    "CapacityPlan",
    "FleetOptions",
    "LoadSpec",
    "Mix",
    "ModelResult",
    "Slo",
    "StepResult",
    "SweepResult",
    "Target",
    "TlsOptions",
    "parse_url",
    "plan_capacity",
    "run_step",
    "run_sweep",
]
