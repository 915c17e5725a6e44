"""Resource samples of running processes from ``/proc`` (Linux): RSS, open fds, threads.

`Sampler` records, every ``interval_s`` in a thread, each process of the given trees (a
server's main process and all its descendants, e.g. gunicorn's workers) and the size and file
count of named directories (the gateway's prometheus multiprocess dir)::

    sampler = Sampler({"gateway": gw.proc.pid}, dirs={"metrics": gw.metrics_dir}, interval_s=1)
    with sampler:
        ...                                   # the load
    sampler.samples                           # [{"t": 0.0, "processes": {...}, "dirs": {...}}]

Processes are keyed ``<role>`` for the main process and ``<role>/<pid>`` for descendants.

`CpuMeter` splits the CPU time of a window between this process's live descendants (the
servers a benchmark started) and its children that exited and were reaped in the window (a
Locust run)::

    with CpuMeter() as cpu:
        run_load(spec)                        # Locust: a child, reaped before the window ends
    cpu.servers_s, cpu.reaped_s
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from loadtest.periodic import Periodic

PROC = Path("/proc")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def read_process(pid: int) -> dict[str, int] | None:
    """``rss_bytes``, ``fds`` and ``threads`` of ``pid``; None if it is gone."""
    try:
        status = (PROC / str(pid) / "status").read_text()
        fds = len(os.listdir(PROC / str(pid) / "fd"))
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss_kb = int(fields.get("VmRSS", "0 kB").split()[0])  # a zombie has no VmRSS
    return {"rss_bytes": rss_kb * 1024, "fds": fds, "threads": int(fields["Threads"])}


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from every thread's ``children`` list)."""
    out: list[int] = []
    try:
        tasks = os.listdir(PROC / str(pid) / "task")
    except FileNotFoundError:
        return out
    for tid in tasks:
        try:
            out += [
                int(c) for c in (PROC / str(pid) / "task" / tid / "children").read_text().split()
            ]
        except FileNotFoundError:
            continue
    return sorted(set(out))


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children, ...)."""
    found, todo = [], children(pid)
    while todo:
        child = todo.pop()
        found.append(child)
        todo += children(child)
    return sorted(found)


def stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (``[0]`` is the state,
    ``[1]`` the parent pid, ``[11:15]`` utime, stime, cutime, cstime); None if it is gone."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()  # the command name may hold spaces and parentheses


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` (all its threads) and of the children it has
    reaped (a gunicorn master's replaced workers) so far; None if it is gone."""
    fields = stat_fields(pid)
    return None if fields is None else sum(int(f) for f in fields[11:15]) / _CLOCK_TICKS


def tree_cpu_seconds(pid: int) -> float:
    """`cpu_seconds` of ``pid`` and of every process below it (0 for those already gone)."""
    return sum(c for p in (pid, *descendants(pid)) if (c := cpu_seconds(p)) is not None)


class CpuMeter:
    """CPU seconds spent during a ``with`` block by this process's live descendants
    (``servers_s``) and by its children reaped within it (``reaped_s``, from ``os.times``).

    Descendants are summed at both ends, each with the children it reaped: a worker replaced
    in the window is counted through the master that reaped it; one that exits and is not
    reaped by the window's end is lost until it is.
    """

    def __init__(self) -> None:
        self.servers_s = 0.0
        self.reaped_s = 0.0
        self._servers0 = 0.0
        self._reaped0 = 0.0

    @staticmethod
    def _servers() -> float:
        return sum(c for p in descendants(os.getpid()) if (c := cpu_seconds(p)) is not None)

    @staticmethod
    def _reaped() -> float:
        t = os.times()
        return t.children_user + t.children_system

    def __enter__(self) -> CpuMeter:
        self._servers0 = self._servers()
        self._reaped0 = self._reaped()
        return self

    def __exit__(self, *exc: object) -> None:
        self.reaped_s = self._reaped() - self._reaped0
        self.servers_s = self._servers() - self._servers0


def read_dir(path: Path) -> dict[str, int]:
    """``files`` and ``bytes`` (sum of file sizes) under ``path``; zeros if it is missing."""
    files = size = 0
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            try:
                size += os.stat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:  # removed while walked
                continue
            files += 1
    return {"files": files, "bytes": size}


def sample(roots: Mapping[str, int], dirs: Mapping[str, Path]) -> dict[str, Any]:
    """One sample of every process tree in ``roots`` and every directory in ``dirs``."""
    processes: dict[str, dict[str, int]] = {}
    for role, pid in roots.items():
        for p in (pid, *descendants(pid)):
            stats = read_process(p)
            if stats is not None:
                processes[role if p == pid else f"{role}/{p}"] = stats
    return {"processes": processes, "dirs": {name: read_dir(d) for name, d in dirs.items()}}


class Sampler(Periodic):
    """`sample` every ``interval_s`` (the first at once) into ``samples``, from `start` to
    `stop`; each sample carries ``t``, seconds since `start`."""

    def __init__(
        self,
        roots: Mapping[str, int],
        *,
        dirs: Mapping[str, Path] | None = None,
        interval_s: float = 1.0,
    ):
        super().__init__(interval_s, name="procstats", first_now=True)
        self.roots = dict(roots)
        self.dirs = dict(dirs or {})
        self.samples: list[dict[str, Any]] = []
        self._t0 = 0.0

    def start(self) -> Sampler:
        """Start sampling (the clock of ``t`` starts now)."""
        self._t0 = time.monotonic()
        return super().start()

    def tick(self) -> None:
        """Take one sample."""
        record = sample(self.roots, self.dirs)
        self.samples.append({"t": round(time.monotonic() - self._t0, 3), **record})
