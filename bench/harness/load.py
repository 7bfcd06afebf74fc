"""The load generator's core: an open-loop schedule with its send lag, closed-loop
workers for HTTP, and the progress line every second.

Open loop: request ``i`` is due at ``t0 + i / rate`` whatever the server does;
latency is measured from that *due* time, so a server (or a generator) that falls
behind shows as latency instead of being hidden by coordinated omission. The
*send lag* is how late each due send actually went out: a generator whose lag
p99 passes :data:`SEND_LAG_LIMIT`, or whose busiest second passes
:data:`GENERATOR_LIMIT` of a core, measured itself, and the row is INVALID.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp

from bench.harness.cpu import CpuMeter, CpuReport
from bench.harness.latency import Recorder

GENERATOR_LIMIT = 0.90  # busiest second of the generator, share of a core
SEND_LAG_LIMIT = 0.005  # p99 of how late the generator's sends left, seconds
MAX_ERROR_SAMPLES = 5


def say(text: str) -> None:
    """Progress goes to stderr; the tables go to stdout."""
    print(text, file=sys.stderr, flush=True)


class Progress:
    """One line a second on stderr: ``text()`` and the last second's CPU by group."""

    def __init__(self, label: str, text: Callable[[], str], meter: CpuMeter | None = None) -> None:
        self.label, self.text, self.meter = label, text, meter
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        began, cpu, wall = time.perf_counter(), time.process_time(), time.perf_counter()
        while True:
            await asyncio.sleep(1.0)
            now_cpu, now = time.process_time(), time.perf_counter()
            shares = dict(self.meter.last) if self.meter is not None else {}
            shares.setdefault("gen", (now_cpu - cpu) / (now - wall))
            cpu_text = " ".join(f"{k} {v:.0%}" for k, v in shares.items())
            say(f"[{self.label}] t={now - began:5.1f}s {self.text()} | cpu {cpu_text}")
            cpu, wall = now_cpu, now

    async def __aenter__(self) -> Progress:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


@dataclass
class Schedule:
    """An open-loop run: when each send was due, how late the measured ones left."""

    rate: float
    count: int
    first: int  # the first measured send; those before are the warm-up
    t0: float = 0.0
    sent: int = 0
    lag: Recorder = field(default_factory=Recorder)
    stopped_early: bool = False
    cpu: CpuReport | None = None

    def due(self, index: int) -> float:
        return self.t0 + index / self.rate


Send = Callable[[int, float], Awaitable[None] | None]  # (index, due time)


async def open_loop(
    rate: float,
    seconds: float,
    warmup: float,
    send: Send,
    *,
    meter: CpuMeter | None = None,
    stop: Callable[[], bool] | None = None,
    t0: float | None = None,
) -> Schedule:
    """Call ``send(i, due)`` on schedule for ``warmup + seconds``; CPU over the measured part.

    ``stop()``, asked before each batch of sends, ends the run early.
    """
    first = math.ceil(warmup * rate)
    plan = Schedule(rate, max(first + 1, math.ceil((warmup + seconds) * rate)), first)
    plan.t0 = t0 if t0 is not None else time.perf_counter() + 0.05
    edges = asyncio.create_task(_edges(plan, meter)) if meter is not None else None
    try:
        while plan.sent < plan.count:
            now = time.perf_counter()
            if plan.due(plan.sent) > now:
                await asyncio.sleep(plan.due(plan.sent) - now)
                continue
            if stop is not None and stop():
                plan.stopped_early = True
                break
            # Everything due by now goes out in this turn of the loop.
            while plan.sent < plan.count and plan.due(plan.sent) <= now:
                due = plan.due(plan.sent)
                if plan.sent >= first:
                    plan.lag.record(time.perf_counter() - due)
                done = send(plan.sent, due)
                if inspect.isawaitable(done):
                    await done
                plan.sent += 1
        if edges is not None and not plan.stopped_early:
            await edges
    finally:
        if edges is not None and not edges.done():
            edges.cancel()
            await asyncio.gather(edges, return_exceptions=True)
        if meter is not None and meter.running:  # stopped early: CPU up to the stop
            plan.cpu = await meter.stop()
    return plan


async def _edges(plan: Schedule, meter: CpuMeter) -> None:
    await asyncio.sleep(max(0.0, plan.due(plan.first) - time.perf_counter()))
    await meter.start()
    await asyncio.sleep(max(0.0, plan.due(plan.count) - time.perf_counter()))
    plan.cpu = await meter.stop()


class Refused(Exception):
    """A request that did not succeed: ``kind`` is counted, ``detail`` sampled."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail = kind, detail


@dataclass
class Driven:
    """What an HTTP run measured: the window's latencies and every outcome."""

    latency: Recorder = field(default_factory=Recorder)
    errors: Counter[str] = field(default_factory=Counter)  # in the window
    samples: list[str] = field(default_factory=list)
    completed: int = 0  # successes that finished inside the window
    succeeded: int = 0  # every success, warm-up included
    failed: int = 0
    unfinished: int = 0  # still waiting at the bound
    lag: Recorder | None = None  # open loop only
    cpu: CpuReport | None = None
    wall: float = 0.0

    @property
    def rate(self) -> float:
        return self.completed / self.wall if self.wall else 0.0


Attempt = Callable[[aiohttp.ClientSession, int], Awaitable[None]]  # raises Refused


async def drive_http(
    attempt: Attempt,
    label: str,
    meter: CpuMeter,
    *,
    concurrency: int,
    warmup: float,
    duration: float,
    rate: float | None = None,
    request_timeout: float = 10.0,
) -> Driven:
    """Closed loop (``concurrency`` workers) or, with ``rate``, open loop over aiohttp."""
    out = Driven(wall=duration)
    t0 = time.perf_counter() + 0.05
    window = (t0 + warmup, t0 + warmup + duration)
    if rate is not None:  # exactly the schedule's measured part
        window = (
            t0 + math.ceil(warmup * rate) / rate,
            t0 + math.ceil((warmup + duration) * rate) / rate,
        )
    live: list[float] = []
    counter = iter(range(1 << 62))

    async def one(http: aiohttp.ClientSession, origin: float) -> None:
        index, error, detail = next(counter), "", ""
        try:
            async with asyncio.timeout(request_timeout):
                await attempt(http, index)
        except Refused as exc:
            error, detail = exc.kind, exc.detail
        except TimeoutError:
            error = "timeout"
        except (aiohttp.ClientError, OSError) as exc:
            error, detail = type(exc).__name__, str(exc)
        done = time.perf_counter()
        counted = window[0] <= origin < window[1]
        if rate is None:
            counted = counted and done <= window[1]
        if error:
            out.failed += 1
            out.errors[error] += counted
            if len(out.samples) < MAX_ERROR_SAMPLES:
                out.samples.append(f"#{index}: {error}: {' '.join(detail.split())[:300]}")
            return
        out.succeeded += 1
        live.append(done - origin)
        out.completed += window[0] <= done <= window[1]
        if counted:
            out.latency.record(done - origin)

    def text() -> str:
        got = sorted(live)
        live.clear()
        p99 = got[min(len(got) - 1, int(0.99 * len(got)))] * 1e3 if got else math.nan
        return f"{len(got):6d} answers, p99 {p99:7.2f} ms, failed {out.failed}"

    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        Progress(label, text, meter),
    ):
        tasks: set[asyncio.Task[None]] = set()
        if rate is None:

            async def worker() -> None:
                while time.perf_counter() < window[1]:
                    await one(http, time.perf_counter())

            tasks = {asyncio.create_task(worker()) for _ in range(concurrency)}
            await asyncio.sleep(max(0.0, window[0] - time.perf_counter()))
            await meter.start()
            await asyncio.sleep(max(0.0, window[1] - time.perf_counter()))
            out.cpu = await meter.stop()
        else:

            def send(i: int, due: float) -> None:
                task = asyncio.create_task(one(http, due))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

            plan = await open_loop(rate, duration, warmup, send, meter=meter, t0=t0)
            out.lag, out.cpu = plan.lag, plan.cpu
        pending = {t for t in tasks if not t.done()}
        if pending:
            _, pending = await asyncio.wait(pending, timeout=request_timeout + 1.0)
        out.unfinished = len(pending)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if out.cpu is not None:
        out.wall = out.cpu.wall
    return out


def pin_self(core: int | None) -> None:
    if core is not None:
        os.sched_setaffinity(0, {core})
