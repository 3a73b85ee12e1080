"""The input: Parquet files (a file, a directory, a glob, or an fsspec URL) as fragments, one per file,
each read as a stream of record batches through pyarrow.dataset; the whole table is never in memory.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from .location import Location, has_magic, resolve

__all__ = ["Fragment", "ParquetSource"]

# Batches decoded ahead of the one being consumed: enough to overlap reading with compute, few enough
# that a file's memory stays a few batches whatever its size.
_READAHEAD_BATCHES = 2


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
        self._by_path: dict[str, ds.ParquetFileFragment] = {}
        for fragment in self._dataset.get_fragments():
            path = str(fragment.path)
            self._by_path[path] = fragment
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
        """The fragment's rows in file order, `batch_rows` at most per batch (fewer at row-group ends)."""
        parquet = self._by_path[fragment.path]
        yield from parquet.to_batches(schema=fragment.schema, columns=list(columns), batch_size=batch_rows,
                                      batch_readahead=_READAHEAD_BATCHES, fragment_readahead=0,
                                      use_threads=True)
