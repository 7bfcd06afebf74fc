"""Memory per idle connection at up to 10,000 Socket.IO connections, teleconsult's /chat
against a bare python-socketio server (and Node.js socket.io).

Run: ``.venv/bin/python -m bench.idle_memory [--connections 10000] [--smoke]``.

For each target: start the server, open and close a few connections (start-up
allocations and lazy imports behind us), read the server's RSS (``VmRSS``) and PSS
(``smaps_rollup``), open ``--connections`` real connections (WebSocket upgrade,
engine.io handshake, namespace connect; for teleconsult with the access token of a
user of its own), wait ``--settle`` seconds, read again, and check every
connection is still open. The server's CPU over the settle window is what idle
connections cost (pings; teleconsult's session re-checks). The soft
``RLIMIT_NOFILE`` is raised to what the connections need (servers inherit it);
past 20,000 connections the clients spread over source addresses 127.0.0.x.

* ``teleconsult``: ``/chat``, msgpack, one user and token per connection;
* ``sio-relay``: ``bench/refs/pyref.py``, bare python-socketio (a connection joins
  its pair's room, nothing else);
* ``node-socketio``: Node.js and socket.io.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any

from bench.harness import report
from bench.harness.load import Progress, say
from bench.harness.report import Column, Row
from bench.harness.sio import SioConnection, client_session
from bench.harness.world import Lab, node_version, open_lab
from teleconsult.core.identity import Role

TARGETS = ("teleconsult", "sio-relay", "node-socketio")
WARM = 20
PER_SOURCE = 20_000  # connections per source address towards one server port
COLUMNS = (
    Column("conns", "alive", ">6d"),
    Column("RSS before", "rss_before_mib", ">10.1f"),
    Column("RSS after", "rss_after_mib", ">9.1f"),
    Column("KiB/conn", "rss_kib", ">8.1f"),
    Column("PSS KiB/conn", "pss_kib", ">12.1f"),
    Column("open s", "open_s", ">6.1f"),
    Column("idle CPU", "idle_cpu", ">8.1%"),
)


def memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes."""
    rss = pss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            pss = int(line.split()[1]) * 1024
    return rss, pss


def raise_fd_limit(connections: int) -> str:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = connections + 512
    if soft < want:
        soft = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft < want:
        raise SystemExit(f"{connections} connections need {want} fds; the hard limit is {hard}")
    return f"soft {soft}, hard {hard}"


async def bench_target(lab: Lab, name: str, tokens: list[str], args: argparse.Namespace) -> Row:
    await lab.quiet()
    if name == "teleconsult":
        server, ready = lab.teleconsult(name), "/healthz"
    elif name == "node-socketio":
        server, ready = lab.node(name), "/socket.io/?EIO=4&transport=polling"
    else:
        server, ready = lab.reference(name), "/readyz"
    sessions = [
        client_session(f"127.0.0.{1 + i}") for i in range(math.ceil(args.connections / PER_SOURCE))
    ]
    links: list[SioConnection] = []
    errors: list[str] = []
    lost = 0
    row = Row(name)

    def lose() -> None:
        nonlocal lost
        lost += 1

    async def open_many(first: int, count: int, into: list[SioConnection]) -> None:
        gate = asyncio.Semaphore(args.parallel)

        async def one(i: int) -> None:
            auth: dict[str, Any] = {"pair": i // 2}
            if name == "teleconsult":
                auth = {"token": tokens[i], "encoding": "msgpack"}
            async with gate:
                try:
                    conn = await SioConnection.open(
                        sessions[i % len(sessions)], server.base, "/chat", auth
                    )
                except Exception as exc:  # a refusal, a reset, a timeout: all counted
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
                    return
            into.append(conn)

        await asyncio.gather(*(one(first + i) for i in range(count)))

    try:
        await server.wait_http(ready)
        warm: list[SioConnection] = []
        await open_many(0, WARM, warm)
        await asyncio.gather(*(c.close() for c in warm))
        await asyncio.sleep(1.0)
        rss0, pss0 = memory(server.pid)
        began = time.monotonic()
        say(f"[{name}] opening {args.connections} connections; server pid {server.pid}")
        async with Progress(name, lambda: f"{len(links)} open, {len(errors)} failed"):
            await open_many(WARM, args.connections, links)
        row.fields["open_s"] = time.monotonic() - began
        for conn in links:
            conn.on_close = lose
        meter = lab.meter(server)
        await meter.start()
        await asyncio.sleep(args.settle)
        row.cpu = await meter.stop()
        rss1, pss1 = memory(server.pid)
        server.check_alive()
    finally:
        say(f"[{name}] closing {len(links)} connections")
        for start in range(0, len(links), 500):
            await asyncio.gather(
                *(c.close() for c in links[start : start + 500]), return_exceptions=True
            )
        for session in sessions:
            await session.close()
        server.stop()
    alive = len(links) - lost
    mib = 1024 * 1024
    row.fields.update(
        opened=len(links),
        alive=alive,
        rss_before_mib=rss0 / mib,
        rss_after_mib=rss1 / mib,
        rss_kib=(rss1 - rss0) / 1024 / alive if alive else math.nan,
        pss_kib=(pss1 - pss0) / 1024 / alive if alive else math.nan,
        idle_cpu=row.cpu.share("server") if row.cpu else math.nan,
    )
    failed = f"{len(errors)} failed" + (f", e.g. {errors[0]}" if errors else "")
    row.check(f"every connection opened ({failed})", not errors)
    row.check(f"every connection still open after {args.settle:g} s ({lost} closed)", not lost)
    return row.judge()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with open_lab("idle", args) as lab:
        lab.facts["fd_limit"] = raise_fd_limit(args.connections)
        lab.facts["node"] = node_version() if "node-socketio" in args.targets else "-"
        tokens: list[str] = []
        if "teleconsult" in args.targets:
            say(f"creating {args.connections + WARM} users with live sessions")
            tokens = [p.token for p in await lab.people(Role.PATIENT, args.connections + WARM)]
        rows = [await bench_target(lab, name, tokens, args) for name in args.targets]
        found, ratio_text = report.ratios(
            rows, "rss_kib", TARGETS[1:], higher_is_better=False, what="RSS per idle connection"
        )
        head = f"{args.connections} idle connections per target, settled {args.settle:g} s"
        text = "\n".join(x for x in (head, report.table(rows, COLUMNS), ratio_text) if x)
        return report.document("idle_memory", args, lab.facts, rows, text, ratios=found)


def main(argv: list[str] | None = None) -> int:
    p = report.parser("bench.idle_memory", __doc__, TARGETS, TARGETS[:2])
    p.add_argument("--connections", type=int, default=10_000, help="idle connections")
    p.add_argument("--parallel", type=int, default=100, help="connections opening at once")
    p.add_argument("--settle", type=report.positive, default=5.0, help="seconds idle")
    args = p.parse_args(argv)
    if args.smoke:
        args.connections, args.settle = 20, 0.3
    return report.main(lambda: run(args), args)


if __name__ == "__main__":
    sys.exit(main())
