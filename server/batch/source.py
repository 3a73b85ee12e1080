"""The input: Parquet files (a file, a directory, a glob, or an fsspec URL) found and described (row
counts, schemas) through pyarrow.dataset, one fragment per file, each read as a stream of record
batches; the whole table is never in memory.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .location import Location, has_magic, resolve

__all__ = ["Fragment", "ParquetSource"]

_READ_BUFFER_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Fragment:
    """One input file."""

    path: str
    """In the input's filesystem."""

    name: str
    """Relative to the input's base directory: names its output file and its manifest entry."""

    rows: int
    schema: pa.Schema


def _visible(relative: str) -> bool:
    return not any(part.startswith((".", "_")) for part in relative.split("/"))


class ParquetSource:
    """The fragments of an input location, sorted by name. Reads footers only (row counts, schemas)."""

    def __init__(self, location: str, storage_options: Mapping[str, Any]) -> None:
        self.location: Location = resolve(location, storage_options)
        base, files = self._files()
        if not files:
            raise SystemExit(f"tessera batch: no Parquet files at {location}")
        self._dataset = ds.dataset(files, filesystem=self.location.filesystem, format="parquet")
        fragments: list[Fragment] = []
        for fragment in self._dataset.get_fragments():
            path = str(fragment.path)
            name = posixpath.relpath(path, base) if base else posixpath.basename(path)
            fragments.append(Fragment(path, name, fragment.metadata.num_rows, fragment.physical_schema))
        self.fragments: tuple[Fragment, ...] = tuple(sorted(fragments, key=lambda f: f.name))

    def _files(self) -> tuple[str, list[str]]:
        """(base directory the names are relative to, files)."""
        loc = self.location
        if has_magic(loc.path):
            base = loc.path
            while has_magic(base):
                base = posixpath.dirname(base)
            return base, [f for f in loc.glob(loc.path) if _visible(posixpath.relpath(f, base))]
        info = loc.filesystem.get_file_info(loc.path)
        if info.type == pafs.FileType.File:
            return posixpath.dirname(loc.path), [loc.path]
        if info.type == pafs.FileType.NotFound:
            raise SystemExit(f"tessera batch: input {loc.url} does not exist")
        return loc.path, [f for f in loc.files_below(loc.path) if _visible(posixpath.relpath(f, loc.path))]

    @property
    def filesystem(self) -> pafs.FileSystem:
        return self.location.filesystem

    @property
    def total_rows(self) -> int:
        return sum(f.rows for f in self.fragments)

    def batches(self, fragment: Fragment, columns: Sequence[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
        """The fragment's rows in file order, `batch_rows` per batch (the last one fewer).

        Decoded page by page through a 1 MiB read buffer, on the calling thread: the dataset scanner
        decodes whole row groups ahead on its own threads, which held ~200 MB for a file of 16 MB row
        groups where this holds ~60 MB (BENCHMARKS.md); the pipeline does its own read-ahead.
        """
        with self.filesystem.open_input_file(fragment.path) as handle:
            parquet = pq.ParquetFile(handle, pre_buffer=False, buffer_size=_READ_BUFFER_BYTES)
            yield from parquet.iter_batches(batch_size=batch_rows, columns=list(columns), use_threads=False)
