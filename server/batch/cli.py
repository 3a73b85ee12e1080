"""`tessera batch`: flags -> BatchJob -> the local or the Ray engine.

server/cli.py adds it with `add_subcommands(sub)` and dispatches with `run(args)` when
`args.command in COMMANDS`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from ..cli_help import HelpFormatter
from ..errors import TesseraError
from .job import BatchJob, BatchResult
from .model import ModelRef

__all__ = ["COMMANDS", "add_subcommands", "job_from_args", "run"]

COMMANDS = ("batch",)


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"TESSERA_{name.upper().replace('-', '_')}", default)


def _csv(text: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in text.split(",") if c.strip())


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def add_subcommands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `batch` to tessera's subcommands."""
    p = sub.add_parser("batch", help="score Parquet files with a model of the repository (Parquet out)",
                       formatter_class=HelpFormatter)
    p.add_argument("--model-repository", default=_env("model-repository"),
                   help="path or fsspec URL of the model repository (TESSERA_MODEL_REPOSITORY)")
    p.add_argument("--model", required=True, help="model name")
    p.add_argument("--model-version", type=int, default=None,
                   help="version to run (default: the newest its version policy serves)")
    p.add_argument("--input", required=True, help="Parquet file, directory, glob or fsspec URL (s3://...)")
    p.add_argument("--output", required=True,
                   help="output directory or fsspec URL: one Parquet file per input file, and a manifest")
    p.add_argument("--input-name", help="input that --columns (or the unnamed numeric columns) feed")
    p.add_argument("--columns", type=_csv, help="comma-separated columns feeding that input, in its order")
    p.add_argument("--keep", type=_csv, default=(), help="comma-separated columns copied to the output")
    p.add_argument("--batch-rows", type=_positive, default=4096, help="rows per model run")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: a read/run/write pipeline in this process; ray: a Ray Data job (tessera[ray])")
    p.add_argument("--ray-address", default=_env("ray-address"),
                   help="Ray cluster to join ('auto', ray://host:10001); default: start a local one")
    p.add_argument("--ray-actors", type=_positive, default=None,
                   help="model actors in the Ray pool (default: the cluster's CPUs less one)")
    p.add_argument("--on-error", choices=("fail", "skip"), default="fail",
                   help="a row that cannot be scored (nulls, wrong lengths): stop, or set it aside in "
                        "<output>/_rejects/")
    p.add_argument("--storage-options", type=_json_object,
                   default=_json_object(_env("storage-options", "{}") or "{}"),
                   help='fsspec options for remote input, output and repository, as JSON')
    p.add_argument("--intra-op-threads", type=int, default=int(_env("intra-op-threads", "1") or 1),
                   help="ONNX Runtime intra-op threads per instance (models may override)")
    p.add_argument("--queue-batches", type=_positive, default=4,
                   help="batches in flight between reading and writing, beyond one per instance")
    p.add_argument("--progress", choices=("auto", "off"), default="auto",
                   help="a bar on a terminal, plain lines otherwise; off: only the summary")
    p.add_argument("--log-level", default=_env("log-level", "WARNING"), help="Python logging level")


def job_from_args(args: argparse.Namespace) -> BatchJob:
    if not args.model_repository:
        raise SystemExit("tessera batch: --model-repository (or TESSERA_MODEL_REPOSITORY) is required")
    model = ModelRef(repository=args.model_repository, name=args.model, version=args.model_version,
                     storage_options=args.storage_options, intra_op_threads=args.intra_op_threads)
    return BatchJob(model=model, input=args.input, output=args.output, input_name=args.input_name,
                    columns=args.columns, keep=args.keep, batch_rows=args.batch_rows, engine=args.engine,
                    ray_address=args.ray_address, ray_actors=args.ray_actors, on_error=args.on_error,
                    storage_options=args.storage_options, queue_batches=args.queue_batches,
                    progress=None if args.progress == "auto" else False)


def run_job(job: BatchJob) -> BatchResult:
    """Run `job` on its engine. Raises TesseraError subclasses and SystemExit."""
    if job.engine == "ray":
        from .ray_engine import run_ray

        return run_ray(job)
    from .local import run_local

    return run_local(job)


def run(args: argparse.Namespace) -> int:
    """Run the `batch` subcommand; 0 when every file is written, 1 on bad data or a failed run."""
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    job = job_from_args(args)
    try:
        result = run_job(job)
    except TesseraError as exc:
        print(f"tessera batch: {exc.message}", file=sys.stderr)
        return 1
    print(result.summary(job.output))
    return 0
