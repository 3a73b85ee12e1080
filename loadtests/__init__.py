"""Load generator and capacity planner for Open Inference Protocol servers (`python -m loadtests`).

Open and closed loops over gRPC or HTTP from several processes, HDR histograms merged exactly,
SLO sweeps and replica plans; see loadtests/README.md.
"""

from __future__ import annotations

from .plan import CapacityPlan, plan_capacity
from .results import StepResult
from .runner import run_step
from .spec import LoadSpec, Target
from .sweep import Slo, SweepResult, run_sweep

__all__ = [
    "CapacityPlan",
    "LoadSpec",
    "Slo",
    "StepResult",
    "SweepResult",
    "Target",
    "plan_capacity",
    "run_step",
    "run_sweep",
]
