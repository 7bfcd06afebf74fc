"""Reconnect storm: the server restarts under N clients; time until all are back and caught up.

Run: ``.venv/bin/python -m bench.reconnect_storm [--clients 500] [--group 50]
[--before 2] [--during 2] [--downtime 2] [--targets teleconsult,reference]
[--profile DIR] [--json PATH]``.

One invocation makes a throwaway database and runs each target in turn, its
server pinned to one core and this load generator (every client) to the other.

* ``teleconsult`` -- ``--clients`` patients, each a :class:`ChatClient` of the
  project's client library over :class:`SocketIoTransport` (WebSocket,
  msgpack), in care-team threads of ``--group`` patients and one doctor (every
  member holds a sealed key). After a first message has reached everyone, the
  doctor sends ``--before`` messages to each thread and, once they are
  acknowledged, the server is killed (SIGKILL: a crash; ``--signal term`` for a
  graceful stop). The doctor then sends ``--during`` more to each thread, which
  his client retries until the server is back. After ``--downtime`` seconds
  the server is started again on the same port. Nothing in the benchmark helps
  the clients: each reconnects by itself with the library's jittered backoff
  (0.2 s doubling to 10 s), authenticates, and resumes every followed thread.
  A client is *back* when its transport is connected again and *caught up*
  when it has opened, in order and once, every message of its thread.
* ``teleconsult-redis`` -- the same with ``REDIS_URL`` (presence, rate limits and
  the bus in Redis, which survives the restart).
* ``reference`` -- ``bench/refs/ws_broadcast.py`` and as many bare aiohttp
  WebSocket clients. Each reconnects with the same backoff (the library's own
  ``Backoff`` class) and is back when its ``hello`` is answered. No auth, no
  state, nothing to resume: the floor for "everyone reconnected".

The headline is the time from the restart (the new process spawned) until the
last client is caught up (teleconsult) or back (reference). The backoff
schedule is the same on both sides, so it sets a floor both share; the server's
own start-up is shown apart (``ready s``). The run is invalid when any message
is lost (a client not caught up within ``--bound`` seconds), any delivery is
out of order or wrong, or the generator used 90 % of its core over the storm.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
import asyncpg

from bench import realtime as rt
from bench.api_requests import _free_port
from bench.procs import HOST, ServerProcess
from bench.pyspy import Profile
from bench.report import positive
from teleconsult.client.chat import ChatClient
from teleconsult.client.crypto import DeviceKeys, seal
from teleconsult.client.rest import RestClient
from teleconsult.client.transport import SocketIoTransport
from teleconsult.core.backoff import Backoff
from teleconsult.core.identity import Role
from teleconsult.loadtest.report import Latency, summarize
from teleconsult.messaging import store as messaging
from teleconsult.messaging.envelope import MAX_RECIPIENTS, Envelope
from teleconsult.messaging.records import ThreadKind

TARGETS = ("teleconsult", "teleconsult-redis", "reference")
REFERENCE_MODULE = "bench.refs.ws_broadcast"
CONNECT_PARALLEL = 25
SIGNALS = {"kill": signal.SIGKILL, "term": signal.SIGTERM}


def body(thread_no: int, seq: int) -> bytes:
    return f"storm thread {thread_no} message {seq}".encode()


class Storm:
    """Per client: when it was back and caught up, and what it got wrong.

    Times are ``time.perf_counter()`` values; ``armed`` once the server is down.
    """

    def __init__(self, clients: int) -> None:
        self.clients = clients
        self.final = 1  # the seq every thread ends at, when everything is delivered
        self.last = [0] * clients
        self.back: list[float | None] = [None] * clients
        self.caught: list[float | None] = [None] * clients
        self.wrong = 0
        self.armed = False
        self.all_back = asyncio.Event()
        self.all_caught = asyncio.Event()
        self.first_round = asyncio.Event()  # every client holds seq 1

    def mark_back(self, client: int) -> None:
        if self.armed and self.back[client] is None:
            self.back[client] = time.perf_counter()
            if all(t is not None for t in self.back):
                self.all_back.set()

    def delivered(self, client: int, seq: int, ok: bool) -> None:
        if seq != self.last[client] + 1 or not ok:
            self.wrong += 1
        self.last[client] = max(self.last[client], seq)
        if self.last[client] < self.final:
            return
        if not self.armed:
            if all(last >= 1 for last in self.last):
                self.first_round.set()
        elif self.caught[client] is None:
            self.caught[client] = time.perf_counter()
            if all(t is not None for t in self.caught):
                self.all_caught.set()

    @property
    def lost(self) -> int:
        return sum(max(0, self.final - last) for last in self.last)


# --- the teleconsult side -------------------------------------------------------------


@dataclass
class World:
    sender: rt.Person
    sender_keys: DeviceKeys
    sender_device: UUID
    patients: list[rt.Person]
    keys: list[DeviceKeys]
    devices: list[UUID]
    threads: list[UUID]  # patient i is in threads[i // group]
    sealed_for: list[dict[UUID, bytes]]  # per thread: its devices' X25519 keys


async def prepare_world(db: rt.Database, clients: int, group: int, label: str) -> World:
    conn = await asyncpg.connect(db.dsn)
    try:
        [sender] = await rt.add_people(conn, db, Role.DOCTOR, 1, f"{label}-doctor")
        patients = await rt.add_people(conn, db, Role.PATIENT, clients, f"{label}-patient")
        everyone = [sender, *patients]
        keys = [DeviceKeys.generate() for _ in everyone]
        devices = []
        for person, key in zip(everyone, keys, strict=True):
            device = await messaging.register_device(
                conn,
                user_id=person.user_id,
                x25519_public=key.encryption_public_key,
                ed25519_public=key.signing_public_key,
            )
            devices.append(device.id)
        threads, sealed_for = [], []
        for start in range(0, clients, group):
            members = [(sender.user_id, Role.DOCTOR.value)]
            members += [(p.user_id, Role.PATIENT.value) for p in patients[start : start + group]]
            thread = await messaging.create_thread(
                conn,
                clinic_id=db.clinic_id,
                kind=ThreadKind.CARE_TEAM,
                created_by=sender.user_id,
                members=members,
            )
            threads.append(thread.id)
            chosen = [0, *range(start + 1, min(start + group, clients) + 1)]
            sealed_for.append({devices[i]: keys[i].encryption_public_key for i in chosen})
    finally:
        await conn.close()
    return World(sender, keys[0], devices[0], patients, keys[1:], devices[1:], threads, sealed_for)


def chat_client(
    base: str, session: aiohttp.ClientSession, person: rt.Person, keys: DeviceKeys, device: UUID
) -> ChatClient:
    rest = RestClient(base, session=session)
    rest.access_token, rest.user_id = person.token, person.user_id

    async def token() -> str:
        return person.token

    transport = SocketIoTransport(base, token, transports=("websocket",), encoding="msgpack")
    return ChatClient(transport, rest, keys=keys, device_id=device)


def transport_of(chat: ChatClient) -> SocketIoTransport:
    transport = chat._transport  # the benchmark watches the library's own reconnects
    assert isinstance(transport, SocketIoTransport)
    return transport


class TeleconsultFleet:
    """Every patient's ChatClient, the doctor's, and a reader per patient."""

    def __init__(self, base: str, world: World, group: int, storm: Storm) -> None:
        self.base, self.world, self.group, self.storm = base, world, group, storm
        self.chats: list[ChatClient] = []
        self.sender: ChatClient | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.sent = 0

    async def open(self, session: aiohttp.ClientSession) -> None:
        w = self.world
        self.chats = [
            chat_client(self.base, session, p, w.keys[i], w.devices[i])
            for i, p in enumerate(w.patients)
        ]
        for i, chat in enumerate(self.chats):
            chat.follow(w.threads[i // self.group])
            self.tasks.append(asyncio.create_task(self._read(i, chat)))
        gate = asyncio.Semaphore(CONNECT_PARALLEL)

        async def start(chat: ChatClient) -> None:
            async with gate:
                await chat.start()

        await asyncio.gather(*(start(chat) for chat in self.chats))
        self.sender = chat_client(self.base, session, w.sender, w.sender_keys, w.sender_device)
        await self.sender.start()

    async def _read(self, i: int, chat: ChatClient) -> None:
        thread_no = i // self.group
        while True:
            got = await chat.next_message()
            ok = got.plaintext == body(thread_no, got.seq) and got.error is None
            self.storm.delivered(i, got.seq, ok)

    def envelope(self, thread_no: int, seq: int) -> Envelope:
        w = self.world
        return seal(
            plaintext=body(thread_no, seq),
            thread_id=w.threads[thread_no],
            sender=w.sender_keys,
            sender_device_id=w.sender_device,
            recipients=w.sealed_for[thread_no],
        )

    async def send(self, seqs: range) -> None:
        """Send seqs ``seqs`` to every thread: in order in a thread, threads side by side."""
        envelopes = {t: [self.envelope(t, s) for s in seqs] for t in range(len(self.world.threads))}

        async def thread(thread_no: int) -> None:
            assert self.sender is not None
            for env in envelopes[thread_no]:
                await self.sender.send_envelope(env)
                self.sent += 1

        await asyncio.gather(*(thread(t) for t in envelopes))

    def connected(self, client: int) -> bool:
        return transport_of(self.chats[client]).connected.is_set()

    async def sender_dropped(self) -> None:
        assert self.sender is not None
        transport = transport_of(self.sender)
        while transport.connected.is_set():  # noqa: ASYNC110 - no event for "dropped"
            await asyncio.sleep(0.01)

    async def wait_connected(self, client: int) -> None:
        await transport_of(self.chats[client]).connected.wait()

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        chats = [*self.chats, *([self.sender] if self.sender else [])]
        await asyncio.gather(*(chat.close() for chat in chats), return_exceptions=True)


# --- the reference side ---------------------------------------------------------------


class ReferenceFleet:
    """Bare aiohttp WebSocket clients that reconnect with the library's backoff."""

    def __init__(self, base: str, clients: int, storm: Storm) -> None:
        self.url, self.storm = f"{base}/ws", storm
        self.up = [asyncio.Event() for _ in range(clients)]
        self.tasks: list[asyncio.Task[None]] = []
        self.sent = 0

    async def open(self, session: aiohttp.ClientSession) -> None:
        self.tasks = [asyncio.create_task(self._client(i, session)) for i in range(len(self.up))]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in self.up)), 120)

    async def _client(self, i: int, session: aiohttp.ClientSession) -> None:
        backoff = Backoff()
        first = True
        while True:
            if not first:  # as SocketIoTransport: wait first, then try again
                await asyncio.sleep(backoff.delay())
            first = False
            try:
                async with session.ws_connect(self.url) as ws:
                    await ws.send_str("hello")
                    answer = await ws.receive(timeout=10)
                    if answer.type is not aiohttp.WSMsgType.TEXT or answer.data != "ready":
                        continue
                    backoff.reset()
                    self.up[i].set()
                    self.storm.mark_back(i)
                    async for _ in ws:
                        pass
            except (aiohttp.ClientError, OSError, TimeoutError):
                pass
            self.up[i].clear()

    async def send(self, seqs: range) -> None:
        return None  # the reference has nothing to catch up on

    def connected(self, client: int) -> bool:
        return self.up[client].is_set()

    async def sender_dropped(self) -> None:
        return None  # no sender

    async def wait_connected(self, client: int) -> None:
        await self.up[client].wait()

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


Fleet = TeleconsultFleet | ReferenceFleet


# --- one run --------------------------------------------------------------------------


async def all_dropped(fleet: Fleet, clients: int, within: float = 10.0) -> int:
    """Wait until every client has noticed the server is gone; how many have not."""
    deadline = time.monotonic() + within
    while True:
        still = sum(1 for i in range(clients) if fleet.connected(i))
        if not still or time.monotonic() >= deadline:
            return still
        await asyncio.sleep(0.01)


async def progress(storm: Storm, label: str, since: float) -> None:
    cpu, wall = time.process_time(), time.perf_counter()
    while True:
        await asyncio.sleep(1.0)
        now_cpu, now = time.process_time(), time.perf_counter()
        back = sum(1 for t in storm.back if t is not None)
        caught = sum(1 for t in storm.caught if t is not None)
        rt.say(
            f"[{label}] t={now - since:5.1f}s after the restart: back {back}/{storm.clients}  "
            f"caught up {caught}/{storm.clients}  gen cpu {(now_cpu - cpu) / (now - wall):4.0%}"
        )
        cpu, wall = now_cpu, now


@dataclass
class Timeline:
    killed: float = 0.0
    restarted: float = 0.0
    ready: float = 0.0
    finished: float = 0.0
    timed_out: bool = False
    not_dropped: int = 0
    notes: list[str] = field(default_factory=list)


def _seconds(times: list[float | None], since: float) -> list[float]:
    return sorted(t - since for t in times if t is not None)


def outcome(
    target: str,
    round_no: int,
    storm: Storm,
    line: Timeline,
    cpu: rt.Cpu,
    stored: int | None,
    expected: int | None,
) -> rt.Outcome:
    reference = target == "reference"
    back = Latency()
    caught = Latency()
    for value in _seconds(storm.back, line.restarted):
        back.record(value)
    for value in _seconds(storm.back if reference else storm.caught, line.restarted):
        caught.record(value)
    b, c = summarize(back.total), summarize(caught.total)
    done = c["max"] / 1e3 if c["max"] is not None and c["count"] == storm.clients else None
    found = rt.Outcome(
        target=target,
        round=round_no,
        figure=done if done is not None else float("nan"),
        fields={
            "clients": storm.clients,
            "down_s": line.restarted - line.killed,
            "ready_s": line.ready - line.restarted,
            "back_p50_s": _s(b["p50"]),
            "back_p99_s": _s(b["p99"]),
            "back_max_s": _s(b["max"]),
            "caught_p50_s": None if reference else _s(c["p50"]),
            "caught_p99_s": None if reference else _s(c["p99"]),
            "caught_max_s": None if reference else _s(c["max"]),
            "all_done_s": done,
            "back": b["count"],
            "caught_up": None if reference else c["count"],
            "lost": None if reference else storm.lost,
            "wrong": None if reference else storm.wrong,
            "messages_stored": stored,
            "messages_expected": expected,
        },
        cpu=cpu,
        notes=list(line.notes),
    )
    found.judge()
    if line.timed_out:
        found.invalid.append("not every client was back (and caught up) within the bound")
    if line.not_dropped:
        found.invalid.append(f"{line.not_dropped} clients never noticed the server had gone")
    if not reference and storm.lost:
        found.invalid.append(f"{storm.lost} messages lost (not delivered within the bound)")
    if not reference and storm.wrong:
        found.invalid.append(f"{storm.wrong} deliveries out of order, twice or wrong")
    if stored is not None and stored != expected:
        found.invalid.append(f"the server stored {stored} messages, {expected} were sent")
    return found


def _s(ms: float | int | None) -> float | None:
    return None if ms is None else ms / 1e3


async def bench_target(
    target: str,
    round_no: int,
    db: rt.Database,
    args: argparse.Namespace,
    cores: tuple[int, int] | None,
) -> rt.Outcome:
    label = target if args.rounds == 1 else f"{target} #{round_no}"
    port = _free_port()
    base = f"http://{HOST}:{port}"
    life = int(args.downtime + args.bound + 900)
    storm = Storm(args.clients)
    world: World | None = None
    if target != "reference":
        rt.say(f"[{label}] preparing {args.clients} patients, their devices and threads")
        world = await prepare_world(db, args.clients, args.group, f"r{round_no}{target}")
    monitor = await asyncpg.connect(db.dsn)
    servers: list[ServerProcess] = []
    fleet: Fleet | None = None
    with tempfile.TemporaryDirectory(prefix="bench-storm-") as data_dir:

        def start() -> ServerProcess:
            if world is not None:
                redis = target.endswith("redis")
                env = rt.teleconsult_env(db, port, Path(data_dir), redis=redis)
                server = rt.start_teleconsult(target, env, cores, life)
            else:
                server = rt.start_reference(target, REFERENCE_MODULE, port, cores, life)
            servers.append(server)
            return server

        try:
            server = start()
            await rt.ready_at(base, server)
            connector = aiohttp.TCPConnector(limit=0)
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=30)
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                if world is not None:
                    fleet = TeleconsultFleet(base, world, args.group, storm)
                else:
                    fleet = ReferenceFleet(base, args.clients, storm)
                rt.say(f"[{label}] connecting {args.clients} clients")
                began = time.perf_counter()
                await fleet.open(session)
                rt.say(f"[{label}] connected in {time.perf_counter() - began:.1f} s")
                if world is not None:
                    await fleet.send(range(1, 2))
                    await asyncio.wait_for(storm.first_round.wait(), 120)
                    rt.say(f"[{label}] a first message reached every client")
                line, cpu, profile = await storm_phase(
                    fleet, storm, server, start, base, args, db, monitor, label
                )
                expected = stored = None
                if world is not None:
                    expected = len(world.threads) * storm.final
                    stored = await monitor.fetchval(
                        "SELECT count(*) FROM messages WHERE thread_id = ANY($1::uuid[])",
                        world.threads,
                    )
                found = outcome(target, round_no, storm, line, cpu, stored, expected)
                found.profile = profile
                for server in servers:  # first, so that leaving clients cost nothing
                    server.stop()
                await fleet.close()
                return found
        finally:
            for server in servers:
                server.stop()
            if fleet is not None:
                await fleet.close()
            await monitor.close()


async def storm_phase(
    fleet: Fleet,
    storm: Storm,
    server: ServerProcess,
    start: Callable[[], ServerProcess],
    base: str,
    args: argparse.Namespace,
    db: rt.Database,
    monitor: asyncpg.Connection,
    label: str,
) -> tuple[Timeline, rt.Cpu, dict[str, Any] | None]:
    """Send, kill, send while down, restart, and time everyone's return."""
    line = Timeline()
    storm.final = 1 + args.before + args.during
    await fleet.send(range(2, 2 + args.before))
    storm.armed = True
    line.killed = time.perf_counter()
    server.proc.send_signal(SIGNALS[args.signal])
    await asyncio.to_thread(server.proc.wait, 30)
    line.not_dropped = await all_dropped(fleet, storm.clients)
    # Sent once the doctor's client knows the server is gone: a send already in
    # flight at the crash waits out the client's call timeout (README, "in flight").
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(fleet.sender_dropped(), 10)
    sending = (
        f"; sending {args.during} more per thread" if isinstance(fleet, TeleconsultFleet) else ""
    )
    rt.say(f"[{label}] server stopped ({args.signal}){sending}")
    during = asyncio.create_task(fleet.send(range(2 + args.before, storm.final + 1)))
    watchers = [asyncio.create_task(_watch(fleet, storm, i)) for i in range(storm.clients)]
    await asyncio.sleep(max(0.0, args.downtime - (time.perf_counter() - line.killed)))
    server = start()
    line.restarted = time.perf_counter()
    meter = rt.Meter(server.pid, monitor, db.name)
    await meter.start()
    ticker = asyncio.create_task(progress(storm, label, line.restarted))
    spy: Profile | None = None
    try:
        line.ready = await rt.ready_at(base, server)
        rt.say(f"[{label}] ready again {line.ready - line.restarted:.2f} s after the restart")
        if args.profile is not None:
            path = args.profile / f"storm-{label.replace(' #', '-')}.txt"
            spy = Profile(server.pid, args.profile_seconds, path)
        waits: list[Awaitable[Any]] = [storm.all_back.wait(), during]
        if isinstance(fleet, TeleconsultFleet):
            waits.append(storm.all_caught.wait())
        try:
            await asyncio.wait_for(asyncio.gather(*waits), args.bound)
        except TimeoutError:
            line.timed_out = True
        line.finished = time.perf_counter()
        cpu = await meter.stop()
        profile = await spy.finish() if spy is not None else None
    finally:
        for task in (ticker, during, *watchers):
            task.cancel()
        await asyncio.gather(ticker, during, *watchers, return_exceptions=True)
    return line, cpu, profile


async def _watch(fleet: Fleet, storm: Storm, client: int) -> None:
    await fleet.wait_connected(client)
    storm.mark_back(client)


# --- the invocation -------------------------------------------------------------------

COLUMNS = (
    rt.Column("clients", "clients", ">7d"),
    rt.Column("down s", "down_s", ">6.2f"),
    rt.Column("ready s", "ready_s", ">7.2f"),
    rt.Column("back p50", "back_p50_s", ">8.2f"),
    rt.Column("back p99", "back_p99_s", ">8.2f"),
    rt.Column("back max", "back_max_s", ">8.2f"),
    rt.Column("caught p50", "caught_p50_s", ">10.2f"),
    rt.Column("caught p99", "caught_p99_s", ">10.2f"),
    rt.Column("all done s", "all_done_s", ">10.2f"),
    rt.Column("lost", "lost", ">5d"),
    rt.Column("wrong", "wrong", ">5d"),
)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async def nothing(db: rt.Database, host: dict[str, Any]) -> None:
        return None

    async def one(
        target: str, round_no: int, db: rt.Database, _: None, cores: tuple[int, int] | None
    ) -> rt.Outcome:
        return await bench_target(target, round_no, db, args, cores)

    host, outcomes = await rt.run_targets("storm", args, nothing, one)
    return rt.summary(
        "reconnect storm: time until every client is back and caught up after a restart",
        "bench.reconnect_storm",
        args,
        host,
        outcomes,
        COLUMNS,
        figure="seconds from the restart until all are back (and caught up)",
        lower_is_better=True,
        postscript=back_only_ratios(outcomes),
    )


def back_only_ratios(outcomes: list[rt.Outcome]) -> str:
    """The same ratio on 'back' alone: reconnected, before catching up."""
    refs = {o.round: o for o in outcomes if o.target == "reference"}
    lines = ["ratio on the last client back only (reconnected, not yet caught up):"]
    for o in outcomes:
        ref = refs.get(o.round)
        mine, theirs = o.fields.get("back_max_s"), ref.fields.get("back_max_s") if ref else None
        if ref is None or o is ref or not mine or not theirs:
            continue
        label = o.target if len(refs) == 1 else f"{o.target} #{o.round}"
        lines.append(f"  {label}: x{mine / theirs:.2f}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.reconnect_storm",
        description="Reconnect storm: teleconsult restarted under N clients, against bare aiohttp.",
    )
    parser.add_argument("--clients", type=int, default=500, help="clients that must come back")
    parser.add_argument(
        "--group",
        type=int,
        default=50,
        help=f"patients per care-team thread (1-{MAX_RECIPIENTS - 1}: everyone holds a key)",
    )
    parser.add_argument("--before", type=int, default=2, help="messages per thread just before")
    parser.add_argument("--during", type=int, default=2, help="messages per thread while down")
    parser.add_argument("--downtime", type=float, default=2.0, help="seconds from kill to restart")
    parser.add_argument("--signal", choices=sorted(SIGNALS), default="kill", help="how to stop")
    parser.add_argument("--bound", type=positive, default=120.0, help="give up after S seconds")
    rt.add_common_options(parser, TARGETS, ["teleconsult", "reference"])
    parser.add_argument(
        "--profile-seconds", type=positive, default=15.0, help="py-spy from the restart's ready"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.group < MAX_RECIPIENTS or min(args.clients, args.rounds) < 1:
        parser.error(f"--group must be 1..{MAX_RECIPIENTS - 1}; --clients, --rounds >= 1")
    if min(args.before, args.during) < 0 or args.downtime < 0:
        parser.error("--before, --during and --downtime must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Hundreds of clients losing their server at once: engine.io would log each one.
    for name in ("engineio.client", "socketio.client"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    return rt.finish(lambda: run(args), args)


if __name__ == "__main__":
    sys.exit(main())
