"""How many CPUs this process can run on: its affinity mask, bounded by a cgroup CPU quota.

A container limited to one CPU (`docker --cpus 1`, a Kubernetes limit of 1) still sees every core
of its node in its affinity mask; only the cgroup's quota says that two threads cannot both run
for long. Both cgroup v2 (`cpu.max`) and v1 (`cpu.cfs_quota_us` / `cpu.cfs_period_us`) are read.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CGROUP_ROOT", "usable_cpus"]

CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cpus(cgroup_root: Path = CGROUP_ROOT) -> float:
    """CPUs' worth of time this process may use at once (a quota of half a CPU is 0.5)."""
    try:
        cpus = float(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        cpus = float(os.cpu_count() or 1)
    quota = _cgroup_quota(cgroup_root)
    return cpus if quota is None else min(cpus, quota)


def _cgroup_quota(root: Path) -> float | None:
    """The quota in CPUs, None when there is none (or no cgroup file can be read)."""
    v2 = _read(root / "cpu.max")
    if v2 is not None:
        fields = v2.split()
        return _ratio(fields[0], fields[1]) if len(fields) == 2 and fields[0] != "max" else None
    quota, period = _read(root / "cpu" / "cpu.cfs_quota_us"), _read(root / "cpu" / "cpu.cfs_period_us")
    if quota is None or period is None or quota.strip() == "-1":
        return None
    return _ratio(quota, period)


def _ratio(quota: str, period: str) -> float | None:
    try:
        value = int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None
    return value if value > 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None
