"""The cores this process may use, and the inference threads a CPU device gets from them.

A runtime left to its own default sizes its pool from the host (ONNX Runtime: the physical
cores; OpenVINO: the cores it sees), not from the process's CPU affinity (`taskset`, a
Kubernetes CPU manager) or its cgroup quota (`docker run --cpus`, a pod's CPU limit). In a
container with a 2-CPU limit on a 64-core host that is 32 threads time-slicing 2 cores, and
their spinning takes the event loop's core. Here the budget is the smaller of the two, and the
devices' threads are fitted into it, leaving the event loop its core where there are two or more.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class CpuBudget:
    cores: int  # what this process may use: min(affinity, quota), at least 1
    affinity: int
    quota: float | None  # CPUs the cgroup allows; None: no limit

    def describe(self) -> str:
        limit = "no cgroup CPU limit" if self.quota is None else f"cgroup limit {self.quota:g} CPUs"
        return f"{self.cores} usable cores ({self.affinity} in the CPU affinity, {limit})"


def parse_cpu_max(text: str) -> float | None:
    """cgroup v2 `cpu.max`: "max 100000" (no limit) or "<quota> <period>" in microseconds."""
    words = text.split()
    if len(words) != 2 or words[0] == "max":
        return None
    quota, period = int(words[0]), int(words[1])
    return quota / period if quota > 0 and period > 0 else None


def parse_cfs(quota_text: str, period_text: str) -> float | None:
    """cgroup v1 `cpu.cfs_quota_us` (-1: no limit) and `cpu.cfs_period_us`."""
    quota, period = int(quota_text), int(period_text)
    return quota / period if quota > 0 and period > 0 else None


def cgroup_quota(root: Path = CGROUP) -> float | None:
    """The CPU limit of this process's cgroup, v2 or v1; None where there is none (or none is
    readable: not Linux, no cgroup file system)."""
    try:
        if (root / "cpu.max").is_file():
            return parse_cpu_max((root / "cpu.max").read_text())
        v1 = root / "cpu"
        if (v1 / "cpu.cfs_quota_us").is_file():
            return parse_cfs((v1 / "cpu.cfs_quota_us").read_text(),
                             (v1 / "cpu.cfs_period_us").read_text())  # fmt: skip
    except (OSError, ValueError):
        return None
    return None


def budget(affinity: int, quota: float | None) -> CpuBudget:
    cores = affinity if quota is None else min(affinity, math.ceil(quota))
    return CpuBudget(max(1, cores), affinity, quota)


def this_process() -> CpuBudget:
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        affinity = os.cpu_count() or 1
    return budget(affinity, cgroup_quota())


def fitted_threads(cores: int, cpu_devices: int) -> int:
    """Threads for each of `cpu_devices` CPU devices running at once: the cores less the event
    loop's (when there are two or more), shared out, at least one each."""
    spare = cores - 1 if cores >= 2 else cores
    return max(1, spare // max(1, cpu_devices))
