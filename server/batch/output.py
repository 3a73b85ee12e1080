"""Output files: one Parquet file per input file, written under a hidden temporary name and renamed
into place when complete, so a reader (or a resumed run) never sees half a file.
"""

from __future__ import annotations

import os
import posixpath

import pyarrow as pa
import pyarrow.parquet as pq

from .location import Location

__all__ = ["REJECTS_DIR", "FileWriter", "remove_partials"]

REJECTS_DIR = "_rejects"
_PARTIAL_SUFFIX = ".partial"


def _partial_name(path: str) -> str:
    head, tail = posixpath.split(path)
    return posixpath.join(head, f".{tail}.{os.getpid()}{_PARTIAL_SUFFIX}")


class FileWriter:
    """Writes one output file; nothing exists under its final name until `commit`.

    The file is opened on the first write (or at commit, empty with `schema`). Blocking: call from a
    writer thread.
    """

    def __init__(self, location: Location, relative: str, schema: pa.Schema) -> None:
        self._fs = location.filesystem
        self.path = location.join(relative)
        self._partial = _partial_name(self.path)
        self._schema = schema
        self._writer: pq.ParquetWriter | None = None
        self.rows = 0

    def _open(self) -> pq.ParquetWriter:
        if self._writer is None:
            self._fs.create_dir(posixpath.dirname(self._partial), recursive=True)
            self._writer = pq.ParquetWriter(self._partial, self._schema, filesystem=self._fs)
        return self._writer

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows:
            self._open().write_batch(batch)
            self.rows += batch.num_rows

    def commit(self) -> None:
        """Close the file and rename it to its final name (atomic on a local file system; on object
        stores the final object appears whole)."""
        writer = self._open()
        writer.close()
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

