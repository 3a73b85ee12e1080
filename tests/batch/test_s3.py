"""`tessera batch` with its input, output and model repository on a real S3 server (moto, loopback)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import s3fs  # type: ignore[import-untyped]

from server.batch import BatchJob, ModelRef, run_job

from ..s3_server import CREDENTIALS
from .data import write_tabular


def _upload(s3: Any, bucket: str, root: Path, prefix: str) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(root).as_posix()}")


def test_input_output_and_repository_on_s3_equal_the_local_run(
        batch_repository: Path, bucket: Any, s3_endpoint: str, tmp_path: Path) -> None:
    s3, name = bucket
    write_tabular(tmp_path / "in", files=3, rows=20_000, row_group_rows=5_000)
    _upload(s3, name, tmp_path / "in", "data")
    _upload(s3, name, batch_repository / "tabular", "models/tabular")
    options = {"endpoint_url": s3_endpoint, **CREDENTIALS}
    remote = BatchJob(model=ModelRef(repository=f"s3://{name}/models", name="tabular", storage_options=options),
                      input=f"s3://{name}/data", output=f"s3://{name}/scored", keep=("id",), progress=False,
                      storage_options=options)
    result = run_job(remote)
    assert (result.scored, result.files_done) == (60_000, 3)
    local = BatchJob(model=ModelRef(repository=str(batch_repository), name="tabular"), input=str(tmp_path / "in"),
                     output=str(tmp_path / "out"), keep=("id",), progress=False)
    run_job(local)
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint, **CREDENTIALS)
    listed = sorted(p.removeprefix(f"{name}/scored/") for p in fs.find(f"{name}/scored"))
    assert listed == ["_tessera_manifest.json", "part-0.parquet", "part-1.parquet", "part-2.parquet"]
    for f in range(3):
        with fs.open(f"{name}/scored/part-{f}.parquet", "rb") as handle:
            assert pq.read_table(handle).equals(pq.read_table(tmp_path / "out" / f"part-{f}.parquet"))
    assert run_job(remote).files_skipped == 3  # the manifest on S3 is read back on a rerun
