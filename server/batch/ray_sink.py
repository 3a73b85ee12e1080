"""The Ray engine's Parquet sink: each write task writes its rows, in the order Ray hands them over, one
output file per input file, through the local engine's FileWriter (same encodings, statistics and row
groups).

Imported only when Ray is installed (`tessera[ray]`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from ray.data.block import BlockAccessor
from ray.data.datasource import Datasink

from .location import resolve
from .output import RAY_PART_PREFIX, RAY_PATH_COLUMN, FileWriter

__all__ = ["OrderedParquetSink"]


class OrderedParquetSink(Datasink[int]):
    """Writes `part-<input file index>-<write task index>-<run id>.parquet` below `output`.

    Why not Ray Data's `write_parquet`: it hands a task's blocks to `pyarrow.dataset.write_dataset` with
    `use_threads=True` and without `preserve_order`, and that may write them in any order
    (apache/arrow#26818): Ray's `preserve_order` keeps blocks in order up to the write task and no
    further. Here one thread writes each task's rows in the order they came.

    Why the input file's index in the name: Ray's read reads each file whole and in order within one
    read task, but it packs files into read tasks by size, not in the order given, so a later task may
    hold an earlier file. With `preserve_order`, Ray numbers write tasks in the order of their input,
    so sorting by (file index, task index), which is name order, gives every file's rows in file order
    and the files in input order.
    """

    def __init__(self, output: str, storage_options: Mapping[str, Any], run_id: str, *, files: Sequence[str],
                 dictionary_columns: Sequence[str], statistics_columns: Sequence[str]) -> None:
        self._output = output
        self._storage_options = dict(storage_options)
        self._run_id = run_id
        self._index = {path: i for i, path in enumerate(files)}
        self._dictionary = list(dictionary_columns)
        self._statistics = list(statistics_columns)

    def write(self, blocks: Iterable[Any], ctx: Any) -> int:
        """Runs in a Ray write task; returns the rows written. A failed task leaves no file under a final
        name (Ray's retry of the task writes them again)."""
        writers: dict[str, FileWriter] = {}
        try:
            for block in blocks:
                table: pa.Table = BlockAccessor.for_block(block).to_arrow()
                for path, rows in _split_by_file(table):
                    writer = writers.get(path)
                    if writer is None:
                        writer = writers[path] = self._writer(path, ctx.task_idx, rows.schema)
                    elif not rows.schema.equals(writer.schema):
                        rows = rows.cast(writer.schema)  # kept columns typed a little apart between files
                    for batch in rows.to_batches():
                        writer.write(batch)
            for writer in writers.values():
                writer.commit()
        except BaseException:
            for writer in writers.values():
                writer.abort()
            raise
        return sum(w.rows for w in writers.values())

    def _writer(self, path: str, task_index: int, schema: pa.Schema) -> FileWriter:
        index = self._index.get(path)
        if index is None:
            raise RuntimeError(f"Ray Data read a file the job did not plan: {path}")
        name = f"{RAY_PART_PREFIX}{index:06d}-{task_index:06d}-{self._run_id}.parquet"
        return FileWriter(resolve(self._output, self._storage_options), name, schema,
                          dictionary_columns=self._dictionary, statistics_columns=self._statistics)

    def get_name(self) -> str:
        return "TesseraParquet"


def _split_by_file(table: pa.Table) -> list[tuple[str, pa.Table]]:
    """The rows of each input file in `table` (without the path column), in their order."""
    if not table.num_rows:
        return []
    paths = table.column(RAY_PATH_COLUMN)
    rows = table.drop_columns([RAY_PATH_COLUMN])
    distinct = pc.unique(paths)
    if len(distinct) == 1:
        return [(distinct[0].as_py(), rows)]
    return [(path.as_py(), rows.filter(pc.equal(paths, path))) for path in distinct]
