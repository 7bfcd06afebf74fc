"""CPU accounting from /proc: per process, per PostgreSQL backend, per core.

Every figure is CPU seconds over wall seconds, so 1.0 is one whole core.
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


class CpuProbe:
    """Samples server, database-backend and per-core CPU at the window's edges.

    Each figure is CPU seconds over wall seconds: 1.0 is one whole core.
    """

    def __init__(self, server_pid: int, monitor: asyncpg.Connection, database: str) -> None:
        self._server_pid = server_pid
        self._monitor = monitor
        self._database = database
        self._start: _Sample | None = None
        self.server = self.database_cpu = 0.0
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
        for core, (busy, total) in sample.cores.items():
            busy0, total0 = start.cores.get(core, (0, 0))
            self.cores[core] = (busy - busy0) / max(1, total - total0)


async def background_busy(seconds: float = 1.0) -> dict[str, float]:
    """Per-core busy share while nothing of ours runs: what else uses this machine."""
    before = _core_ticks()
    await asyncio.sleep(seconds)
    after = _core_ticks()
    return {
        core: (busy - before[core][0]) / max(1, total - before[core][1])
        for core, (busy, total) in after.items()
        if core in before
    }
