"""Reconnect storm: the server is killed and restarted under N clients; seconds from
the restart until every client is back (and caught up), against a bare reference.

Run: ``.venv/bin/python -m bench.reconnect_storm [--clients 500] [--group 50] [--smoke]``.

* ``teleconsult`` (``-redis``: presence and bus in Redis): ``--clients`` patients,
  each a ``ChatClient`` of the project's client library (Socket.IO, WebSocket,
  msgpack) following its care-team thread of ``--group`` patients and a doctor.
  After a first message reached everyone, the doctor sends ``--before`` messages
  per thread; the server is SIGKILLed; once the doctor's client noticed, it sends
  ``--during`` more (its retry loop holds them); ``--downtime`` s after the kill the
  server restarts on the same port. Each client comes back by itself with the
  library's jittered backoff, authenticates and resumes. *Back*: its transport is
  connected; *caught up*: it opened every message of its thread, once, in order.
* ``ws-ref``: ``bench/refs/pyref.py``'s bare WebSocket and as many aiohttp clients
  reconnecting with the library's own ``Backoff``, back when their ``hello`` is
  answered: nothing to authenticate or resume, the floor the backoff sets.

Confirm steps: every client noticed the crash, came back and caught up within
``--bound`` s, no message wrong, twice or out of order, the server stored every
message sent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from typing import Any
from uuid import UUID

import aiohttp

from bench.harness import report
from bench.harness.latency import Recorder
from bench.harness.load import Progress, say
from bench.harness.procs import ServerProcess
from bench.harness.report import Column, Row
from bench.harness.world import Device, Lab, Person, envelope, open_lab
from teleconsult.client.chat import ChatClient
from teleconsult.client.rest import RestClient
from teleconsult.client.transport import SocketIoTransport
from teleconsult.core.backoff import Backoff
from teleconsult.core.identity import Role
from teleconsult.messaging.envelope import MAX_RECIPIENTS, from_msgpack
from teleconsult.messaging.records import ThreadKind

TARGETS = ("teleconsult", "teleconsult-redis", "ws-ref")
COLUMNS = (
    Column("clients", "clients", ">7d"),
    Column("ready s", "ready_s", ">7.2f"),
    Column("back p50", "back_p50", ">8.2f"),
    Column("back max", "back_max", ">8.2f"),
    Column("caught p50", "caught_p50", ">10.2f"),
    Column("caught max", "caught_max", ">10.2f"),
    Column("all done s", "all_done_s", ">10.2f"),
    Column("srv ms/client", "server_ms", ">13.1f"),
)


def body(thread: int, seq: int) -> bytes:
    return f"storm thread {thread} message {seq}".encode()


class Fleet:
    """Every client; ``back``/``caught`` hold when each came back, once the server is down."""

    def __init__(self, clients: int) -> None:
        self.back: list[float | None] = [None] * clients
        self.caught: list[float | None] = [None] * clients
        self.last = [0] * clients
        self.final, self.wrong, self.sent, self.armed = 1, 0, 0, False
        self.tasks: list[asyncio.Task[None]] = []
        self.first_round = asyncio.Event()
        self.done = asyncio.Event()

    def mark(self, times: list[float | None], i: int) -> None:
        if self.armed and times[i] is None:
            times[i] = time.perf_counter()
            if all(t is not None for t in times) and times is self.target:
                self.done.set()

    @property
    def target(self) -> list[float | None]:
        return self.back

    def connected(self, i: int) -> bool:
        raise NotImplementedError

    async def wait_connected(self, i: int) -> None:
        raise NotImplementedError

    async def send(self, seqs: range) -> None:
        return None

    async def sender_dropped(self) -> None:
        return None

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


class Teleconsult(Fleet):
    def __init__(
        self,
        base: str,
        people: list[Person],
        devices: list[Device],
        threads: list[UUID],
        group: int,
    ) -> None:
        super().__init__(len(people) - 1)
        self.base, self.devices, self.threads, self.group = base, devices, threads, group
        self.people = people  # the doctor first
        self.chats: list[ChatClient] = []

    @property
    def target(self) -> list[float | None]:
        return self.caught

    def client(self, session: aiohttp.ClientSession, i: int) -> ChatClient:
        person, device = self.people[i], self.devices[i]
        rest = RestClient(self.base, session=session)
        rest.access_token, rest.user_id = person.token, person.user_id

        async def token() -> str:
            return person.token

        transport = SocketIoTransport(
            self.base, token, transports=("websocket",), encoding="msgpack"
        )
        return ChatClient(transport, rest, keys=device.keys, device_id=device.id)

    async def open(self, session: aiohttp.ClientSession) -> None:
        self.chats = [self.client(session, i) for i in range(len(self.people))]
        gate = asyncio.Semaphore(25)

        async def start(i: int, chat: ChatClient) -> None:
            if i:
                chat.follow(self.threads[(i - 1) // self.group])
                self.tasks.append(asyncio.create_task(self.read(i - 1, chat)))
            async with gate:
                await chat.start()

        await asyncio.gather(*(start(i, c) for i, c in enumerate(self.chats)))

    async def read(self, i: int, chat: ChatClient) -> None:
        thread = i // self.group
        while True:
            got = await chat.next_message()
            ok = got.plaintext == body(thread, got.seq) and got.error is None
            self.wrong += got.seq != self.last[i] + 1 or not ok
            self.last[i] = max(self.last[i], got.seq)
            if self.last[i] >= self.final:
                if not self.armed and all(last >= 1 for last in self.last):
                    self.first_round.set()
                self.mark(self.caught, i)

    def transport(self, i: int) -> SocketIoTransport:
        transport = self.chats[i + 1]._transport  # the library's own reconnects, watched
        assert isinstance(transport, SocketIoTransport)
        return transport

    def connected(self, i: int) -> bool:
        return self.transport(i).connected.is_set()

    async def wait_connected(self, i: int) -> None:
        await self.transport(i).connected.wait()

    async def send(self, seqs: range) -> None:
        """Seqs ``seqs`` to every thread: in order within one, threads side by side."""
        clients = len(self.people) - 1

        async def thread(t: int) -> None:
            last = min((t + 1) * self.group, clients)
            keys = [self.devices[0], *self.devices[1 + t * self.group : 1 + last]]
            for seq in seqs:
                msg = f"storm-{t:06d}-{seq:08d}"
                sealed = envelope(self.devices[0], keys, self.threads[t], body(t, seq), msg)
                await self.chats[0].send_envelope(from_msgpack(sealed, max_bytes=len(sealed)))
                self.sent += 1

        await asyncio.gather(*(thread(t) for t in range(len(self.threads))))

    async def sender_dropped(self) -> None:
        transport = self.chats[0]._transport
        assert isinstance(transport, SocketIoTransport)
        while transport.connected.is_set():  # noqa: ASYNC110 - no event for "dropped"
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        await super().close()
        await asyncio.gather(*(chat.close() for chat in self.chats), return_exceptions=True)


class Bare(Fleet):
    """aiohttp WebSocket clients that reconnect with the library's backoff."""

    def __init__(self, base: str, clients: int) -> None:
        super().__init__(clients)
        self.url = f"{base}/ws"
        self.up = [asyncio.Event() for _ in range(clients)]

    async def open(self, session: aiohttp.ClientSession) -> None:
        self.tasks = [asyncio.create_task(self.client(i, session)) for i in range(len(self.up))]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in self.up)), 120)

    async def client(self, i: int, session: aiohttp.ClientSession) -> None:
        backoff, first = Backoff(), True
        while True:
            if not first:  # as SocketIoTransport: wait first, then try again
                await asyncio.sleep(backoff.delay())
            first = False
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with session.ws_connect(self.url) as ws:
                    await ws.send_str("hello")
                    answer = await ws.receive(timeout=10)
                    if answer.type is aiohttp.WSMsgType.TEXT and answer.data == "ready":
                        backoff.reset()
                        self.up[i].set()
                        async for _ in ws:
                            pass
            self.up[i].clear()

    def connected(self, i: int) -> bool:
        return self.up[i].is_set()

    async def wait_connected(self, i: int) -> None:
        await self.up[i].wait()


async def bench_target(lab: Lab, name: str, args: argparse.Namespace) -> Row:
    await lab.quiet()
    tc = name.startswith("teleconsult")

    def start(port: int | None = None) -> ServerProcess:
        return lab.teleconsult(name, port=port) if tc else lab.reference(name, port=port)

    fleet: Fleet
    server = start()
    servers = [server]
    row = Row(name)
    try:
        await server.wait_http("/readyz")
        if tc:
            say(f"[{name}] preparing {args.clients} patients, their devices and threads")
            [doctor] = await lab.people(Role.DOCTOR, 1)
            patients = await lab.people(Role.PATIENT, args.clients)
            devices = await lab.devices([doctor, *patients])
            threads = []
            for first in range(0, args.clients, args.group):
                members = [
                    (doctor, Role.DOCTOR),
                    *((p, Role.PATIENT) for p in patients[first : first + args.group]),
                ]
                threads.append(await lab.thread(ThreadKind.CARE_TEAM, members, creator=doctor))
            fleet = Teleconsult(server.base, [doctor, *patients], devices, threads, args.group)
        else:
            fleet = Bare(server.base, args.clients)
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            say(f"[{name}] connecting {args.clients} clients")
            await fleet.open(session)
            if tc:
                await fleet.send(range(1, 2))
                await asyncio.wait_for(fleet.first_round.wait(), 120)
            fleet.final = 1 + args.before + args.during
            await fleet.send(range(2, 2 + args.before))
            fleet.armed = True
            killed = time.perf_counter()
            server.kill()
            for _ in range(1000):  # up to 10 s for every client to notice
                if not any(fleet.connected(i) for i in range(args.clients)):
                    break
                await asyncio.sleep(0.01)
            not_dropped = sum(fleet.connected(i) for i in range(args.clients))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fleet.sender_dropped(), 10)
            during = asyncio.create_task(fleet.send(range(2 + args.before, fleet.final + 1)))
            watch = [asyncio.create_task(watch_back(fleet, i)) for i in range(args.clients)]
            await asyncio.sleep(max(0.0, args.downtime - (time.perf_counter() - killed)))
            server = start(server.port)
            servers.append(server)
            restarted = time.perf_counter()
            meter = lab.meter(server)
            await meter.start()

            def line() -> str:
                back = sum(t is not None for t in fleet.back)
                return f"back {back} caught {sum(t is not None for t in fleet.caught)}"

            try:
                async with Progress(name, line, meter):
                    ready = await server.wait_http("/readyz", poll=0.02)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            asyncio.gather(fleet.done.wait(), during), args.bound
                        )
                    row.cpu = await meter.stop()
            finally:
                for task in (during, *watch):
                    task.cancel()
                await asyncio.gather(during, *watch, return_exceptions=True)
            stored = None
            if isinstance(fleet, Teleconsult):
                async with lab.connect() as conn:
                    sql = "SELECT count(*) FROM messages WHERE thread_id = ANY($1::uuid[])"
                    stored = await conn.fetchval(sql, fleet.threads)
            for s in servers:  # first, so that leaving clients cost nothing
                s.stop()
            await fleet.close()
    finally:
        for s in servers:
            s.stop()
    back, caught = Recorder(), Recorder()
    for times, rec in ((fleet.back, back), (fleet.caught, caught)):
        for t in times:
            if t is None:
                rec.missing += 1
            else:
                rec.record(t - restarted)
    done = (caught if tc else back).max
    row.fields.update(
        clients=args.clients,
        ready_s=ready - restarted,
        back_p50=back.p(50),
        back_max=back.max,
        caught_p50=caught.p(50) if tc else None,
        caught_max=caught.max if tc else None,
        all_done_s=done,
        server_ms=row.per_unit_us("server", args.clients) / 1e3,
        stored=stored,
    )
    row.check(f"every client noticed the crash ({not_dropped} did not)", not not_dropped)
    row.check(f"every client back within {args.bound:g} s ({back.missing} not)", not back.missing)
    if tc:
        lost = sum(max(0, fleet.final - last) for last in fleet.last)
        row.check(f"every client caught up ({lost} messages missing)", not lost)
        row.check(f"nothing wrong, twice or out of order ({fleet.wrong})", not fleet.wrong)
        row.check(f"the server stored every message ({stored}/{fleet.sent})", stored == fleet.sent)
    return row.judge()


async def watch_back(fleet: Fleet, i: int) -> None:
    await fleet.wait_connected(i)
    fleet.mark(fleet.back, i)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with open_lab("storm", args) as lab:
        rows = [await bench_target(lab, name, args) for name in args.targets]
        found, done = report.ratios(
            rows, "all_done_s", ["ws-ref"], higher_is_better=False, what="until all are done"
        )
        more, back = report.ratios(
            rows, "back_max", ["ws-ref"], higher_is_better=False, what="until the last is back"
        )
        head = f"{args.clients} clients, server down {args.downtime:g} s (SIGKILL)"
        back = back.replace("ratios, same run:\n", "")
        text = [head, report.table(rows, COLUMNS), done, back, report.cpu_table(rows)]
        doc = "\n".join(t for t in text if t)
        return report.document("reconnect_storm", args, lab.facts, rows, doc, ratios=found + more)


def main(argv: list[str] | None = None) -> int:
    p = report.parser("bench.reconnect_storm", __doc__, TARGETS, ("teleconsult", "ws-ref"))
    p.add_argument("--clients", type=int, default=500, help="clients that must come back")
    p.add_argument(
        "--group", type=int, default=50, help=f"patients per thread (< {MAX_RECIPIENTS})"
    )
    p.add_argument("--before", type=int, default=2, help="messages per thread just before")
    p.add_argument("--during", type=int, default=2, help="messages per thread while down")
    p.add_argument("--downtime", type=float, default=2.0, help="seconds from kill to restart")
    p.add_argument("--bound", type=report.positive, default=120.0, help="give up after S s")
    args = p.parse_args(argv)
    if args.smoke:
        args.clients, args.group, args.before, args.during, args.downtime = 4, 2, 1, 1, 0.5
    if not 1 <= args.group < MAX_RECIPIENTS:
        p.error(f"--group must be 1..{MAX_RECIPIENTS - 1}: every member holds a key")
    # Hundreds of clients losing their server at once: engine.io would log each one.
    for name in ("engineio.client", "socketio.client"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    return report.main(lambda: run(args), args)


if __name__ == "__main__":
    sys.exit(main())
