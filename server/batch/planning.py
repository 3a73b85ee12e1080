"""What both engines do before any compute: find the input files, map columns to the model's inputs,
check every file's schema against the mapping, and open the output's manifest."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..errors import InvalidInput
from ..spec import ModelSpec
from .columns import ColumnPlan, plan_columns
from .job import BatchJob
from .location import Location, resolve
from .source import ParquetSource

__all__ = ["JobPlan", "plan_job"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class JobPlan:
    source: ParquetSource
    output: Location
    columns: ColumnPlan
    spec: ModelSpec

    def identity(self, job: BatchJob) -> dict[str, object]:
        where = self.source.location.url if self.source.location.remote else self.source.location.path
        return job.identity(self.spec.version, where, self.columns.describe())


def plan_job(job: BatchJob, spec: ModelSpec) -> JobPlan:
    """Raises InvalidInput naming the column (and file) that cannot feed the model. Reads file footers."""
    source = ParquetSource(job.input, job.storage_options)
    first = source.fragments[0]
    columns = plan_columns(spec, first.schema, input_name=job.input_name, columns=job.columns, keep=job.keep)
    for fragment in source.fragments:
        columns.check_schema(fragment.schema, fragment.name)
    output = resolve(job.output, job.storage_options)
    if output.path.rstrip("/") == source.location.path.rstrip("/"):
        raise InvalidInput("--output must not be the input directory")
    for line in columns.describe():
        logger.info("%s", line)
    return JobPlan(source, output, columns, spec)
