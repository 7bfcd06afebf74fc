"""CPU accounting from /proc, and where every process runs.

Figures are CPU seconds over wall seconds: 1.0 is one whole core. A
:class:`CpuMeter` samples named groups of processes (the load generator, the
server, PostgreSQL's backends of the benchmark database and its auxiliary
processes, a broker) and every core once a second, and reports each group's mean
over the window and its busiest second. ``other`` is what the cores were busy
with beyond the groups: someone else's work, the kernel.

Pinning: this process (the load generator) takes the first core, the server under
test the second (:func:`pick_cores`). :class:`PostgresPin` moves PostgreSQL's
postmaster and all its children to the generator's core for the run, so the
server under test and every reference have a core to themselves and the database
costs them the same; the original affinity is restored at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

_TICK = os.sysconf("SC_CLK_TCK")
NOISE_LIMIT = 0.25  # "other" CPU (share of a core) above which a run is noisy
# PostgreSQL processes that work for every database: counted as the benchmark's.
_PG_AUX = ("checkpointer", "background writer", "walwriter", "autovacuum launcher", "archiver")


def process_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (all its threads); 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(c) for c in (task / "children").read_text().split()]
    return found


def core_ticks() -> dict[str, tuple[int, int]]:
    """(busy, total) jiffies per core; busy leaves out idle, iowait and steal."""
    found: dict[str, tuple[int, int]] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name != "cpu":
            n = [int(v) for v in values[:8]]
            found[name] = (sum(n) - n[3] - n[4] - n[7], sum(n))
    return found


def child_named(parent: int, name: str) -> int | None:
    """The child of ``parent`` whose command is ``name`` (such as a server's own Janus)."""
    for pid in children(parent):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == name:
                return pid
    return None


def pin_threads(pid: int, core: int | None) -> None:
    """Every thread of a running ``pid`` on ``core``; threads it starts later inherit it."""
    if core is None:
        return
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task.name), {core})


@dataclass(frozen=True)
class Cores:
    generator: int
    server: int


def pick_cores() -> Cores | None:
    """The load generator's core and the server's, or None on a single core."""
    cores = sorted(os.sched_getaffinity(0))
    return Cores(cores[0], cores[1]) if len(cores) >= 2 else None


class PostgresPin:
    """PostgreSQL on the generator's core for the run; ``restore()`` puts it back."""

    def __init__(self) -> None:
        self.postmaster: int | None = None
        self._mask: set[int] | None = None
        self.note = "PostgreSQL not pinned"

    async def find(self, conn: asyncpg.Connection) -> int | None:
        """The postmaster: the parent of this connection's backend, if it runs here."""
        backend = await conn.fetchval("SELECT pg_backend_pid()")
        parent = parent_of(int(backend))
        if parent is not None and "postgres" in _title(parent):
            self.postmaster = parent
        return self.postmaster

    def pin(self, core: int) -> None:
        if self.postmaster is None:
            self.note = "PostgreSQL not pinned: its processes are not visible here"
            return
        try:
            self._mask = os.sched_getaffinity(self.postmaster)
            if self._mask <= {core}:  # a pin left by a killed run: restore every core
                self._mask = os.sched_getaffinity(1)
            self._apply({core})
        except OSError as exc:
            self._mask = None
            self.note = f"PostgreSQL not pinned: {exc.strerror} (run as root to pin it)"
            return
        self.note = f"PostgreSQL (postmaster {self.postmaster} and children) on core {core}"

    def pin_back(self) -> None:
        """Every core, whatever the mask was (after a run that could not restore it)."""
        self._mask = os.sched_getaffinity(1)
        self.restore()

    def restore(self) -> None:
        if self._mask is not None:
            self._apply(self._mask)
            self._mask = None

    def _apply(self, mask: set[int]) -> None:
        assert self.postmaster is not None
        # New backends fork from the postmaster and inherit its mask.
        os.sched_setaffinity(self.postmaster, mask)
        for pid in children(self.postmaster):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(pid, mask)


def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, UnicodeDecodeError):
        return ""


def database_pids(postmaster: int | None, database: str) -> Callable[[], list[int]]:
    """The backends of ``database`` and PostgreSQL's shared helpers (walwriter...)."""
    known: dict[int, bool] = {}

    def pids() -> list[int]:
        if postmaster is None:
            return []
        found = []
        for pid in children(postmaster):
            if pid not in known:
                title = _title(pid)
                known[pid] = f" {database} " in f"{title} " or any(a in title for a in _PG_AUX)
            if known[pid]:
                found.append(pid)
        return found

    return pids


@dataclass
class CpuReport:
    """Shares of one core over a window: each group's mean and busiest second."""

    mean: dict[str, float] = field(default_factory=dict)
    peak: dict[str, float] = field(default_factory=dict)
    cores_mean: dict[str, float] = field(default_factory=dict)
    cores_peak: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # CPU seconds per group
    wall: float = 0.0

    def share(self, group: str) -> float:
        return self.mean.get(group, 0.0)

    @property
    def noisy(self) -> bool:
        return self.share("other") > NOISE_LIMIT


@dataclass
class _Sample:
    wall: float
    groups: dict[str, dict[int, float]]
    cores: dict[str, tuple[int, int]]


class CpuMeter:
    """Samples ``groups`` (name -> pids) and the cores each ``interval``: ``start``, ``stop``.

    ``gen`` (this process) is always a group. ``last`` holds the last interval's
    shares, for the progress line.
    """

    def __init__(
        self, groups: Mapping[str, Callable[[], Iterable[int]]], interval: float = 1.0
    ) -> None:
        self._groups = {"gen": lambda: [os.getpid()], **groups}
        self._interval = interval
        self._first: _Sample | None = None
        self._prev: _Sample | None = None
        self._peaks: dict[str, float] = {}
        self._core_peaks: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self.last: dict[str, float] = {}

    def _sample(self) -> _Sample:
        groups = {
            name: {pid: process_seconds(pid) for pid in pids()}
            for name, pids in self._groups.items()
        }
        return _Sample(time.perf_counter(), groups, core_ticks())

    @staticmethod
    def _between(a: _Sample, b: _Sample) -> tuple[dict[str, float], dict[str, float], float]:
        wall = max(1e-6, b.wall - a.wall)
        seconds = {
            name: sum(cpu - a.groups[name].get(pid, 0.0) for pid, cpu in now.items())
            for name, now in b.groups.items()
        }
        cores = {
            core: (busy - a.cores.get(core, (0, 0))[0])
            / max(1, total - a.cores.get(core, (0, 0))[1])
            for core, (busy, total) in b.cores.items()
        }
        seconds["other"] = max(0.0, sum(cores.values()) * wall - sum(seconds.values()))
        return seconds, cores, wall

    def _step(self, final: bool) -> None:
        now = self._sample()
        assert self._prev is not None
        seconds, cores, wall = self._between(self._prev, now)
        if wall >= 0.5 * self._interval or not final:
            self.last = {name: cpu / wall for name, cpu in seconds.items()}
            for name, share in self.last.items():
                self._peaks[name] = max(self._peaks.get(name, 0.0), share)
            for core, share in cores.items():
                self._core_peaks[core] = max(self._core_peaks.get(core, 0.0), share)
        self._prev = now

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self._step(final=False)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        self._first = self._prev = self._sample()
        self._peaks, self._core_peaks = {}, {}
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> CpuReport:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self._step(final=True)
        assert self._first is not None and self._prev is not None
        seconds, cores, wall = self._between(self._first, self._prev)
        mean = {name: cpu / wall for name, cpu in seconds.items()}
        # A window shorter than an interval has no whole second: its mean is its peak.
        peak = {name: max(self._peaks.get(name, 0.0), share) for name, share in mean.items()}
        cores_peak = {c: max(self._core_peaks.get(c, 0.0), s) for c, s in cores.items()}
        return CpuReport(mean, peak, cores, cores_peak, seconds, wall)


async def machine_busy(seconds: float = 1.0) -> float:
    """Busy share of all cores together over ``seconds`` (1.0 = one core)."""
    before = core_ticks()
    await asyncio.sleep(seconds)
    after = core_ticks()
    return sum(
        (busy - before[c][0]) / max(1, total - before[c][1])
        for c, (busy, total) in after.items()
        if c in before
    )


async def wait_quiet(bound: float, say: Callable[[str], None]) -> float:
    """On a shared machine, wait (at most ``bound`` s) until the cores idle; their busy share."""
    began = time.monotonic()
    while True:
        busy = await machine_busy()
        if busy <= NOISE_LIMIT or time.monotonic() - began >= bound:
            say(f"machine busy {busy:.0%} of a core after {time.monotonic() - began:.0f} s wait")
            return busy
