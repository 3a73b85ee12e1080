"""`tessera batch --engine ray`: the same job as a Ray Data pipeline, for tables that outgrow one machine.

read_parquet (include_paths) -> map_batches on a pool of actors that each load the model once (the same
repository and executor code as the local engine) -> OrderedParquetSink. With Ray's `preserve_order`,
each file's blocks keep their order from read to write, and write tasks are numbered in that order; the
sink writes each task's rows of each input file, in order, to `part-<input file index>-<task>-<run
id>.parquet`. Reading the output in name order therefore gives the rows of the input files in name
order: the local engine's output files concatenated in input order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import posixpath
import time
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import ExecutionFailed, InvalidInput, TesseraError
from .columns import REJECT_REASON, ColumnPlan
from .job import BatchJob, BatchResult
from .location import Location, resolve
from .model import ModelRef, ScoringModel, load_spec
from .output import RAY_PART_PREFIX, RAY_PATH_COLUMN, REJECTS_DIR, FileWriter
from .planning import JobPlan, plan_job

__all__ = ["RAY_MARKER", "ScoringActor", "TesseraErrorCarrier", "error_from_ray", "run_ray"]

logger = logging.getLogger(__name__)

RAY_MARKER = "_tessera_ray.json"


class ScoringActor:
    """A pool actor: loads the model once, then scores one Arrow table per call. The table carries the
    `path` of each row's input file, and so does what it returns (the sink writes each file's rows apart)."""

    def __init__(self, ref: ModelRef, plan: ColumnPlan, on_error: str, output: str,
                 storage_options: dict[str, Any]) -> None:
        self._model = ScoringModel.load(ref)
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._model.warm_up())
        self._plan = dataclasses.replace(plan, keep=(*plan.keep, RAY_PATH_COLUMN))
        self._on_error = on_error
        self._output = output
        self._storage_options = storage_options

    def __call__(self, table: pa.Table) -> pa.Table:
        batches = table.combine_chunks().to_batches()
        batch = batches[0] if batches else pa.RecordBatch.from_pylist([], schema=table.schema)
        prepared = self._plan.prepare(batch, None)
        if prepared.rejects is not None:
            if self._on_error == "fail":
                reason = prepared.rejects.column(REJECT_REASON)[0].as_py()
                where = prepared.rejects.column(RAY_PATH_COLUMN)[0].as_py()
                raise TesseraErrorCarrier(f"{where}: {reason} (--on-error skip sets such rows aside)")
            self._write_rejects(prepared.rejects.drop_columns([RAY_PATH_COLUMN]))
        outputs = self._model.score_sync(prepared.feeds, self._loop) if prepared.rows else None
        schema = self._plan.output_schema(batch.schema)
        if outputs is None:
            return schema.empty_table()
        return pa.Table.from_batches([self._plan.to_arrow(prepared.keep, outputs)], schema=schema)

    def close(self) -> None:
        """Free the sessions and the loop (Ray ends actor processes without calling this)."""
        self._model.close()
        self._loop.close()

    def _write_rejects(self, rejects: pa.RecordBatch) -> None:
        location = resolve(self._output, self._storage_options)
        writer = FileWriter(location, f"{REJECTS_DIR}/ray-{uuid.uuid4().hex}.parquet", rejects.schema)
        writer.write(rejects)
        writer.commit()


class TesseraErrorCarrier(Exception):
    """Bad data found in an actor; Ray wraps it, and the driver turns it back into InvalidInput."""


def _prepare_output(output: Location, identity: dict[str, Any]) -> None:
    """An empty output, or the output of an earlier Ray run of this job (cleared: Ray runs start over)."""
    fs = output.filesystem
    files = output.files_below(output.path)
    marker = output.join(RAY_MARKER)
    if files:
        try:
            with fs.open_input_stream(marker) as stream:
                found = json.loads(stream.read())
        except FileNotFoundError:
            raise SystemExit(f"tessera batch: output {output.url} is not empty; give an empty or new "
                             "directory") from None
        if found != identity:
            raise SystemExit(f"tessera batch: output {output.url} holds another job's results; use a new "
                             "--output, or delete it")
        for path in files:
            if path != marker:
                fs.delete_file(path)
    fs.create_dir(output.path, recursive=True)
    with fs.open_output_stream(marker) as stream:
        stream.write(json.dumps(identity).encode())


def error_from_ray(exc: Exception) -> TesseraError:
    """Ray wraps an actor's exception in its own; find ours in the text it carries."""
    text = str(exc)
    marker = f"{TesseraErrorCarrier.__name__}: "
    if marker in text:
        return InvalidInput(text[text.rindex(marker) + len(marker):].strip().splitlines()[0])
    last = text.strip().splitlines()[-1] if text.strip() else repr(exc)
    return ExecutionFailed(f"Ray job failed: {last}")


def _count(output: Location, result: BatchResult) -> None:
    inputs = set()
    for path in output.files_below(output.path):
        name = posixpath.basename(path)
        if path.startswith(output.join(REJECTS_DIR) + "/") and name.startswith("ray-"):
            table = pq.read_table(path, columns=[REJECT_REASON], filesystem=output.filesystem)
            result.rejected += table.num_rows
            result.reasons.update(table.column(REJECT_REASON).to_pylist())
        elif name.startswith(RAY_PART_PREFIX) and posixpath.dirname(path) == output.path.rstrip("/"):
            result.scored += pq.ParquetFile(output.filesystem.open_input_file(path)).metadata.num_rows
            inputs.add(name.split("-")[1])  # part-<input file index>-...
    result.files_done = len(inputs)
    result.rows = result.scored + result.rejected


def run_ray(job: BatchJob) -> BatchResult:
    """Run the job on `job.ray_address` (or a local cluster started here). Raises TesseraError subclasses
    and SystemExit (Ray not installed, unusable output)."""
    try:
        import ray
        import ray.data
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise SystemExit("tessera batch --engine ray needs Ray Data: pip install 'tessera[ray]'") from exc
    spec, store = load_spec(job.model)
    store.close()
    plan = plan_job(job, spec)
    if RAY_PATH_COLUMN in plan.columns.read_columns:
        raise InvalidInput(f"--engine ray: the input has a column '{RAY_PATH_COLUMN}', the name Ray Data gives each "
                           "row's file (read_parquet include_paths); rename it, or use --engine local")
    _prepare_output(plan.output, plan.identity(job))
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=job.ray_address, include_dashboard=False, log_to_driver=False)
    started = time.monotonic()
    try:
        _execute(ray, job, plan)
    except Exception as exc:
        if isinstance(exc, TesseraError | SystemExit):
            raise
        raise error_from_ray(exc) from exc
    finally:
        if started_here:
            ray.shutdown()
    result = BatchResult(seconds=time.monotonic() - started)
    _count(plan.output, result)
    return result


def _execute(ray: Any, job: BatchJob, plan: JobPlan) -> None:
    from .ray_sink import OrderedParquetSink

    # Set before any dataset exists: each dataset takes a copy of the current context when it is built.
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = job.progress is not False
    actors = job.ray_actors or max(1, int(ray.cluster_resources().get("CPU", 2)) - 1)
    dataset = ray.data.read_parquet([f.path for f in plan.source.fragments], filesystem=plan.source.filesystem,
                                    include_paths=True)
    dataset = dataset.select_columns([*plan.columns.read_columns, RAY_PATH_COLUMN])
    scored = dataset.map_batches(
        ScoringActor, fn_constructor_kwargs={"ref": job.model, "plan": plan.columns, "on_error": job.on_error,
                                        "output": job.output, "storage_options": job.storage_options},
        batch_size=job.batch_rows, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=1)
    sink = OrderedParquetSink(job.output, job.storage_options, uuid.uuid4().hex,
                              files=[f.path for f in plan.source.fragments], dictionary_columns=plan.columns.keep,
                              statistics_columns=plan.columns.scalar_columns)
    scored.write_datasink(sink)
