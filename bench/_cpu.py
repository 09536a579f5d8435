"""The CPU a measured run spent, by process and by thread (psutil): what
``bench/test_scaling.py`` (at the peak) and the latency benchmarks of
``bench/test_engine_e2e.py`` (at a fixed load) report beside their figures.

Roles: this launcher, the supervisor process (the process engine's own),
the workers (summed) and the host.  With the thread engine the launcher's
CPU holds the engine too; its threads say how it splits (the loop, the log
writer, the checkpointer, and the caller: ``MainThread``).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psutil


def _cpu(p: psutil.Process) -> float:
    try:
        t = p.cpu_times()
    except psutil.Error:  # (gone: a recycled worker) its CPU is not counted
        return 0.0
    return float(t.user + t.system)


def _threads() -> dict[str, float]:
    """CPU seconds of this process's threads, by name."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for t in psutil.Process().threads():
        name = names.get(t.id, "other")
        out[name] = out.get(name, 0.0) + t.user_time + t.system_time
    return out


def _processes() -> dict[str, list[psutil.Process]]:
    """This launcher, the supervisor process (if the engine has one), the
    workers and the host, by their command lines."""
    me = psutil.Process()
    out: dict[str, list[psutil.Process]] = {"launcher": [me], "supervisor": [], "worker": [],
                                            "host": []}
    for c in me.children(recursive=True):
        cmd = " ".join(c.cmdline())
        role = "host" if "supervisor.host" in cmd else \
            "supervisor" if "supervisor.facade.serve" in cmd else "worker"
        out[role].append(c)
    return out


class CpuSplit:
    """Entered around a measured run (the supervisor already started): the
    CPU each role and each of this launcher's threads spent in it."""

    def __enter__(self) -> "CpuSplit":
        self._procs = {k: v for k, v in _processes().items() if v}
        self._before = {k: sum(map(_cpu, v)) for k, v in self._procs.items()}
        self._threads_before = _threads()
        self._began = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._began
        self.by_role = {k: sum(map(_cpu, v)) - self._before[k] for k, v in self._procs.items()}
        after = _threads()
        self.by_thread = {k: v - self._threads_before.get(k, 0.0) for k, v in after.items()
                          if v - self._threads_before.get(k, 0.0) > 0}

    def per_saga_us(self, sagas: int) -> dict[str, float]:
        return {k: round(v / sagas * 1e6, 1) for k, v in self.by_role.items()}

    def threads_per_saga_us(self, sagas: int) -> dict[str, float]:
        return {k: round(v / sagas * 1e6, 1) for k, v in self.by_thread.items()}

    def busy(self) -> dict[str, Any]:
        """Each role's share of one core over the run, and the machine's
        share of all its cores."""
        cores = psutil.cpu_count() or 1
        out: dict[str, Any] = {k: round(v / self.wall, 2) for k, v in self.by_role.items()}
        out["machine"] = round(sum(self.by_role.values()) / self.wall / cores, 2)
        out["cores"] = cores
        return out
