"""`tessera batch` flags through server.cli.main: the summary on success, exit 1 naming the cause."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from server.cli import main

from .data import write_tabular


def test_the_command_scores_and_prints_a_summary(batch_repository: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    write_tabular(tmp_path / "in", files=2, rows=1_000, row_group_rows=300)
    code = main(["batch", "--model-repository", str(batch_repository), "--model", "tabular", "--model-version", "1",
                 "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--keep", "id, ts",
                 "--batch-rows", "128", "--progress", "off"])
    assert code == 0
    assert "2,000 rows scored, 0 rejected, 2 files written (0 already done)" in capsys.readouterr().out
    assert pq.read_table(tmp_path / "out" / "part-1.parquet").column_names == ["id", "ts", "probabilities", "label"]


@pytest.mark.parametrize(("flags", "message"), [
    pytest.param(["--model", "tabular", "--model-version", "7"], "model 'tabular' has no version 7 (on disk: [1])",
                 id="no-such-version"),
    pytest.param(["--model", "nope"], "no model 'nope' in repository", id="no-such-model"),
    pytest.param(["--model", "tabular", "--columns", "age,income"],
                 "input 'features' (FP32[8]) takes 8 values per row but 2 columns map to it", id="too-few-columns"),
    pytest.param(["--model", "two_input", "--columns", "age"], "say which one --columns feeds with --input-name",
                 id="ambiguous-input"),
])
def test_a_bad_job_exits_1_naming_the_cause(batch_repository: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str], flags: list[str], message: str) -> None:
    write_tabular(tmp_path / "in", files=1, rows=10, row_group_rows=10)
    code = main(["batch", "--model-repository", str(batch_repository), "--input", str(tmp_path / "in"),
                 "--output", str(tmp_path / "out"), "--progress", "off", *flags])
    assert code == 1
    assert message in capsys.readouterr().err
