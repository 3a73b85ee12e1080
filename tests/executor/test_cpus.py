"""usable_cpus: the affinity mask, bounded by the smallest cgroup v2 or v1 CPU quota on the way from the
process's own cgroup up to the mount root (files written here, in a folder laid out like /sys/fs/cgroup)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from server.executor.cpus import usable_cpus

AFFINITY = float(len(os.sched_getaffinity(0)))


def _usable(root: Path, files: dict[str, str], self_cgroup: str = "0::/\n") -> float:
    for name, text in {**files, "self": self_cgroup}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return usable_cpus(root, root / "self")


@pytest.mark.parametrize(("files", "expected"), [
    pytest.param({}, AFFINITY, id="no cgroup files"),
    pytest.param({"cpu.max": "max 100000\n"}, AFFINITY, id="v2 no quota"),
    pytest.param({"cpu.max": "50000 100000\n"}, min(AFFINITY, 0.5), id="v2 half a CPU"),
    pytest.param({"cpu.max": "800000 100000\n"}, AFFINITY, id="v2 quota above the mask"),
    pytest.param({"cpu.max": "garbage\n"}, AFFINITY, id="v2 unreadable"),
    pytest.param({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, AFFINITY, id="v1 no quota"),
    pytest.param({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, min(AFFINITY, 0.5),
                 id="v1 half a CPU"),
    pytest.param({"cpu/cpu.cfs_quota_us": "150000\n", "cpu/cpu.cfs_period_us": "0\n"}, AFFINITY,
                 id="v1 zero period"),
    pytest.param({"cpu.max": "max 100000\n", "cpu/cpu.cfs_quota_us": "25000\n", "cpu/cpu.cfs_period_us": "100000\n"},
                 min(AFFINITY, 0.25), id="both, the smaller counts"),
])
def test_a_quota_at_the_root_bounds_the_affinity(tmp_path: Path, files: dict[str, str], expected: float) -> None:
    assert _usable(tmp_path, files) == expected


def test_the_smallest_quota_from_the_process_cgroup_up_counts(tmp_path: Path) -> None:
    files = {"kubepods/cpu.max": "30000 100000\n",  # the pod's limit, above the process's own cgroup
             "kubepods/pod1/cpu.max": "max 100000\n",
             "kubepods/pod1/app/cpu.max": "200000 100000\n",
             "other/cpu.max": "10000 100000\n"}  # a sibling's quota does not bound this process
    assert _usable(tmp_path, files, "0::/kubepods/pod1/app\n") == min(AFFINITY, 0.3)
    v1 = {"cpu/slice/cpu.cfs_quota_us": "50000\n", "cpu/slice/cpu.cfs_period_us": "100000\n"}
    assert _usable(tmp_path / "v1", v1, "4:cpu,cpuacct:/slice/unit\n2:memory:/elsewhere\n") == min(AFFINITY, 0.5)


def test_a_process_pinned_to_one_core_can_use_one(tmp_path: Path) -> None:
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(before)})
        assert _usable(tmp_path, {}) == 1.0
    finally:
        os.sched_setaffinity(0, before)
