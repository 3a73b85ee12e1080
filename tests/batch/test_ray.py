"""The Ray engine on a real local Ray cluster (started here, on loopback): the same output as the local
engine, read in file-name order."""

from __future__ import annotations

import dataclasses
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs  # type: ignore[import-untyped]

from server.batch import BatchJob, ModelRef, run_job
from server.batch.model import load_spec
from server.batch.planning import plan_job
from server.batch.ray_engine import RAY_MARKER, ScoringActor, TesseraErrorCarrier, error_from_ray
from server.errors import InvalidInput

from ..s3_server import CREDENTIALS
from .data import read_dir, write_tabular

ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    pythonpath = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    ray.init(address="local", include_dashboard=False, num_cpus=2, object_store_memory=200 << 20,
             _temp_dir=temp, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
             _node_ip_address="127.0.0.1")
    yield
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


def _job(repository: Path, data: Path, out: Path, engine: str, **options: object) -> BatchJob:
    return BatchJob(model=ModelRef(repository=str(repository), name="tabular"), input=str(data), output=str(out),
                    keep=("id", "ts"), engine=engine, progress=False, ray_actors=1, **options)  # type: ignore[arg-type]


def _concatenated(root: Path) -> pa.Table:
    return pa.concat_tables(table for _, table in sorted(read_dir(root).items()))


def test_the_ray_engine_writes_what_the_local_engine_writes(
        ray_cluster: None, batch_repository: Path, tmp_path: Path) -> None:
    write_tabular(tmp_path / "in", files=3, rows=30_000, row_group_rows=7_000)
    local = run_job(_job(batch_repository, tmp_path / "in", tmp_path / "local", "local"))
    result = run_job(_job(batch_repository, tmp_path / "in", tmp_path / "ray", "ray"))
    assert result.scored == local.scored == 90_000
    assert (tmp_path / "ray" / RAY_MARKER).is_file()
    ray_table, local_table = _concatenated(tmp_path / "ray"), _concatenated(tmp_path / "local")
    assert ray_table.schema.equals(local_table.schema)
    assert ray_table.equals(local_table)  # same rows, same values, same order


def test_the_ray_engine_keeps_each_input_files_row_order(
        ray_cluster: None, batch_repository: Path, tmp_path: Path) -> None:
    """Enough files and row groups for Ray to pack files into read tasks out of their order, and for a
    write task to get several blocks (which Ray's own write_parquet may write in any order)."""
    write_tabular(tmp_path / "in", files=12, rows=40_000, row_group_rows=7_000)
    run_job(_job(batch_repository, tmp_path / "in", tmp_path / "ray", "ray"))
    ids = _concatenated(tmp_path / "ray").column("id").to_numpy()
    assert len(ids) == 480_000
    for file in range(12):  # ids rise within an input file: 40,000 per file
        mine = ids[ids // 40_000 == file]
        assert (mine[1:] > mine[:-1]).all(), f"rows of input file {file} out of order"
    expected = _concatenated(tmp_path / "in").column("id").to_numpy()  # file name order: part-0, part-1, part-10
    assert (ids == expected).all(), "input files out of name order"


def test_the_ray_engine_reads_and_writes_s3_in_order(
        ray_cluster: None, batch_repository: Path, bucket: Any, s3_endpoint: str, tmp_path: Path) -> None:
    """Ray names each row's file by the path its filesystem lists; the sink must find it among the planned
    files on an object store too."""
    s3, name = bucket
    write_tabular(tmp_path / "in", files=3, rows=20_000, row_group_rows=5_000)
    for path in sorted((tmp_path / "in").glob("*.parquet")):
        s3.upload_file(str(path), name, f"data/{path.name}")
    options = {"endpoint_url": s3_endpoint, **CREDENTIALS}
    job = _job(batch_repository, tmp_path / "in", tmp_path / "unused", "ray")
    result = run_job(dataclasses.replace(job, input=f"s3://{name}/data", output=f"s3://{name}/scored",
                                         storage_options=options))
    assert (result.scored, result.files_done) == (60_000, 3)
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint, **CREDENTIALS)
    parts = sorted(p for p in fs.find(f"{name}/scored") if posixpath.basename(p).startswith("part-"))
    tables = []
    for part in parts:
        with fs.open(part, "rb") as handle:
            tables.append(pq.read_table(handle))
    assert pa.concat_tables(tables).column("id").equals(_concatenated(tmp_path / "in").column("id"))


def test_the_ray_engine_sets_bad_rows_aside(ray_cluster: None, batch_repository: Path, tmp_path: Path) -> None:
    write_tabular(tmp_path / "in", files=1, rows=1_000, row_group_rows=1_000)
    _null_age_at(tmp_path / "in" / "part-0.parquet", 10)
    result = run_job(_job(batch_repository, tmp_path / "in", tmp_path / "skip", "ray", on_error="skip"))
    assert (result.scored, result.rejected) == (999, 1)
    assert result.reasons == {"null in column 'age'": 1}
    rejects = pq.read_table(next((tmp_path / "skip" / "_rejects").glob("ray-*.parquet")))
    assert rejects.column("id").to_pylist() == [10]
    assert 10 not in pq.read_table(next((tmp_path / "skip").glob("part-*.parquet"))).column("id").to_pylist()


def test_a_column_named_path_is_refused_before_ray_starts(batch_repository: Path, tmp_path: Path) -> None:
    write_tabular(tmp_path / "in", files=1, rows=10, row_group_rows=10)
    table = pq.read_table(tmp_path / "in" / "part-0.parquet")
    pq.write_table(table.append_column("path", pa.array(["x"] * 10)), tmp_path / "in" / "part-0.parquet")
    job = dataclasses.replace(_job(batch_repository, tmp_path / "in", tmp_path / "out", "ray"), keep=("id", "path"))
    with pytest.raises(InvalidInput, match="column 'path'"):
        run_job(job)
    assert not (tmp_path / "out").exists()


def test_bad_data_in_an_actor_stops_the_job_naming_the_column(batch_repository: Path, tmp_path: Path) -> None:
    """The actor's side, called in-process (no cluster needed): Ray carries the error's text to the driver."""
    write_tabular(tmp_path / "in", files=1, rows=100, row_group_rows=100)
    _null_age_at(tmp_path / "in" / "part-0.parquet", 3)
    job = _job(batch_repository, tmp_path / "in", tmp_path / "out", "ray")
    spec, store = load_spec(job.model)
    store.close()
    plan = plan_job(job, spec)
    scorer = ScoringActor(job.model, plan.columns, "fail", str(tmp_path / "out"), {})
    table = pq.read_table(tmp_path / "in" / "part-0.parquet", columns=plan.columns.read_columns)
    table = table.append_column("path", pa.array(["in/part-0.parquet"] * table.num_rows))  # as Ray adds it
    try:
        with pytest.raises(TesseraErrorCarrier) as caught:
            scorer(table)
    finally:
        scorer.close()
    wrapped = RuntimeError(f"ray::MapBatches(ScoringActor)() ...\n{type(caught.value).__name__}: {caught.value}\n")
    error = error_from_ray(wrapped)
    assert isinstance(error, InvalidInput) and error.message.startswith("in/part-0.parquet: null in column 'age'")


def _null_age_at(path: Path, row: int) -> None:
    table = pq.read_table(path)
    age = table.column("age").to_pylist()
    age[row] = None
    pq.write_table(table.set_column(table.schema.get_field_index("age"), "age", pa.array(age, pa.float32())), path)
