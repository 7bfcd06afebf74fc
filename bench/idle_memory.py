"""Memory per idle connection: teleconsult's /chat against raw aiohttp WebSocket and
Node.js Socket.IO, at 10,000 connections.

Run: ``.venv/bin/python -m bench.idle_memory [--connections 10000] [--per-user 1]
[--targets teleconsult,aiohttp-ws,node-socketio] [--json PATH]`` (``--help``).

For each target in turn (``bench/chat_targets.py``), one invocation starts its
server pinned to core 1, opens and closes a few connections (so start-up
allocations and lazy imports are behind it), reads the server process's RSS
and PSS from ``/proc``, opens ``--connections`` connections from this process
(pinned to core 0), waits ``--settle`` seconds, reads them again, checks every
connection is still open, and reports the difference per connection.

The connections are real: for the Socket.IO targets the WebSocket upgrade, the
engine.io handshake and the namespace connect all completed (for teleconsult
with a real access token of a user with a live session in a fresh database,
``--per-user`` connections per user); for raw aiohttp the WebSocket upgrade.
Over the settle window the server's CPU is measured too: what idle
connections cost (pings, and for teleconsult the 30-s session re-check).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import resource
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench.api_requests import _pick_cores, _wait_for_quiet, drop_database, machine
from bench.chat_targets import (
    ChatFixture,
    Link,
    Target,
    add_common_arguments,
    chat_fixture,
    describe,
    finish,
    make_target,
    versions,
)
from bench.cpu import _process_seconds, others_busy
from bench.report import positive

WARM_CONNECTIONS = 20
# fds this process needs besides its connections (the event loop, files, the DB).
FD_SLACK = 256
# Each source address gives a connection to one server port this many local ports.
PORTS_PER_ADDRESS = 20_000


@dataclass
class Memory:
    rss: int  # bytes
    pss: int | None  # bytes; None without /proc/PID/smaps_rollup


def read_memory(pid: int) -> Memory:
    """RSS from /proc/PID/status and PSS from /proc/PID/smaps_rollup, in bytes."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    pss = None
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return Memory(rss, pss)


@dataclass
class TargetResult:
    target: str
    connections: int
    opened: int = 0
    alive: int = 0
    open_seconds: float = 0.0
    before: Memory | None = None
    after: Memory | None = None
    idle_server_cpu: float = 0.0  # share of a core over the settle window
    generator_cpu_open: float = 0.0  # share of a core while opening
    invalid: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def per_connection(self, kind: str) -> float:
        if self.before is None or self.after is None or not self.alive:
            return math.nan
        a, b = getattr(self.after, kind), getattr(self.before, kind)
        if a is None or b is None:
            return math.nan
        return float(a - b) / self.alive


def raise_fd_limit(connections: int) -> str:
    """Soft RLIMIT_NOFILE up to what ``connections`` need (servers inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = connections + FD_SLACK
    if soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    if soft < want:
        raise SystemExit(
            f"{connections} connections need {want} file descriptors here and in the server, "
            f"but the hard limit is {hard}: raise it (ulimit -Hn) or ask for fewer connections"
        )
    return f"RLIMIT_NOFILE soft {soft}, hard {hard}"


def sessions(connections: int) -> list[aiohttp.ClientSession]:
    """One client session per source address 127.0.0.x: each gives ~28k ephemeral ports
    towards one server port, so more than that needs several addresses."""
    count = max(1, math.ceil(connections / PORTS_PER_ADDRESS))
    found = []
    for i in range(count):
        connector = aiohttp.TCPConnector(
            limit=0, force_close=True, local_addr=(f"127.0.0.{1 + i}", 0) if count > 1 else None
        )
        found.append(
            aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=60),
            )
        )
    return found


async def open_many(
    target: Target,
    pool: list[aiohttp.ClientSession],
    count: int,
    parallel: int,
    links: list[Link],
    first: int = 0,
) -> list[str]:
    """Open ``count`` links into ``links``; the error of each one that failed."""
    gate = asyncio.Semaphore(parallel)
    errors: list[str] = []
    began = time.monotonic()
    shown = began

    async def one(index: int) -> None:
        nonlocal shown
        async with gate:
            try:
                link = await target.connect(pool[index % len(pool)], index)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
                return
        links.append(link)
        now = time.monotonic()
        if now - shown >= 1.0:
            shown = now
            print(
                f"[{target.name}] {len(links)}/{count} open ({now - began:.0f} s), "
                f"{len(errors)} failed",
                file=sys.stderr,
                flush=True,
            )

    await asyncio.gather(*(one(first + i) for i in range(count)))
    return errors


async def bench_target(
    name: str, fixture: ChatFixture | None, args: argparse.Namespace, cores: Any
) -> TargetResult:
    if args.quiet_wait > 0:
        await _wait_for_quiet(args.quiet_wait)
    target = make_target(name, fixture, users_per_link=args.per_user)
    result = TargetResult(name, args.connections)
    pool = sessions(args.connections)
    links: list[Link] = []
    lost = 0

    def on_lost() -> None:
        nonlocal lost
        lost += 1

    try:
        server = await target.start(cores[1] if cores else None)
        warm: list[Link] = []
        errors = await open_many(target, pool, WARM_CONNECTIONS, args.parallel, warm)
        if errors:
            raise RuntimeError(f"{name}: warm-up connections failed: {errors[0]}")
        await asyncio.gather(*(link.close() for link in warm))
        await asyncio.sleep(1.0)
        result.before = read_memory(server.pid)
        cpu, began = time.process_time(), time.monotonic()
        errors = await open_many(target, pool, args.connections, args.parallel, links)
        result.open_seconds = time.monotonic() - began
        result.generator_cpu_open = (time.process_time() - cpu) / result.open_seconds
        result.opened = len(links)
        for link in links:
            link.on_lost = on_lost
        if errors:
            result.invalid.append(f"{len(errors)} connections failed, e.g. {errors[0]}")
        print(f"[{name}] {len(links)} open; settling {args.settle:g} s", file=sys.stderr)
        server_cpu0, wall0 = _process_seconds(server.pid), time.monotonic()
        await asyncio.sleep(args.settle)
        result.idle_server_cpu = (_process_seconds(server.pid) - server_cpu0) / (
            time.monotonic() - wall0
        )
        result.after = read_memory(server.pid)
        server.check_alive()
        result.alive = len(links) - lost
        if lost:
            result.invalid.append(f"{lost} connections closed while idle")
    finally:
        print(f"[{name}] closing {len(links)} connections", file=sys.stderr, flush=True)
        for start in range(0, len(links), 500):
            await asyncio.gather(
                *(link.close() for link in links[start : start + 500]), return_exceptions=True
            )
        for session in pool:
            await session.close()
        target.stop()
    return result


def table(results: list[TargetResult]) -> str:
    mib = 1024 * 1024
    head = (
        f"{'target':<15} {'conns':>6} {'RSS before':>10} {'RSS after':>10} {'RSS/conn':>9} "
        f"{'PSS/conn':>9} {'open s':>7} {'idle CPU':>8}  valid"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        before = r.before.rss / mib if r.before else math.nan
        after = r.after.rss / mib if r.after else math.nan
        lines.append(
            f"{r.target:<15} {r.alive:>6} {before:>8.1f}Mi {after:>8.1f}Mi "
            f"{r.per_connection('rss') / 1024:>7.1f}Ki {r.per_connection('pss') / 1024:>7.1f}Ki "
            f"{r.open_seconds:>7.1f} {r.idle_server_cpu:>8.1%}  "
            f"{'INVALID' if r.invalid else 'yes'}"
        )
    for r in results:
        for reason in r.invalid:
            lines.append(f"  ! {r.target}: {reason}")
        for note in r.notes:
            lines.append(f"  - {r.target}: {note}")
    by_name = {r.target: r for r in results}
    tc = by_name.get("teleconsult")
    ratios = [
        (ref, tc.per_connection("rss") / by_name[ref].per_connection("rss"))
        for ref in ("aiohttp-ws", "node-socketio")
        if tc is not None and ref in by_name
    ]
    if ratios:
        lines.append("")
        lines.append("memory per idle connection (RSS), ratios:")
        for ref, ratio in ratios:
            lines.append(f"  teleconsult / {ref:<14} x{ratio:.2f}")
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    limits = raise_fd_limit(args.connections)
    cores = _pick_cores()
    host = machine(cores)
    host.update(versions())
    host["fd_limit"] = limits
    host["busy_before_run"] = await others_busy()
    fixture: ChatFixture | None = None
    if "teleconsult" in args.targets:
        users = math.ceil(args.connections / args.per_user) + WARM_CONNECTIONS
        print(f"creating {users} users with live sessions", file=sys.stderr, flush=True)
        fixture = await chat_fixture(users)
    results = []
    try:
        if cores:
            os.sched_setaffinity(0, {cores[0]})
        for name in args.targets:
            results.append(await bench_target(name, fixture, args, cores))
    finally:
        if fixture is not None:
            await drop_database(fixture.dsn)
    return {
        "benchmark": "idle_memory: server memory per idle connection",
        "command": shlex.join([sys.executable, "-m", "bench.idle_memory", *sys.argv[1:]]),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": host,
        "params": {k: v for k, v in vars(args).items() if k != "json"},
        "results": [
            {
                **asdict(r),
                "rss_per_connection": r.per_connection("rss"),
                "pss_per_connection": r.per_connection("pss"),
            }
            for r in results
        ],
        "table": table(results),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.idle_memory",
        description="Server memory per idle connection: teleconsult vs aiohttp and Node.js.",
    )
    parser.add_argument("--connections", type=int, default=10_000, help="idle connections")
    parser.add_argument(
        "--per-user", type=int, default=1, help="teleconsult: connections sharing one user"
    )
    parser.add_argument("--parallel", type=int, default=100, help="connections opening at once")
    parser.add_argument("--settle", type=positive, default=5.0, help="seconds idle before reading")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    if min(args.connections, args.per_user, args.parallel) < 1:
        parser.error("--connections, --per-user and --parallel must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    report = asyncio.run(run(args))
    print(describe(report["machine"]))
    print(
        f"{args.connections} idle connections per target, teleconsult {args.per_user} "
        f"per user; run took {time.monotonic() - started:.0f} s"
    )
    return finish(report, args.json)


if __name__ == "__main__":
    sys.exit(main())
