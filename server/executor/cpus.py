"""How many CPUs this process can run on: its affinity mask, bounded by cgroup CPU quotas.

A container limited to one CPU (`docker --cpus 1`, a Kubernetes limit of 1) still sees every core
of its node in its affinity mask; only a cgroup's quota says that two threads cannot both run for
long. The quota may sit on the process's own cgroup or on any above it (a pod's limit, a systemd
slice), so every level from the process's cgroup (`/proc/self/cgroup`) up to the mount root is
read, and the smallest quota counts: cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CGROUP_ROOT", "usable_cpus"]

CGROUP_ROOT = Path("/sys/fs/cgroup")
_SELF = Path("/proc/self/cgroup")


def usable_cpus(cgroup_root: Path = CGROUP_ROOT, self_cgroup: Path = _SELF) -> float:
    """CPUs' worth of time this process may use at once (a quota of half a CPU is 0.5)."""
    try:
        cpus = float(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        cpus = float(os.cpu_count() or 1)
    quotas = [q for d in _levels(cgroup_root, self_cgroup) if (q := _quota(d)) is not None]
    return min([cpus, *quotas])


def _levels(root: Path, self_cgroup: Path) -> list[Path]:
    """The folders whose quota bounds this process: its own cgroup's and every parent's, v2 and v1."""
    folders = [root, root / "cpu"]
    for line in (_read(self_cgroup) or "").splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":  # v2: "0::/a/b"
            base = root
        elif "cpu" in controllers.split(","):  # v1: "4:cpu,cpuacct:/a/b"
            base = root / "cpu"
        else:
            continue
        folder = base.joinpath(*[p for p in path.split("/") if p and p != ".."])
        while folder != base:
            folders.append(folder)
            folder = folder.parent
    return folders


def _quota(folder: Path) -> float | None:
    """The quota in CPUs set in `folder`, None when there is none or it cannot be read."""
    v2 = _read(folder / "cpu.max")
    if v2 is not None:
        fields = v2.split()
        return _ratio(fields[0], fields[1]) if len(fields) == 2 and fields[0] != "max" else None
    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
    if quota is None or period is None:
        return None
    return _ratio(quota, period)


def _ratio(quota: str, period: str) -> float | None:
    try:
        value = int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None
    return value if value > 0 else None  # v1 says "-1" for none


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None
