"""Chat over MQTT through teleconsult's bridge against Mosquitto alone.

Run: ``.venv/bin/python -m bench.mqtt_path [--rates 20,100] [--budget-ms 50] [--pairs 16]
[--targets mosquitto,teleconsult-mosquitto,teleconsult-amqtt] [--nagle] [--profile DIR]
[--quiet-wait S] [--json PATH]`` (``--help`` for the rest).

One invocation makes a fresh database with ``2 * --pairs`` signed-in users, one
device each and a direct thread per pair, then runs the targets of
``bench/mqtt_targets.py`` one after the other: the broker (and the server)
pinned to one core, the devices -- aiomqtt clients in this process -- on the
other. Users ``2k`` and ``2k + 1`` talk to each other; every message goes from
one device to the other end of its pair, round-robin over all devices.

For each target:

* **fixed rates** -- each of ``--rates`` messages a second (a light load and a
  moderate one by default), open loop, for ``--duration`` seconds:
  send->delivered latency (p50, p99, max) from each message's *scheduled* send
  time to its arrival in the recipient's inbox, so a broker or server that
  falls behind shows as latency (a message that never comes counts as
  infinitely late); for the project also send->ack (the server's ack on
  ``/ack``, published after the inboxes);
* **highest rate within the budget** -- steps of ``--step`` seconds, the rate
  doubling from ``--start-rate`` until a step's p99 goes over ``--budget-ms`` (or a
  message is lost or refused), then bisected to ``--resolution``; the best
  passing rate runs again for ``--confirm`` seconds, and that run is the row.
  A step is cut short once 1 % of its window arrived late or a message is
  stuck, and waits for the backlog to clear before the next.

A row is INVALID when the generator (this process) used >= 90 % of its core
in that run, or, for the highest rate, in the step that bounded the search:
the figure is then the generator's, a lower bound for the target (also said,
with ``>=``, when the generator was merely busier than the target there). It is
noisy when processes other than the generator, server, broker and database
took more than a quarter of a core. ``--profile DIR`` runs each teleconsult
target once more at its highest rate with py-spy on the server
(``bench/pyspy.py``); that run is not in the tables.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shlex
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import msgpack

from bench.api_requests import _pick_cores, _wait_for_quiet, drop_database, machine
from bench.chat_targets import ChatFixture, chat_fixture, index_of
from bench.cpu import others_busy
from bench.mqtt_runs import Probe, Run, Window, ratio_text, ratios, tables, verdict
from bench.mqtt_targets import (
    DEFAULT_TARGETS,
    TARGETS,
    MqttLink,
    MqttTarget,
    Publish,
    TeleconsultMqtt,
    make_target,
    sample_request,
    versions,
)
from bench.pyspy import Profile, profile_text
from bench.report import positive, target_list
from teleconsult.client.crypto import open_envelope
from teleconsult.messaging.envelope import from_msgpack

ms = 1e3
LATE_SHARE = 0.01  # a search step is over once this share of its window arrived late


class Bench:
    def __init__(self, args: argparse.Namespace, monitor: asyncpg.Connection, db: str) -> None:
        self.args = args
        self.monitor = monitor
        self.database = db
        self.budget = args.budget_ms / ms
        self.next_index = 1  # message 0 is the readiness probe's
        self.runs: list[Run] = []
        self.profiles: dict[str, dict[str, Any]] = {}

    async def window(
        self,
        target: MqttTarget,
        links: list[MqttLink],
        rate: float,
        seconds: float,
        kind: str,
        profile: Path | None = None,
    ) -> Run:
        args = self.args
        count = max(1, math.ceil(rate * (args.warmup + seconds)))
        first = math.ceil(args.warmup * rate)
        base, self.next_index = self.next_index, self.next_index + count
        # Sealing is the sender's work, done before the clock starts.
        outgoing = [target.message(j % len(links), base + j, args.body) for j in range(count)]
        result = Run(target.name, kind, rate, scheduled=count - first)
        w = Window(result, base, count, first, self.budget, acks=target.acks)
        for link in links:
            link.on_delivered, link.on_ack = w.deliver, w.ack
        probe = Probe(target, self.monitor, self.database, result)
        interval = 1.0 / rate
        t0 = time.perf_counter() + 0.05
        spy_on = (target.server_pid, profile) if profile is not None else None
        edges = asyncio.create_task(self._edges(probe, t0 + first * interval, seconds, spy_on))
        late_limit = max(3, LATE_SHARE * (count - first))
        stall = max(1.0, 10 * self.budget)
        sent = oldest = 0
        try:
            while sent < count:
                now = time.perf_counter()
                if now < t0 + sent * interval:
                    await asyncio.sleep(t0 + sent * interval - now)
                    continue
                while oldest < sent and w.arrived[oldest]:
                    oldest += 1
                stalled = oldest < sent and now - w.due[oldest] > stall
                if kind == "search" and (w.late > late_limit or stalled):
                    result.stopped_early = True
                    break
                while sent < count and t0 + sent * interval <= now:
                    w.due[sent] = due = t0 + sent * interval
                    if sent >= first:
                        result.max_send_lag = max(result.max_send_lag, now - due)
                    out: Publish = outgoing[sent]
                    rc = links[out.sender].send(out)
                    if rc:
                        result.errors[f"publish_rc_{rc}"] += 1
                    sent += 1
            if result.stopped_early:
                edges.cancel()
                result.scheduled = max(0, sent - first)
                if probe.started:  # CPU up to the stop: was the generator the limit?
                    await probe("end")
            else:
                spy = await edges
                if spy is not None:
                    self.profiles[target.name] = spy
        finally:
            edges.cancel()
        await self._drain(w, sent)
        if target.acks and result.acked < result.scheduled:
            result.errors["unacked"] += result.scheduled - result.acked
        self._judge(result)
        self.runs.append(result)
        print(result.line(), file=sys.stderr, flush=True)
        return result

    @staticmethod
    async def _edges(
        probe: Probe, start: float, seconds: float, spy_on: tuple[int, Path] | None
    ) -> dict[str, Any] | None:
        """CPU over the measured window (and py-spy on the server, if asked)."""
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        await probe("start")
        spy = Profile(spy_on[0], seconds, spy_on[1]) if spy_on is not None else None
        await asyncio.sleep(max(0.0, start + seconds - time.perf_counter()))
        await probe("end")
        return await spy.finish() if spy is not None else None

    async def _drain(self, w: Window, sent: int) -> None:
        """Wait for stragglers (they count); then for quiet, so none spill into the next run."""
        w.outstanding -= w.per_message * (w.count - sent)  # never sent
        if w.outstanding <= 0:
            return
        try:
            await asyncio.wait_for(w.idle.wait(), self.args.drain)
        except TimeoutError:
            for _ in range(math.ceil(self.args.drain / 0.2)):
                if time.perf_counter() - w.last_arrival >= 1.0:
                    break
                await asyncio.sleep(0.2)

    def _judge(self, r: Run) -> None:
        r.passed = (
            not r.stopped_early and not r.errors and r.scheduled > 0 and r.p(99) <= self.budget
        )

    async def measured(
        self, target: MqttTarget, links: list[MqttLink], rate: float, seconds: float, kind: str
    ) -> Run:
        """A run, again (up to ``--retry-noisy`` times) while it fails on a noisy machine."""
        for attempt in range(self.args.retry_noisy + 1):
            run = await self.window(target, links, rate, seconds, kind)
            run.retries = attempt
            if run.passed or not run.noisy or attempt == self.args.retry_noisy:
                return run
            await _wait_for_quiet(max(self.args.quiet_wait, 5.0))
        raise AssertionError("not reached")

    async def highest_rate(
        self, target: MqttTarget, links: list[MqttLink]
    ) -> tuple[Run | None, Run | None]:
        """(the confirming run at the best passing rate, the step that bounded the search)."""
        args = self.args
        good: Run | None = None
        bad: Run | None = None
        rate = args.start_rate
        for _ in range(args.max_steps):
            step = await self.measured(target, links, rate, args.step, "search")
            if step.passed:
                good = step
            else:
                bad = step if bad is None or step.rate < bad.rate else bad
            if bad is None:
                rate *= 2
                if rate > args.max_rate:
                    break
            elif good is None:
                rate /= 2
                if rate < args.min_rate:
                    break
            elif bad.rate / good.rate <= 1 + args.resolution:
                break
            else:
                rate = float(round(math.sqrt(good.rate * bad.rate)))
        if good is None:
            return None, bad
        confirm = await self.measured(target, links, good.rate, args.confirm, "confirm")
        if not confirm.passed:
            lower = float(round(good.rate / (1 + args.resolution)))
            confirm = await self.measured(target, links, lower, args.confirm, "confirm")
        return confirm, bad


# --- one target -----------------------------------------------------------------------


async def open_links(target: MqttTarget, count: int) -> list[MqttLink]:
    gate = asyncio.Semaphore(16)

    async def one(index: int) -> MqttLink:
        async with gate:
            return await target.connect(index)

    found = await asyncio.gather(*(one(i) for i in range(count)), return_exceptions=True)
    links = [x for x in found if isinstance(x, MqttLink)]
    failed = [x for x in found if not isinstance(x, MqttLink)]
    if failed:
        await asyncio.gather(*(link.close() for link in links))
        raise RuntimeError(f"{target.name}: {len(failed)} devices could not connect: {failed[0]!r}")
    return links


async def check_one_message(
    target: TeleconsultMqtt, links: list[MqttLink], body: int, index: int
) -> str:
    """Device 0 sends message ``index``; device 1 opens and verifies what its inbox got."""
    fixture = target.fixture
    await target.wait_bridged(links[0], fixture.user_ids[0])
    loop = asyncio.get_running_loop()
    acked: asyncio.Future[str | None] = loop.create_future()
    got: asyncio.Future[bytes] = loop.create_future()
    out = target.message(0, index, body)

    def take(topic: str, payload: bytes | bytearray) -> None:
        if topic.endswith("/inbox") and not got.done():
            got.set_result(bytes(payload))

    def answer(answered: int, error: str | None) -> None:
        if answered == index and not acked.done():
            acked.set_result(error)

    links[0].on_ack, links[1].on_frame = answer, take
    try:
        links[0].send(out)
        async with asyncio.timeout(30):
            error = await acked
            if error is not None:
                raise RuntimeError(f"{target.name}: the server refused a message: {error}")
            frame = msgpack.unpackb(await got, raw=False)
    finally:
        links[1].on_frame = None
    data = frame["data"]
    raw = data["envelope"]
    plaintext = open_envelope(
        from_msgpack(raw, max_bytes=len(raw)),
        me=fixture.keys[1],
        my_device_id=fixture.devices[1],
        sender_signing_key=fixture.keys[0].signing_public_key,
    )
    assert plaintext == b"x" * body and index_of(data["client_msg_id"]) == index
    return (
        f"seq {data['seq']}: request {len(out.payload)} B, {len(raw)}-byte envelope, "
        "opened and verified by the recipient"
    )


async def bench_target(
    bench: Bench, name: str, fixture: ChatFixture, cores: tuple[int, int] | None, payload: int
) -> dict[str, Any]:
    args = bench.args
    if args.quiet_wait > 0:
        await _wait_for_quiet(args.quiet_wait)
    target = make_target(name, fixture, payload, nodelay=not args.nagle)
    notes: list[str] = []
    links: list[MqttLink] = []
    try:
        await target.start(cores[1] if cores else None)
        links = await open_links(target, 2 * args.pairs)
        if isinstance(target, TeleconsultMqtt):
            bench.next_index += 1  # client message ids are never reused across targets
            checked = await check_one_message(target, links, args.body, bench.next_index - 1)
            notes.append(checked)
        print(f"[{name}] {len(links)} devices connected", file=sys.stderr, flush=True)
        fixed = [
            await bench.measured(target, links, rate, args.duration, "fixed") for rate in args.rates
        ]
        confirm, bound = (None, None)
        if not args.no_search:
            confirm, bound = await bench.highest_rate(target, links)
        if args.profile is not None and isinstance(target, TeleconsultMqtt):
            rate = confirm.rate if confirm is not None else args.rates[-1]
            path = args.profile / f"mqtt-{name}.txt"
            await bench.window(target, links, rate, args.profile_seconds, "profiled", path)
        target.check_alive()
    finally:
        await asyncio.gather(*(link.close() for link in links))
        target.stop()
    return {"target": name, "fixed": fixed, "confirm": confirm, "bound": bound, "notes": notes}


# --- the run --------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    assert main_task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, main_task.cancel)
    cores = _pick_cores()
    host = machine(cores)
    host.update(versions())
    host["busy_before_run"] = await others_busy()
    payload = len(sample_request(args.body))
    host["request_bytes"] = payload
    fixture = await chat_fixture(2 * args.pairs, pairs=args.pairs)
    found: list[dict[str, Any]] = []
    bench: Bench | None = None
    try:
        if cores:
            os.sched_setaffinity(0, {cores[0]})
        monitor = await asyncpg.connect(fixture.dsn)
        try:
            bench = Bench(args, monitor, fixture.dsn.rsplit("/", 1)[1])
            for name in args.targets:
                found.append(await bench_target(bench, name, fixture, cores, payload))
        finally:
            await monitor.close()
    finally:
        await drop_database(fixture.dsn)
    judged = [verdict(item, args) for item in found]
    found_ratios = ratios(found, judged)
    profiles = bench.profiles if bench is not None else {}
    return {
        "benchmark": "mqtt_path: chat over MQTT through teleconsult's bridge vs Mosquitto alone",
        "command": shlex.join([sys.executable, "-m", "bench.mqtt_path", *sys.argv[1:]]),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": host,
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "results": [
            {
                "target": item["target"],
                **v,
                "fixed": [r.as_json() for r in item["fixed"]],
                **{k: _run_json(item[k]) for k in ("confirm", "bound")},
            }
            for item, v in zip(found, judged, strict=True)
        ],
        "runs": [r.as_json() for r in bench.runs] if bench is not None else [],
        "ratios": _finite(found_ratios),
        "profiles": profiles,
        "table": tables(found, judged, args) + ratio_text(found_ratios),
    }


def _run_json(r: Run | None) -> dict[str, Any] | None:
    return r.as_json() if r is not None else None


def _finite(value: Any) -> Any:
    """Infinite or NaN figures (nothing arrived) as JSON null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def rate_list(text: str) -> list[float]:
    """argparse type: comma-separated rates > 0."""
    return [positive(part) for part in text.split(",") if part.strip()] or [positive(text)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.mqtt_path",
        description="Chat over MQTT: teleconsult's bridge against Mosquitto alone.",
    )
    parser.add_argument(
        "--rates", type=rate_list, default=[20.0, 100.0], help="fixed rates, msg/s (20,100)"
    )
    parser.add_argument("--start-rate", type=positive, default=100.0, help="search from, msg/s")
    parser.add_argument("--duration", type=positive, default=4.0, help="fixed-rate window, s")
    parser.add_argument("--budget-ms", type=positive, default=50.0, help="p99 budget of the search")
    parser.add_argument("--pairs", type=int, default=16, help="pairs of users, one device each")
    parser.add_argument("--body", type=int, default=100, help="plaintext bytes per message")
    parser.add_argument("--step", type=positive, default=1.5, help="measured s per search step")
    parser.add_argument("--confirm", type=positive, default=3.0, help="measured s, final run")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured s before each run")
    parser.add_argument("--drain", type=positive, default=3.0, help="wait for stragglers, s")
    parser.add_argument("--min-rate", type=positive, default=10.0, help="lowest rate to try")
    parser.add_argument("--max-rate", type=positive, default=50_000.0, help="highest rate")
    parser.add_argument(
        "--resolution", type=positive, default=0.15, help="stop when fail/pass rates are this close"
    )
    parser.add_argument("--max-steps", type=int, default=12, help="search steps per target")
    parser.add_argument("--no-search", action="store_true", help="the fixed rate only")
    parser.add_argument(
        "--nagle",
        action="store_true",
        help="leave Nagle's algorithm on in Mosquitto and the devices (both their defaults)",
    )
    parser.add_argument(
        "--targets",
        type=target_list(TARGETS),
        default=list(DEFAULT_TARGETS),
        help=f"comma-separated, run in this order; from {', '.join(TARGETS)}",
    )
    parser.add_argument(
        "--quiet-wait", type=float, default=0.0, help="wait up to S s for an idle machine first"
    )
    parser.add_argument(
        "--retry-noisy", type=int, default=0, help="run a failed noisy window again, N times"
    )
    parser.add_argument(
        "--profile", type=Path, default=None, help="py-spy each teleconsult server into DIR"
    )
    parser.add_argument(
        "--profile-seconds", type=positive, default=10.0, help="the profiled run's window, s"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.pairs < 1 or args.max_steps < 1 or args.body < 1:
        parser.error("--pairs, --max-steps and --body must be >= 1")
    if args.warmup < 0 or args.quiet_wait < 0 or args.retry_noisy < 0:
        parser.error("--warmup, --quiet-wait and --retry-noisy must be >= 0")
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    try:
        report = asyncio.run(run(args))
    except asyncio.CancelledError:
        print("interrupted: brokers and servers stopped, database dropped", file=sys.stderr)
        return 130
    host = report["machine"]
    print(
        f"{host['nproc']} cores ({host['cpu_model']}), Python {host['python']}, "
        f"Mosquitto {host.get('mosquitto', '-')}, amqtt {host['amqtt']}, "
        f"aiomqtt {host['aiomqtt']} (paho-mqtt {host['paho-mqtt']}); pinning: {host['pinning']}; "
        f"other processes' CPU before the run: {host['busy_before_run']:.0%} of a core"
    )
    print(
        f"{args.pairs} pairs ({2 * args.pairs} devices), QoS 1, {args.body}-byte texts: "
        f"{host['request_bytes']}-byte send requests; run took {time.monotonic() - started:.0f} s"
    )
    print(report["table"])
    for name, profile in report["profiles"].items():
        print()
        print(profile_text(name, profile))
    if args.json is not None:
        text = json.dumps(report, indent=2, allow_nan=False, default=str)
        args.json.write_text(text + "\n", encoding="utf-8")
        print(f"results written to {args.json}")
    return 1 if any(r["invalid"] for r in report["results"]) else 0


if __name__ == "__main__":
    sys.exit(main())
