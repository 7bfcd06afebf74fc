"""An HTTP load generator on aiohttp's client: closed loop and open loop.

Closed loop: ``concurrency`` workers each send a request, wait for the answer
and send the next; latency is send-to-answer. Open loop: requests are sent on
a fixed schedule of ``rate`` per second whatever the server does, and latency
is measured from the *scheduled* send time, so a server (or a generator) that
falls behind shows up as queueing instead of being hidden by coordinated
omission.

Both count only what falls in the measured window (after the warm-up), report
the generator's own CPU time over that window, and always stop: no new request
after the window, and what is still in flight is abandoned after the request
timeout.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

# The generator is suspect when it needs this much of a core itself.
GENERATOR_CPU_LIMIT = 0.90


@dataclass(frozen=True)
class LoadSpec:
    url: str
    headers: Sequence[dict[str, str]]  # cycled through, one per request
    concurrency: int
    warmup: float
    duration: float
    rate: float | None = None  # None: closed loop
    timeout: float = 10.0


@dataclass
class Window:
    """What one load run measured."""

    mode: str
    latencies: list[float] = field(default_factory=list)  # seconds, successes only
    errors: Counter[str] = field(default_factory=Counter)
    wall: float = 0.0
    generator_cpu: float = 0.0  # share of one core
    completed: int = 0  # successful answers that arrived inside the window
    scheduled: int = 0  # open loop: requests due in the window
    max_send_lag: float = 0.0  # open loop: worst lateness of the generator's own sends

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (``q`` in 0..100)."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


class _Live:
    """Per-second counters for the progress line."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors = 0

    def take(self) -> tuple[list[float], int]:
        taken, errors = self.latencies, self.errors
        self.latencies, self.errors = [], 0
        return taken, errors


class _Run:
    def __init__(self, spec: LoadSpec, label: str) -> None:
        self.spec = spec
        self.label = label
        self.live = _Live()
        self.window = Window(mode="closed" if spec.rate is None else "open")
        self.started = time.perf_counter()
        self.measure_from = self.started + spec.warmup
        self.measure_to = self.measure_from + spec.duration
        self._next_header = 0

    def headers(self) -> dict[str, str]:
        headers = self.spec.headers[self._next_header % len(self.spec.headers)]
        self._next_header += 1
        return headers

    async def request(self, session: aiohttp.ClientSession, origin: float) -> None:
        """One request; ``origin`` is when latency starts (send or scheduled time)."""
        error: str | None = None
        try:
            async with session.get(self.spec.url, headers=self.headers()) as resp:
                await resp.read()
                if resp.status != 200:
                    error = f"HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = type(exc).__name__
        done = time.perf_counter()
        in_window = origin >= self.measure_from and done <= self.measure_to
        if self.window.mode == "open":
            # Everything scheduled in the window counts, however late it came back.
            in_window = self.measure_from <= origin < self.measure_to
        if error is None:
            if self.measure_from <= done <= self.measure_to:
                self.window.completed += 1
            self.live.latencies.append(done - origin)
            if in_window:
                self.window.latencies.append(done - origin)
        else:
            self.live.errors += 1
            if in_window:
                self.window.errors[error] += 1

    async def progress(self) -> None:
        """Print one line a second to stderr until cancelled."""
        cpu = time.process_time()
        wall = time.perf_counter()
        while True:
            await asyncio.sleep(1.0)
            now_cpu, now = time.process_time(), time.perf_counter()
            latencies, errors = self.live.take()
            latencies.sort()
            phase = "warm-up" if now < self.measure_from else "measure"
            print(
                f"[{self.label}] {phase} t={now - self.started:5.1f}s "
                f"{len(latencies) / (now - wall):8.0f} req/s  "
                f"p50 {percentile(latencies, 50) * 1e3:6.2f} ms  "
                f"p99 {percentile(latencies, 99) * 1e3:7.2f} ms  "
                f"errors {errors}  gen cpu {(now_cpu - cpu) / (now - wall):4.0%}",
                file=sys.stderr,
                flush=True,
            )
            cpu, wall = now_cpu, now

    async def closed(self, session: aiohttp.ClientSession) -> None:
        async def worker() -> None:
            while time.perf_counter() < self.measure_to:
                await self.request(session, time.perf_counter())

        await self._measured(*(worker() for _ in range(self.spec.concurrency)))

    async def open(self, session: aiohttp.ClientSession) -> None:
        assert self.spec.rate is not None
        interval = 1.0 / self.spec.rate
        pending: set[asyncio.Task[None]] = set()

        async def schedule() -> None:
            sent = 0
            while True:
                due = self.started + sent * interval
                if due >= self.measure_to:
                    break
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                if due >= self.measure_from:
                    lag = time.perf_counter() - due
                    self.window.max_send_lag = max(self.window.max_send_lag, lag)
                task = asyncio.create_task(self.request(session, due))
                pending.add(task)
                task.add_done_callback(pending.discard)
                if due >= self.measure_from:
                    self.window.scheduled += 1
                sent += 1
            if pending:
                await asyncio.wait(set(pending))

        try:
            await self._measured(schedule())
        finally:
            if pending:
                # Requests abandoned at the bound never answered: they are errors.
                self.window.errors["unfinished"] += len(pending)
                abandoned = set(pending)
                for task in abandoned:
                    task.cancel()
                await asyncio.gather(*abandoned, return_exceptions=True)

    async def _measured(self, *jobs: Coroutine[Any, Any, None]) -> None:
        """Run ``jobs``, sampling CPU over the window; give up a timeout after it."""
        tasks = [asyncio.create_task(job) for job in jobs]
        ticker = asyncio.create_task(self.progress())
        sampler = asyncio.create_task(self._sample_cpu())
        try:
            bound = self.measure_to - time.perf_counter() + self.spec.timeout + 1.0
            done, _ = await asyncio.wait(tasks, timeout=bound)
            for task in done:
                task.result()  # a bug in a job surfaces here
            await sampler
        finally:
            for task in (*tasks, ticker, sampler):
                task.cancel()
            await asyncio.gather(*tasks, ticker, sampler, return_exceptions=True)

    async def _sample_cpu(self) -> None:
        await asyncio.sleep(max(0.0, self.measure_from - time.perf_counter()))
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.sleep(max(0.0, self.measure_to - wall))
        self.window.wall = time.perf_counter() - wall
        self.window.generator_cpu = (time.process_time() - cpu) / self.window.wall


async def run_load(
    spec: LoadSpec,
    label: str,
    on_window: Callable[[str], Awaitable[None]] | None = None,
) -> Window:
    """Drive ``spec.url`` and return the measured window.

    ``on_window("start"|"end")`` is awaited at the window's edges, for whoever
    wants to sample the server's CPU over the same interval.
    """
    run = _Run(spec, label)
    connector = aiohttp.TCPConnector(limit=spec.concurrency, limit_per_host=spec.concurrency)
    timeout = aiohttp.ClientTimeout(total=spec.timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        edges = asyncio.create_task(_edges(run, on_window)) if on_window else None
        try:
            if spec.rate is None:
                await run.closed(session)
            else:
                await run.open(session)
            if edges is not None:
                await edges
        finally:
            if edges is not None and not edges.done():
                edges.cancel()
                await asyncio.gather(edges, return_exceptions=True)
    run.window.latencies.sort()
    return run.window


async def _edges(run: _Run, on_window: Callable[[str], Awaitable[None]]) -> None:
    await asyncio.sleep(max(0.0, run.measure_from - time.perf_counter()))
    await on_window("start")
    await asyncio.sleep(max(0.0, run.measure_to - time.perf_counter()))
    await on_window("end")
