"""Chat delivery at a fixed p99 budget: teleconsult against a raw aiohttp WebSocket
relay (the framework's ceiling) and a Node.js Socket.IO relay (what many would pick).

Run: ``.venv/bin/python -m bench.chat_delivery [--budget-ms 50] [--pairs 32]
[--targets teleconsult,aiohttp-ws,node-socketio] [--json PATH]`` (``--help``).

For each target in turn (``bench/chat_targets.py``), one invocation starts its
server pinned to core 1, opens ``--pairs`` pairs of connections from this
process pinned to core 0, and looks for the highest message rate whose
send->delivered p99 stays within the budget:

* a *step* offers ``rate`` messages a second, open loop, round-robin over every
  connection (each sends to the other end of its pair); latency runs from the
  message's *scheduled* send time to its arrival at the other end, so a server
  (or generator) that falls behind shows as latency, and a message that never
  arrives counts as infinitely late;
* a step passes when p99 <= budget and no send failed (every ack ``ok``);
* the rate doubles from ``--start-rate`` until a step fails, then bisects
  (geometric mean) until the passing and failing rates are within
  ``--resolution``; the best passing rate is run again for ``--confirm`` seconds,
  and that run is the row in the table;
* a failed step during which other processes took more than a quarter of a core
  is run again after a lull (``--retry-noisy``);
* then each reference also runs at teleconsult's rate, where none is near its
  limit, so server CPU per message compares at equal load (``--no-same-rate``).

The result is INVALID when no rate passed, when the confirming run went over
budget, or when the generator used >= 90 % of its core in the confirming run or
in the failed step that bounded the search (then the figure is the generator's
limit, shown as ``>=``: a lower bound for the server); noisy when other
processes took more than a quarter of a core. Every step prints a line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shlex
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg

from bench.api_requests import (
    _pick_cores,
    _wait_for_quiet,
    drop_database,
    machine,
)
from bench.chat_delivery_steps import Step, StepRun
from bench.chat_report import rate_ratios, result_row, step_json, steps_table, summary
from bench.chat_targets import (
    ChatFixture,
    Link,
    SioLink,
    Target,
    add_common_arguments,
    chat_fixture,
    describe,
    finish,
    make_target,
    versions,
)
from bench.cpu import CpuProbe, others_busy
from bench.report import format_table, positive
from bench.sio_client import client_session
from teleconsult.client.crypto import open_envelope
from teleconsult.messaging.envelope import from_msgpack

ms = 1e3


class Bench:
    def __init__(self, args: argparse.Namespace, probe_db: asyncpg.Connection, db: str) -> None:
        self.args = args
        self.monitor = probe_db
        self.database = db
        self.next_index = 0
        self.budget = args.budget_ms / ms

    async def step(self, target: Target, links: list[Link], rate: float, window: float) -> Step:
        args = self.args
        assert target.server is not None
        count = max(1, math.ceil(rate * (args.warmup + window)))
        run = StepRun(self.next_index, count)
        self.next_index += count
        outgoing = [target.message(j % len(links), run.base + j, args.body) for j in range(count)]
        for link in links:
            link.on_ack, link.on_delivered, link.on_lost = run.ack, run.deliver, run.lost
        result = Step(target.name, rate)
        probe = CpuProbe(target.server.pid, self.monitor, self.database)
        interval = 1.0 / rate
        t0 = time.perf_counter() + 0.05
        first = math.ceil(args.warmup * rate)  # the first message of the window
        edges = asyncio.create_task(self._edges(probe, result, t0 + first * interval, window))
        try:
            sent = 0
            while sent < count:
                now = time.perf_counter()
                due = t0 + sent * interval
                if due > now:
                    await asyncio.sleep(due - now)
                    continue
                # Everything due by now goes out in this turn of the loop.
                while sent < count and t0 + sent * interval <= now:
                    run.due[sent] = t0 + sent * interval
                    if sent >= first:
                        result.max_send_lag = max(result.max_send_lag, now - run.due[sent])
                    out = outgoing[sent]
                    await links[out.sender].send(out)
                    sent += 1
            await edges
        finally:
            edges.cancel()
        # Let the step drain: late messages still count, and must not spill into the next.
        if run.outstanding > 0 and not run.lost_links:
            try:
                await asyncio.wait_for(run.idle.wait(), args.drain)
            except TimeoutError:
                pass
        self._score(result, run, first, probe)
        return result

    @staticmethod
    async def _edges(probe: CpuProbe, result: Step, start: float, window: float) -> None:
        """CPU of generator, server and database over the measured window."""
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        await probe("start")
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.sleep(max(0.0, start + window - time.perf_counter()))
        await probe("end")
        result.wall = time.perf_counter() - wall
        result.generator_cpu = (time.process_time() - cpu) / result.wall

    def _score(self, result: Step, run: StepRun, first: int, probe: CpuProbe) -> None:
        for j in range(first, run.count):
            result.scheduled += 1
            delivered = run.delivered_at[j]
            if math.isnan(delivered):
                result.latencies.append(math.inf)
            else:
                result.delivered += 1
                result.latencies.append(delivered - run.due[j])
            acked = run.acked_at[j]
            result.ack_latencies.append(math.inf if math.isnan(acked) else acked - run.due[j])
        result.latencies.sort()
        result.ack_latencies.sort()
        result.errors = run.errors
        if run.lost_links:
            result.errors["connection_lost"] += run.lost_links
        unacked = sum(1 for a in result.ack_latencies if a == math.inf)
        if unacked:
            result.errors["unacked"] += unacked
        result.server_cpu, result.database_cpu = probe.server, probe.database_cpu
        result.other_cpu, result.cores = probe.other, dict(probe.cores)
        result.passed = result.p(99) <= self.budget and not result.errors

    async def measured(
        self, target: Target, links: list[Link], rate: float, window: float, label: str = ""
    ) -> Step:
        """A step, run again (up to ``--retry-noisy`` times) while it fails on a noisy machine."""
        for attempt in range(self.args.retry_noisy + 1):
            step = await self.step(target, links, rate, window)
            step.retries = attempt
            print(step_label(label, step.line(self.budget)), file=sys.stderr, flush=True)
            if step.passed or not step.noisy or attempt == self.args.retry_noisy:
                return step
            await _wait_for_quiet(max(self.args.quiet_wait, 5.0))
        raise AssertionError("not reached")

    async def search(self, target: Target, links: list[Link]) -> tuple[list[Step], Step | None]:
        """Every step tried, and the confirming run at the best passing rate (if any)."""
        args = self.args
        steps: list[Step] = []
        good: float | None = None
        bad: float | None = None
        rate = args.start_rate
        while len(steps) < args.max_steps:
            step = await self.measured(target, links, rate, args.duration)
            steps.append(step)
            if any(s.errors.get("connection_lost") for s in steps):
                break
            if step.passed:
                good = rate
            else:
                bad = rate
            if bad is None:
                if rate * 2 > args.max_rate:
                    break
                rate *= 2
            elif good is None:
                if rate / 2 < args.min_rate:
                    break
                rate /= 2
            elif bad / good <= 1 + args.resolution:
                break
            else:
                rate = float(round(math.sqrt(good * bad)))
        if good is None:
            return steps, None
        confirm = None
        for attempt in range(2):
            confirm = await self.measured(target, links, good, args.confirm, "confirm")
            if confirm.passed or attempt:
                break
            good = float(round(good / (1 + args.resolution)))
        return steps, confirm


def step_label(label: str, line: str) -> str:
    return line.replace("] ", f"] {label} ", 1) if label else line


async def open_links(
    target: Target, session: aiohttp.ClientSession, count: int, parallel: int = 32
) -> list[Link]:
    gate = asyncio.Semaphore(parallel)

    async def one(index: int) -> Link:
        async with gate:
            return await target.connect(session, index)

    results = await asyncio.gather(*(one(i) for i in range(count)), return_exceptions=True)
    links = [r for r in results if isinstance(r, Link)]
    failed = [r for r in results if not isinstance(r, Link)]
    if failed:
        await asyncio.gather(*(link.close() for link in links), return_exceptions=True)
        raise RuntimeError(f"{target.name}: {len(failed)} connections failed: {failed[0]!r}")
    return links


async def check_envelope(target: Target, fixture: ChatFixture, body: int) -> str:
    """Send one message on pair 0 and open it on the receiving device: the real thing."""
    session = client_session()
    got: asyncio.Future[tuple[dict[str, Any], list[bytes]]] = asyncio.Future()
    try:
        sender, receiver = await target.connect(session, 0), await target.connect(session, 1)
        assert isinstance(receiver, SioLink)

        def take(event: str, data: Any, attachments: list[bytes]) -> None:
            if event == "message" and not got.done():
                got.set_result((data, attachments))

        receiver.conn.on_event = take
        await sender.send(target.message(0, 10**14, body))
        data, attachments = await asyncio.wait_for(got, 10)
        env = from_msgpack(attachments[0], max_bytes=len(attachments[0]))
        plaintext = open_envelope(
            env,
            me=fixture.keys[1],
            my_device_id=fixture.devices[1],
            sender_signing_key=fixture.keys[0].signing_public_key,
        )
        assert plaintext == b"x" * body, "the delivered envelope did not open to what was sent"
        await sender.close()
        await receiver.close()
        return f"seq {data['seq']}, {len(attachments[0])}-byte envelope, opened and verified"
    finally:
        await session.close()


async def bench_target(
    bench: Bench,
    name: str,
    fixture: ChatFixture | None,
    cores: tuple[int, int] | None,
    same_rate: float | None,
) -> dict[str, Any]:
    """Search the target's rate at the budget; with ``same_rate`` (teleconsult's), also
    run it at that rate, so its CPU per message compares at equal load."""
    args = bench.args
    if args.quiet_wait > 0:
        await _wait_for_quiet(args.quiet_wait)
    target = make_target(name, fixture)
    notes: list[str] = []
    session = client_session()
    links: list[Link] = []
    try:
        await target.start(cores[1] if cores else None)
        if fixture is not None and name == "teleconsult":
            checked = await check_envelope(target, fixture, args.body)
            notes.append(f"one message checked end to end: {checked}")
        links = await open_links(target, session, 2 * args.pairs)
        print(f"[{name}] {len(links)} connections open", file=sys.stderr, flush=True)
        steps, confirm = await bench.search(target, links)
        same = None
        if same_rate:
            same = await bench.measured(target, links, same_rate, args.confirm, "same-rate")
        assert target.server is not None
        target.server.check_alive()
    finally:
        await asyncio.gather(*(link.close() for link in links), return_exceptions=True)
        await session.close()
        target.stop()
    return {"target": name, "steps": steps, "confirm": confirm, "same": same, "notes": notes}


# --- the run --------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    cores = _pick_cores()
    host = machine(cores)
    host.update(versions())
    host["busy_before_run"] = await others_busy()
    # teleconsult's database, also the CPU probe's window onto PostgreSQL.
    fixture = await chat_fixture(2 * args.pairs, pairs=args.pairs)
    found: list[dict[str, Any]] = []
    try:
        if cores:
            os.sched_setaffinity(0, {cores[0]})
        monitor = await asyncpg.connect(fixture.dsn)
        try:
            bench = Bench(args, monitor, fixture.dsn.rsplit("/", 1)[1])
            same_rate = None
            for name in args.targets:
                use = fixture if name == "teleconsult" else None
                found.append(await bench_target(bench, name, use, cores, same_rate))
                confirm = found[-1]["confirm"]
                if name == "teleconsult" and confirm is not None and args.same_rate:
                    same_rate = confirm.rate
        finally:
            await monitor.close()
    finally:
        await drop_database(fixture.dsn)
    budget = args.budget_ms / ms
    results = [result_row(item, budget) for item in found]
    ratios = rate_ratios(found)
    return {
        "benchmark": "chat_delivery: highest message rate with send->delivered p99 within budget",
        "command": shlex.join([sys.executable, "-m", "bench.chat_delivery", *sys.argv[1:]]),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": host,
        "params": {k: v for k, v in vars(args).items() if k != "json"},
        "results": [asdict(r) for r in results],
        "steps": [
            step_json(step, kind)
            for item in found
            for kind, steps in (
                ("search", item["steps"]),
                ("confirm", [item["confirm"]]),
                ("same-rate", [item["same"]]),
            )
            for step in steps
            if step is not None
        ],
        "ratios": ratios,
        "table": "\n\n".join(
            [
                summary(found, results, ratios, budget),
                steps_table(found),
                format_table(results, []),
            ]
        ),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chat_delivery",
        description="Chat delivery rate at a p99 budget: teleconsult vs two relays.",
    )
    parser.add_argument("--budget-ms", type=positive, default=50.0, help="send->delivered p99")
    parser.add_argument("--pairs", type=int, default=32, help="pairs of connections")
    parser.add_argument("--body", type=int, default=100, help="plaintext bytes per message")
    parser.add_argument("--start-rate", type=positive, default=200.0, help="first rate, msg/s")
    parser.add_argument("--min-rate", type=positive, default=10.0, help="lowest rate to try")
    parser.add_argument("--max-rate", type=positive, default=100_000.0, help="highest rate")
    parser.add_argument(
        "--resolution", type=positive, default=0.15, help="stop when fail/pass rates are this close"
    )
    parser.add_argument("--max-steps", type=int, default=14, help="search steps per target")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds per step")
    parser.add_argument("--duration", type=positive, default=2.0, help="measured s per step")
    parser.add_argument("--confirm", type=positive, default=5.0, help="measured s, final run")
    parser.add_argument("--drain", type=positive, default=10.0, help="wait for stragglers, s")
    add_common_arguments(parser)
    parser.add_argument(
        "--no-same-rate",
        dest="same_rate",
        action="store_false",
        help="skip running the references at teleconsult's rate (CPU per message at equal load)",
    )
    parser.add_argument(
        "--retry-noisy",
        type=int,
        default=2,
        help="run a failed step again, up to N times, when other processes were busy",
    )
    args = parser.parse_args(argv)
    if args.retry_noisy < 0:
        parser.error("--retry-noisy must be >= 0")
    if args.pairs < 1 or args.max_steps < 1 or args.body < 1:
        parser.error("--pairs, --max-steps and --body must be >= 1")
    if args.warmup < 0 or args.quiet_wait < 0:
        parser.error("--warmup and --quiet-wait must be >= 0")
    if "teleconsult" in args.targets and args.body > 64 * 1024:
        parser.error("--body: teleconsult envelopes are limited to 64 KiB")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    report = asyncio.run(run(args))
    print(describe(report["machine"]))
    print(
        f"{args.pairs} pairs ({2 * args.pairs} connections), {args.body}-byte messages, "
        f"budget p99 <= {args.budget_ms:g} ms; run took {time.monotonic() - started:.0f} s"
    )
    return finish(report, args.json)


if __name__ == "__main__":
    sys.exit(main())
