"""CPU accounting from /proc: per process, per PostgreSQL backend, per core.

Every figure is CPU seconds over wall seconds, so 1.0 is one whole core.

Per-process times (``/proc/PID/stat``) are exact: the kernel scales them to
the scheduler's own run time. Per-core times (``/proc/stat``) are sampled at
the timer tick, which can miss short bursts of work on a lightly loaded core;
they are shown for orientation, and "other" work (someone else's processes,
kernel threads) is counted from every process instead.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg

_TICK = os.sysconf("SC_CLK_TCK")


def _process_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (all its threads); 0 when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _all_processes() -> dict[int, float]:
    """CPU seconds of every process on the machine, by pid."""
    found: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            found[int(entry.name)] = _process_seconds(int(entry.name))
    return found


def _delta(after: dict[int, float], before: dict[int, float], skip: set[int]) -> float:
    """CPU seconds spent between two snapshots, by processes not in ``skip``.

    A process born in between counts from zero; one that died in between is lost.
    """
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items() if pid not in skip)


def _core_ticks() -> dict[str, tuple[int, int]]:
    """(busy, total) jiffies per core from /proc/stat."""
    found: dict[str, tuple[int, int]] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name != "cpu":
            numbers = [int(v) for v in values[:8]]
            idle = numbers[3] + numbers[4]  # idle + iowait
            found[name] = (sum(numbers) - idle, sum(numbers))
    return found


@dataclass(frozen=True)
class _Sample:
    wall: float
    server: float
    backends: dict[int, float]
    cores: dict[str, tuple[int, int]]
    everyone: dict[int, float]


class CpuProbe:
    """Samples server, database-backend and per-core CPU at the window's edges.

    Each figure is CPU seconds over wall seconds: 1.0 is one whole core.
    """

    def __init__(self, server_pid: int, monitor: asyncpg.Connection, database: str) -> None:
        self._server_pid = server_pid
        self._monitor = monitor
        self._database = database
        self._start: _Sample | None = None
        self.server = self.database_cpu = self.other = 0.0
        self.cores: dict[str, float] = {}

    async def _backends(self) -> dict[int, float]:
        rows = await self._monitor.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            self._database,
        )
        return {row["pid"]: _process_seconds(row["pid"]) for row in rows}

    async def __call__(self, edge: str) -> None:
        sample = _Sample(
            wall=time.perf_counter(),
            server=_process_seconds(self._server_pid),
            backends=await self._backends(),
            cores=_core_ticks(),
            everyone=_all_processes(),
        )
        if edge == "start" or self._start is None:
            self._start = sample
            return
        start = self._start
        wall = sample.wall - start.wall
        self.server = (sample.server - start.server) / wall
        self.database_cpu = (
            sum(cpu - start.backends.get(pid, 0.0) for pid, cpu in sample.backends.items()) / wall
        )
        ours = {os.getpid(), self._server_pid, *start.backends, *sample.backends}
        self.other = _delta(sample.everyone, start.everyone, ours) / wall
        for core, (busy, total) in sample.cores.items():
            busy0, total0 = start.cores.get(core, (0, 0))
            self.cores[core] = (busy - busy0) / max(1, total - total0)


async def background_busy(seconds: float = 1.0) -> dict[str, float]:
    """Per-core busy share over ``seconds`` (tick-sampled, see the module docstring)."""
    before = _core_ticks()
    await asyncio.sleep(seconds)
    after = _core_ticks()
    return {
        core: (busy - before[core][0]) / max(1, total - before[core][1])
        for core, (busy, total) in after.items()
        if core in before
    }


async def others_busy(seconds: float = 1.0) -> float:
    """CPU (share of a core) that every process but this one used over ``seconds``."""
    before = _all_processes()
    await asyncio.sleep(seconds)
    return _delta(_all_processes(), before, {os.getpid()}) / seconds
