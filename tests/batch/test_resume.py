"""A `tessera batch` process killed with SIGKILL half-way, then run again: the output equals an
uninterrupted run's, file for file and byte for byte (no row lost, none twice)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from server.batch.manifest import MANIFEST_NAME

ROOT = Path(__file__).resolve().parents[2]
FILES = 8


def _command(repository: Path, data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "server", "batch", "--model-repository", str(repository), "--model", "wide",
            "--input", str(data), "--output", str(out), "--keep", "id", "--batch-rows", "1024", "--progress", "off"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _done(out: Path) -> int:
    try:
        return len(json.loads((out / MANIFEST_NAME).read_text())["fragments"])
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def _files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_sigkill_half_way_then_rerun_gives_the_uninterrupted_output(wide_model: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    data = tmp_path / "in"
    data.mkdir()
    for f in range(FILES):
        x = rng.standard_normal((10_000, 128)).astype(np.float32)
        pq.write_table(pa.table({"id": np.arange(10_000) + f * 10_000,
                                 "input": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 128)}),
                       data / f"p{f}.parquet", row_group_size=3_000)
    whole = tmp_path / "whole"
    subprocess.run(_command(wide_model, data, whole), env=_env(), check=True, timeout=120, capture_output=True)

    out = tmp_path / "out"
    process = subprocess.Popen(_command(wide_model, data, out), env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while _done(out) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)
    killed_at = _done(out)
    assert 2 <= killed_at < FILES, f"the run was not caught half-way ({killed_at} of {FILES} files done)"
    assert any(name.startswith("p") for name in _files(out)) and len(_files(out)) < len(_files(whole))

    rerun = subprocess.run(_command(wide_model, data, out), env=_env(), check=True, timeout=120,
                           capture_output=True, text=True)
    assert f"{FILES - killed_at} files written ({killed_at} already done)" in rerun.stdout
    assert _files(out) == _files(whole)  # the manifest too: same files, same counts
    ids = np.concatenate([pq.read_table(out / f"p{f}.parquet").column("id").to_numpy() for f in range(FILES)])
    assert np.array_equal(ids, np.arange(FILES * 10_000))
