"""How many threads editgate computes with, and how they wait, so a busy machine costs a fair share.

torch's CPU kernels run on OpenMP threads. By default a thread that reaches the end of its part of a
kernel spins for a while waiting for the others; beside another CPU-bound process, a thread spinning
for a core that the other process holds takes that core's time from the very thread it waits for,
and every kernel runs at the speed of its slowest, descheduled part. Waiting passively (the thread
sleeps and is woken) removes that. OpenMP reads its settings when the library is loaded, which is
when torch is imported, so `configure_openmp` runs when editgate is imported, before any torch import
of editgate's; a user's own OMP_WAIT_POLICY is kept, and a program that imported torch before
editgate keeps the settings torch started with.

The thread count is the number of CPUs the process may use: the affinity mask (taskset, a CI
runner's cpuset) and a cgroup CPU quota (a container limited to 2 CPUs on a 64-core host), whichever
is smaller, never the host's core count.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

OPENMP_SETTINGS = {"OMP_WAIT_POLICY": "PASSIVE"}  # bench/contention.py compares the choices
USER_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")  # a user who set either keeps their choice
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"


def configure_openmp() -> None:
    """editgate's OpenMP waiting, unless the user chose one; effective only before torch is imported."""
    if not any(name in os.environ for name in USER_SETTINGS):
        os.environ.update(OPENMP_SETTINGS)


def cgroup_cpus(cpu_max: Path = CGROUP_CPU_MAX) -> int | None:
    """The CPUs a cgroup v2 quota allows (rounded up), or None when there is no quota to read."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(1, math.ceil(int(quota) / int(period)))
    except (ValueError, ZeroDivisionError):
        return None


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask, capped by a cgroup quota."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpus()
    return max(1, min(cpus, quota) if quota is not None else cpus)
