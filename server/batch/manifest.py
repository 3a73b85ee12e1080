"""The manifest beside the output (`<output>/_tessera_manifest.json`): what job wrote the output and
which input files are complete. A file is recorded only after its output was renamed into place, so
a run killed at any point and started again redoes exactly the files not recorded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .location import Location

__all__ = ["MANIFEST_NAME", "FragmentRecord", "Manifest"]

MANIFEST_NAME = "_tessera_manifest.json"
_FORMAT = 1


@dataclass(frozen=True, slots=True)
class FragmentRecord:
    rows: int
    scored: int
    rejected: int
    reasons: dict[str, int] = field(default_factory=dict)


class Manifest:
    """Read at start, rewritten (whole, through a temporary name) after each completed file."""

    def __init__(self, location: Location, job: Mapping[str, Any]) -> None:
        self._location = location
        self._path = location.join(MANIFEST_NAME)
        self._job = dict(job)
        self.done: dict[str, FragmentRecord] = {}

    @classmethod
    def open(cls, location: Location, job: Mapping[str, Any]) -> Manifest:
        """The manifest of `job` at `location`. Raises SystemExit when the output holds another job's
        results, or files and no manifest."""
        manifest = cls(location, job)
        found = manifest._read()
        if found is None:
            others = [p for p in location.files_below(location.path) if not os.path.basename(p).startswith(".")]
            if others:
                raise SystemExit(f"tessera batch: output {location.url} is not empty and holds no "
                                 f"{MANIFEST_NAME}; give an empty or new directory")
            manifest._save()  # before any output: a run killed after its first rename still resumes
            return manifest
        if found.get("job") != manifest._job:
            raise SystemExit(f"tessera batch: output {location.url} holds the results of another job "
                             f"({found.get('job')}); use a new --output, or delete it to start over")
        manifest.done = {name: FragmentRecord(**record) for name, record in found.get("fragments", {}).items()}
        return manifest

    def _read(self) -> dict[str, Any] | None:
        fs = self._location.filesystem
        try:
            with fs.open_input_stream(self._path) as stream:
                data: dict[str, Any] = json.loads(stream.read())
        except FileNotFoundError:
            return None
        return data

    def record(self, name: str, record: FragmentRecord) -> None:
        """Mark input file `name` complete (blocking; the manifest lands whole or not at all)."""
        self.done[name] = record
        self._save()

    def _save(self) -> None:
        body = json.dumps({"format": _FORMAT, "job": self._job,
                           "fragments": {k: vars_of(v) for k, v in sorted(self.done.items())}},
                          indent=1).encode()
        fs = self._location.filesystem
        fs.create_dir(self._location.path, recursive=True)
        partial = self._location.join(f".{MANIFEST_NAME}.{os.getpid()}.partial")
        with fs.open_output_stream(partial) as stream:
            stream.write(body)
        fs.move(partial, self._path)


def vars_of(record: FragmentRecord) -> dict[str, Any]:
    return {"rows": record.rows, "scored": record.scored, "rejected": record.rejected,
            "reasons": dict(record.reasons)}
