"""usable_cpus: the affinity mask, bounded by a cgroup v2 or v1 CPU quota read from the files themselves."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from server.executor.cpus import usable_cpus

AFFINITY = float(len(os.sched_getaffinity(0)))


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize(("files", "expected"), [
    ({}, AFFINITY),  # no cgroup files at all
    ({"cpu.max": "max 100000\n"}, AFFINITY),  # v2, no quota
    ({"cpu.max": "50000 100000\n"}, min(AFFINITY, 0.5)),  # v2, half a CPU
    ({"cpu.max": "100000 100000\n"}, min(AFFINITY, 1.0)),
    ({"cpu.max": "800000 100000\n"}, min(AFFINITY, 8.0)),  # a quota above the mask: the mask
    ({"cpu.max": "garbage\n"}, AFFINITY),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, AFFINITY),  # v1, no quota
    ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, min(AFFINITY, 1.0)),
    ({"cpu/cpu.cfs_quota_us": "150000\n", "cpu/cpu.cfs_period_us": "0\n"}, AFFINITY),  # unreadable period
])
def test_the_quota_bounds_the_affinity(tmp_path: Path, files: dict[str, str], expected: float) -> None:
    assert usable_cpus(_write(tmp_path, files)) == expected


def test_a_process_pinned_to_one_core_can_use_one() -> None:
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(before)})
        assert usable_cpus(Path("/nonexistent")) == 1.0
    finally:
        os.sched_setaffinity(0, before)
