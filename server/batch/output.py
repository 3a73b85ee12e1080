"""Output files: one Parquet file per input file, written under a hidden temporary name and renamed
into place when complete, so a reader (or a resumed run) never sees half a file.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from .location import Location

__all__ = ["RAY_PART_PREFIX", "RAY_PATH_COLUMN", "REJECTS_DIR", "ROW_GROUP_BYTES", "ROW_GROUP_ROWS", "FileWriter",
           "remove_partials"]

REJECTS_DIR = "_rejects"
RAY_PART_PREFIX = "part-"
"""The Ray engine's output files: part-<input file index>-<write task>-<run id>.parquet."""
RAY_PATH_COLUMN = "path"
"""The column Ray Data's read_parquet(include_paths=True) adds: each row's input file."""
ROW_GROUP_ROWS = 65536
ROW_GROUP_BYTES = 32 << 20
DICTIONARY_PAGE_BYTES = 64 << 10
_PARTIAL_SUFFIX = ".partial"


def _partial_name(path: str) -> str:
    head, tail = posixpath.split(path)
    return posixpath.join(head, f".{tail}.{os.getpid()}{_PARTIAL_SUFFIX}")


class FileWriter:
    """Writes one output file; nothing exists under its final name until `commit`.

    Batches are gathered into row groups of about `ROW_GROUP_ROWS` rows (or `ROW_GROUP_BYTES`), not
    one per batch. `dictionary_columns` are dictionary-encoded and `statistics_columns` get min/max
    statistics (None: all): a dictionary attempt on float outputs costs 4-5x the whole write and never
    pays, and statistics on vector outputs cost a third of it and serve no filter. A dictionary page
    stops at `DICTIONARY_PAGE_BYTES` (pyarrow's default: 1 MiB), then the column goes on plain: a kept
    column of unique int64 ids gives up after 8,192 values instead of dictionary-encoding whole row
    groups for nothing (that was 18% of the write); a column of few distinct values keeps it.
    `write`, `flush`, `commit` and `abort` block: call them from a writer thread; `add` only gathers.
    """

    def __init__(self, location: Location, relative: str, schema: pa.Schema,
                 dictionary_columns: Sequence[str] | None = None,
                 statistics_columns: Sequence[str] | None = None) -> None:
        self._fs = location.filesystem
        self.path = location.join(relative)
        self._partial = _partial_name(self.path)
        self._schema = schema
        self._dictionary: list[str] | bool = True if dictionary_columns is None else list(dictionary_columns)
        self._statistics: list[str] | bool = True if statistics_columns is None else list(statistics_columns)
        self._writer: pq.ParquetWriter | None = None
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._pending_bytes = 0
        self.rows = 0

    @property
    def schema(self) -> pa.Schema:
        return self._schema

    def _open(self) -> pq.ParquetWriter:
        if self._writer is None:
            self._fs.create_dir(posixpath.dirname(self._partial), recursive=True)
            self._writer = pq.ParquetWriter(self._partial, self._schema, filesystem=self._fs,
                                            use_dictionary=self._dictionary, write_statistics=self._statistics,
                                            dictionary_pagesize_limit=DICTIONARY_PAGE_BYTES)
        return self._writer

    def write(self, batch: pa.RecordBatch) -> None:
        if self.add(batch):
            self.flush()

    def add(self, batch: pa.RecordBatch) -> bool:
        """Gather `batch` (no I/O); True when a row group is complete and `flush` should write it."""
        if batch.num_rows:
            self._pending.append(batch)
            self._pending_rows += batch.num_rows
            self._pending_bytes += batch.nbytes
            self.rows += batch.num_rows
        return self._pending_rows >= ROW_GROUP_ROWS or self._pending_bytes >= ROW_GROUP_BYTES

    def flush(self) -> None:
        """Write what was gathered as one row group."""
        if self._pending:
            self._open().write_table(pa.Table.from_batches(self._pending, schema=self._schema),
                                     row_group_size=self._pending_rows)
        self._pending, self._pending_rows, self._pending_bytes = [], 0, 0

    def commit(self) -> None:
        """Close the file and rename it to its final name (atomic on a local file system; on object
        stores the final object appears whole)."""
        self.flush()
        self._open().close()
        self._fs.move(self._partial, self.path)

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._fs.delete_file(self._partial)


def remove_partials(location: Location) -> int:
    """Delete partial files a killed run left below the output; returns how many."""
    partials = [p for p in location.files_below(location.path) if p.endswith(_PARTIAL_SUFFIX)
                and posixpath.basename(p).startswith(".")]
    for path in partials:
        location.filesystem.delete_file(path)
    return len(partials)

