"""How many CPUs this process may actually use, for sizing thread pools.

`os.cpu_count()` counts the host's CPUs: in a container limited to 4 CPUs on a 64-core host it
says 64, and an engine that starts 64 threads per process (ONNX Runtime and OpenVINO do, by
default) spends its time switching between them. samrt sizes every engine's threads with
`usable_cpus()` instead:

1. `SAMRT_THREADS` (an integer >= 1), if set: the override, used as given;
2. else the smaller of the CPUs in this process's affinity mask (`os.sched_getaffinity`, which
   `taskset` and cpusets restrict) and the cgroup CPU quota rounded up (cgroup v2 `cpu.max`, or
   v1 `cpu.cfs_quota_us / cpu.cfs_period_us`; what `docker run --cpus=4` sets);
3. at least 1.
"""

from __future__ import annotations

import math
import os
from typing import Optional

from .errors import InputError

__all__ = ["usable_cpus", "cgroup_cpu_quota", "THREADS_ENV"]

THREADS_ENV = "SAMRT_THREADS"


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _own_cgroup_dirs(root: str) -> list:
    """Candidate cgroup folders of this process: its own (from /proc/self/cgroup) then the root."""
    dirs = []
    text = _read("/proc/self/cgroup") or ""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[2].startswith("/"):
            dirs.append(os.path.join(root, parts[2].lstrip("/")))
    return dirs + [root]


def cgroup_cpu_quota(root: str = "/sys/fs/cgroup") -> Optional[float]:
    """The CPU quota of this process's cgroup in CPUs (e.g. 4.0, 0.5), or None when unlimited or
    unknown. Reads cgroup v2 `cpu.max` ("max 100000" or "400000 100000"), else cgroup v1
    `cpu/cpu.cfs_quota_us` and `cpu.cfs_period_us` (-1: unlimited)."""
    for d in _own_cgroup_dirs(root):
        text = _read(os.path.join(d, "cpu.max"))
        if text:
            quota, _, period = text.partition(" ")
            if quota == "max":
                return None
            try:
                return int(quota) / int(period or 100000)
            except ValueError:
                return None
    for d in _own_cgroup_dirs(os.path.join(root, "cpu")) + _own_cgroup_dirs(os.path.join(root, "cpu,cpuacct")):
        quota, period = _read(os.path.join(d, "cpu.cfs_quota_us")), _read(os.path.join(d, "cpu.cfs_period_us"))
        if quota and period:
            try:
                q, p = int(quota), int(period)
            except ValueError:
                return None
            return None if q <= 0 or p <= 0 else q / p
    return None


def usable_cpus() -> int:
    """The number of threads an engine of this process should use (module docstring). Raises
    InputError for a `SAMRT_THREADS` that is not an integer >= 1."""
    override = os.environ.get(THREADS_ENV, "").strip()
    if override:
        try:
            n = int(override)
        except ValueError:
            n = 0
        if n < 1:
            raise InputError(f"{THREADS_ENV}: got {override!r}, expected an integer >= 1")
        return n
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)
