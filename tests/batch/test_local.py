"""`tessera batch` with the local engine on real files: outputs equal the model run in-process with ONNX
Runtime, row order and kept columns preserved, multi-input and max_batch_size 0 models, bad data."""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from server.batch import BatchJob, ModelRef, run_job
from server.batch.progress import Progress
from server.errors import InvalidInput

from .data import TABULAR_FEATURES, features, list_matrix, read_dir, session, write_tabular


def _job(repository: Path, model: str, data: Path | str, out: Path | str, **options: Any) -> BatchJob:
    ref = ModelRef(repository=str(repository), name=model, storage_options=options.pop("storage_options", {}))
    return BatchJob(model=ref, input=str(data), output=str(out), progress=False, **options)


def test_outputs_equal_in_process_ort_row_by_row_with_keep_and_order(
        batch_repository: Path, tabular_input: Path, tmp_path: Path) -> None:
    result = run_job(_job(batch_repository, "tabular", tabular_input, tmp_path / "out", keep=("id", "ts")))
    assert (result.scored, result.rejected, result.files_done) == (250_000, 0, 4)
    outputs = read_dir(tmp_path / "out")
    assert sorted(outputs) == [f"part-{f}.parquet" for f in range(4)]
    ort_session = session(batch_repository / "tabular" / "1" / "model.onnx")
    for name, out in outputs.items():
        source = pq.read_table(tabular_input / name)
        assert out.column_names == ["id", "ts", "probabilities", "label"]
        assert out.schema.field("ts").type == pa.timestamp("us")
        assert out.column("id").equals(source.column("id")) and out.column("ts").equals(source.column("ts"))
        x = features(source)
        probabilities, label = ort_session.run(None, {"features": x})
        got = list_matrix(out.column("probabilities"))
        assert got.dtype == np.float32 and got.shape == (len(x), 3)
        assert np.max(np.abs(got - probabilities)) <= 1e-6
        assert np.array_equal(out.column("label").to_numpy(), label.reshape(-1))
        for row in range(0, len(x), 997):  # and one row at a time, as a single-row request would run
            alone = ort_session.run(None, {"features": x[row:row + 1]})[0]
            assert np.max(np.abs(got[row] - alone[0])) <= 1e-6


def test_columns_flag_maps_differently_named_columns_in_its_order(batch_repository: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1000, 8)).astype(np.float32)
    names = [f"f{j}" for j in range(8)]
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({**{n: x[:, j] for j, n in enumerate(reversed(names))}, "label_true": np.zeros(1000)}),
                   tmp_path / "in" / "data.parquet")
    run_job(_job(batch_repository, "tabular", tmp_path / "in" / "data.parquet", tmp_path / "out",
                 columns=tuple(reversed(names))))
    out = pq.read_table(tmp_path / "out" / "data.parquet")
    want = session(batch_repository / "tabular" / "1" / "model.onnx").run(None, {"features": x})[0]  # f7 holds x[:, 0]
    assert np.max(np.abs(list_matrix(out.column("probabilities")) - want)) <= 1e-6


def test_two_input_model_takes_list_columns_named_after_its_inputs(batch_repository: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(-50, 50, (30_000, 4)).astype(np.int64)  # int64 in the file, INT32 in the model
    b = rng.standard_normal((30_000, 4)).astype(np.float32)
    (tmp_path / "in").mkdir()
    table = pa.table({"key": np.arange(30_000), "a": pa.array(list(a), pa.list_(pa.int64())),
                      "b": pa.FixedSizeListArray.from_arrays(pa.array(b.reshape(-1)), 4)})
    pq.write_table(table, tmp_path / "in" / "x.parquet", row_group_size=7_000)
    run_job(_job(batch_repository, "two_input", tmp_path / "in", tmp_path / "out", keep=("key",), batch_rows=1000))
    out = pq.read_table(tmp_path / "out" / "x.parquet")
    want_sum, want_product = session(batch_repository / "two_input" / "1" / "model.onnx").run(
        None, {"a": a.astype(np.int32), "b": b})
    assert out.column_names == ["key", "sum", "product"]
    assert out.schema.field("sum").type == pa.list_(pa.float32(), 4)
    assert np.max(np.abs(list_matrix(out.column("sum")) - want_sum)) <= 1e-6
    assert np.max(np.abs(list_matrix(out.column("product")) - want_product)) <= 1e-6
    assert out.column("key").to_numpy().tolist() == list(range(30_000))


def test_several_instances_when_the_config_asks(batch_repository: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((20_000, 16)).astype(np.float32)
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"input": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 16)}),
                   tmp_path / "in" / "x.parquet", row_group_size=1000)
    run_job(_job(batch_repository, "mlp2", tmp_path / "in", tmp_path / "out", batch_rows=500))
    out = pq.read_table(tmp_path / "out" / "x.parquet")
    want = session(batch_repository / "mlp2" / "1" / "model.onnx").run(None, {"input": x})[0]
    assert np.max(np.abs(list_matrix(out.column("output")) - want)) <= 1e-6  # in order across 2 sessions


def test_max_batch_size_0_runs_each_row_as_the_fixed_shape(batch_repository: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2_000, 2, 3)).astype(np.float32)
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"n": np.arange(2_000), "x": pa.array(list(x.reshape(2_000, 6)))}),
                   tmp_path / "in" / "x.parquet")
    run_job(_job(batch_repository, "fixed", tmp_path / "in", tmp_path / "out", keep=("n",)))
    out = pq.read_table(tmp_path / "out" / "x.parquet")
    field = out.schema.field("y")
    assert field.type == pa.list_(pa.float32(), 4) and field.metadata == {b"tessera.shape": b"2,2"}
    ort_session = session(batch_repository / "fixed" / "1" / "model.onnx")
    want = np.stack([ort_session.run(None, {"x": row})[0] for row in x])
    assert np.max(np.abs(list_matrix(out.column("y")).reshape(-1, 2, 2) - want)) <= 1e-6


@pytest.mark.parametrize(("change", "message"), [
    pytest.param(lambda t: t.drop_columns(["tenure"]), "column 'tenure' (for input 'features') is missing",
                 id="missing"),
    pytest.param(lambda t: t.set_column(t.schema.get_field_index("age"), "age",
                                        pa.array([str(v) for v in range(t.num_rows)])),
                 "column 'age' has type string, which cannot feed input 'features'", id="string"),
    pytest.param(lambda t: t.set_column(t.schema.get_field_index("products"), "products",
                                        pa.array([None] * t.num_rows, pa.null())),
                 "column 'products' has type null", id="null-type"),
])
def test_a_bad_column_stops_the_run_before_any_compute_naming_it(
        batch_repository: Path, tmp_path: Path, change: Any, message: str) -> None:
    write_tabular(tmp_path / "in", files=3, rows=100, row_group_rows=100)
    table = pq.read_table(tmp_path / "in" / "part-2.parquet")
    pq.write_table(change(table), tmp_path / "in" / "part-2.parquet")
    with pytest.raises(InvalidInput, match=f"part-2.parquet: {message}".replace("(", r"\(").replace(")", r"\)")):
        run_job(_job(batch_repository, "tabular", tmp_path / "in", tmp_path / "out"))
    assert not (tmp_path / "out").exists()  # nothing computed, nothing written: not even part-0


def _bad_rows_input(root: Path) -> pa.Table:
    root.mkdir()
    x = np.arange(40, dtype=np.float32).reshape(5, 8)
    rows: list[Any] = [list(r) for r in x]
    rows[1] = None  # a null row
    rows[2] = rows[2][:7]  # a short row
    rows[3] = [*rows[3][:7], None]  # a null value
    table = pa.table({"id": np.arange(5), "features": pa.array(rows, pa.list_(pa.float32()))})
    pq.write_table(table, root / "bad.parquet")
    return table


def test_on_error_fail_names_the_file_row_and_column(batch_repository: Path, tmp_path: Path) -> None:
    _bad_rows_input(tmp_path / "in")
    with pytest.raises(InvalidInput, match=r"bad.parquet: row 1: null in column 'features'"):
        run_job(_job(batch_repository, "tabular", tmp_path / "in", tmp_path / "out"))
    assert [p.name for p in (tmp_path / "out").rglob("*.parquet")] == []


def test_on_error_skip_sets_unscorable_rows_aside_with_their_reason(batch_repository: Path, tmp_path: Path) -> None:
    table = _bad_rows_input(tmp_path / "in")
    result = run_job(_job(batch_repository, "tabular", tmp_path / "in", tmp_path / "out", keep=("id",),
                          on_error="skip"))
    assert (result.scored, result.rejected) == (2, 3)
    assert result.reasons == {"null in column 'features'": 1, "column 'features' does not hold 8 values": 1,
                              "null value in column 'features'": 1}
    out = pq.read_table(tmp_path / "out" / "bad.parquet")
    assert out.column("id").to_pylist() == [0, 4]
    x = np.stack([np.asarray(table.column("features")[i].as_py(), np.float32) for i in (0, 4)])
    want = session(batch_repository / "tabular" / "1" / "model.onnx").run(None, {"features": x})[0]
    assert np.max(np.abs(list_matrix(out.column("probabilities")) - want)) <= 1e-6
    rejects = pq.read_table(tmp_path / "out" / "_rejects" / "bad.parquet")
    assert rejects.column_names == ["id", "_row", "_reject_reason"]
    assert rejects.column("_row").to_pylist() == [1, 2, 3]
    assert "3 rejected" in result.summary("out") and "1 x null in column 'features'" in result.summary("out")


def test_a_rerun_skips_files_in_the_manifest_and_refuses_another_jobs_output(
        batch_repository: Path, tmp_path: Path) -> None:
    write_tabular(tmp_path / "in", files=2, rows=500, row_group_rows=500)
    first = run_job(_job(batch_repository, "tabular", tmp_path / "in", tmp_path / "out"))
    again = run_job(_job(batch_repository, "tabular", tmp_path / "in", tmp_path / "out"))
    assert (first.files_done, again.files_done, again.files_skipped) == (2, 0, 2)
    with pytest.raises(SystemExit, match="holds the results of another job"):
        run_job(_job(batch_repository, "tabular", tmp_path / "in", tmp_path / "out", keep=("id",)))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not ours")
    with pytest.raises(SystemExit, match="not empty"):
        run_job(_job(batch_repository, "tabular", tmp_path / "in", tmp_path / "other"))


def test_a_glob_selects_files_and_names_outputs_relative_to_its_directory(
        batch_repository: Path, tmp_path: Path) -> None:
    write_tabular(tmp_path / "in" / "2026", files=3, rows=100, row_group_rows=100)
    run_job(_job(batch_repository, "tabular", f"{tmp_path}/in/*/part-[12].parquet", tmp_path / "out"))
    assert sorted(read_dir(tmp_path / "out")) == ["2026/part-1.parquet", "2026/part-2.parquet"]


def test_progress_is_a_bar_on_a_terminal_and_plain_lines_otherwise() -> None:
    bar, plain = io.StringIO(), io.StringIO()
    for stream, tty in ((bar, True), (plain, False)):
        progress = Progress(1000, stream=stream, tty=tty, line_interval_s=0.0)
        progress.advance(250)
        progress.close()
    assert bar.getvalue().startswith("\r") and "|######" in bar.getvalue() and "rows/s" in bar.getvalue()
    assert "ETA" in bar.getvalue()
    assert plain.getvalue().splitlines()[0].startswith("tessera batch: 25.0% 250/1,000 rows")
    assert "\r" not in plain.getvalue()


def test_feature_names_come_from_the_config(batch_repository: Path, tmp_path: Path) -> None:
    write_tabular(tmp_path / "in", files=1, rows=50, row_group_rows=50)
    table = pq.read_table(tmp_path / "in" / "part-0.parquet")
    shuffled = table.select(["region", "id", *reversed(TABULAR_FEATURES[:-1]), "ts"])
    pq.write_table(shuffled, tmp_path / "in" / "part-0.parquet")
    run_job(_job(batch_repository, "tabular", tmp_path / "in", tmp_path / "out"))
    want = session(batch_repository / "tabular" / "1" / "model.onnx").run(None, {"features": features(table)})[0]
    got = list_matrix(pq.read_table(tmp_path / "out" / "part-0.parquet").column("probabilities"))
    assert np.max(np.abs(got - want)) <= 1e-6


def test_each_input_takes_its_feature_names_from_the_config(batch_repository: Path, tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    shutil.copytree(batch_repository / "two_input", repository / "two_input")
    config = repository / "two_input" / "config.pbtxt"
    config.write_text(config.read_text()
                      + 'parameters { key: "feature_names.a" value: { string_value: "a0,a1,a2,a3" } }\n'
                      + 'parameters { key: "feature_names.b" value: { string_value: "b0,b1,b2,b3" } }\n')
    rng = np.random.default_rng(4)
    a = rng.integers(-9, 9, (500, 4)).astype(np.int32)
    b = rng.standard_normal((500, 4)).astype(np.float32)
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({**{f"b{j}": b[:, j] for j in range(4)}, **{f"a{j}": a[:, j] for j in range(4)}}),
                   tmp_path / "in" / "x.parquet")
    run_job(_job(repository, "two_input", tmp_path / "in", tmp_path / "out"))
    out = pq.read_table(tmp_path / "out" / "x.parquet")
    want_sum, _ = session(repository / "two_input" / "1" / "model.onnx").run(None, {"a": a, "b": b})
    assert np.max(np.abs(list_matrix(out.column("sum")) - want_sum)) <= 1e-6
