"""`tessera batch --engine local`: load the model, plan, skip what the manifest says is done, run the
pipeline."""

from __future__ import annotations

import asyncio
import logging

from .job import BatchJob, BatchResult
from .manifest import Manifest
from .model import ScoringModel, load_spec
from .output import remove_partials
from .pipeline import LocalPipeline
from .planning import JobPlan, plan_job
from .progress import Progress
from .source import Fragment

__all__ = ["run_local"]

logger = logging.getLogger(__name__)


def run_local(job: BatchJob) -> BatchResult:
    """Run the job on this machine. Raises TesseraError subclasses (bad data, load or run failures)
    and SystemExit for unusable locations."""
    spec, store = load_spec(job.model)
    try:
        plan = plan_job(job, spec)
        manifest = Manifest.open(plan.output, plan.identity(job))
        removed = remove_partials(plan.output)
        if removed:
            logger.info("removed %d partial files of an interrupted run", removed)
        todo = [f for f in plan.source.fragments if f.name not in manifest.done]
        model = ScoringModel.create(spec)
    finally:
        store.close()
    try:
        progress = None
        if job.progress is not False:
            progress = Progress(sum(f.rows for f in todo))
        result = asyncio.run(_run(job, model, plan, manifest, todo, progress))
        if progress is not None:
            progress.close()
    finally:
        model.close()
    result.files_skipped = len(plan.source.fragments) - len(todo)
    return result


async def _run(job: BatchJob, model: ScoringModel, plan: JobPlan, manifest: Manifest, todo: list[Fragment],
               progress: Progress | None) -> BatchResult:
    await model.warm_up()
    pipeline = LocalPipeline(job, model, plan.columns, plan.source, plan.output, manifest, progress)
    return await pipeline.run(todo)
