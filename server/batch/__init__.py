"""`tessera batch`: Parquet in, Parquet out, through repository/ + executor/; local or Ray Data engine."""

from .cli import add_subcommands, run, run_job
from .job import BatchJob, BatchResult
from .model import ModelRef, ScoringModel

__all__ = ["BatchJob", "BatchResult", "ModelRef", "ScoringModel", "add_subcommands", "run", "run_job"]
