"""Fan-out: one sender to 1,000 recipients, deliveries per second, against a bare broadcaster.

Run: ``.venv/bin/python -m bench.fanout [--recipients 1000] [--duration 15]
[--window 4] [--targets teleconsult,reference] [--profile DIR] [--json PATH]``.

One invocation makes a throwaway database and runs each target in turn, its
server pinned to one core and this load generator to the other:

* ``teleconsult`` -- ``teleconsult serve`` (one process, in-process bus). One
  doctor sends to a care-team thread of ``--recipients`` patients, each
  connected once to ``/chat`` over WebSocket with msgpack encoding. Every
  message is a real envelope, signed and sealed for ``--sealed`` devices (the
  sender's and ``--sealed - 1`` recipients'; 64 is the envelope's limit), that
  the server checks (membership, device, signature, recipients), stores with
  its audit row in PostgreSQL and publishes to each member through the bus;
  each recipient's session pushes it. The other recipients get the same push
  but hold no key: an envelope cannot carry 1,000 (see bench/README.md).
* ``teleconsult-redis`` -- the same with ``REDIS_URL`` set: the bus is Redis
  pub/sub, as with several server processes.
* ``reference-sio`` -- ``bench/refs/sio_minimal.py``: aiohttp + python-socketio
  with teleconsult's server options; the sender's ``send`` (a message shaped
  like teleconsult's push, the same envelope bytes attached) is emitted to a
  room of every recipient: one packet encoded once. No auth, storage, checks
  or bus: the Socket.IO framework's ceiling, with the same clients.
* ``reference`` -- ``bench/refs/ws_broadcast.py``: bare aiohttp WebSocket; the
  sender's binary frame (an 8-byte index and the same envelope bytes) is sent
  unchanged to every other connection. No auth, storage, checks or Socket.IO:
  aiohttp's own ceiling.

The sender keeps ``--window`` messages in flight: it sends the next one when a
message has reached every recipient. Only deliveries that arrive in the
measured window count. After the window the sender stops and the generator
waits for stragglers; then every recipient must hold every message, in order,
once: anything missing is ``lost`` and invalidates the run, as does a
generator that used 90 % of its core. One recipient holding a key opens and
checks every envelope it gets.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import aiohttp
import asyncpg

from bench import realtime as rt
from bench.api_requests import _free_port
from bench.procs import HOST, ServerProcess
from bench.pyspy import Profile
from bench.report import positive
from bench.sio_client import PLACEHOLDER, SioConnection, client_session, event_frame
from teleconsult.client.crypto import DeviceKeys, open_envelope, seal
from teleconsult.core.identity import Role
from teleconsult.loadtest.report import Latency, summarize
from teleconsult.messaging import store as messaging
from teleconsult.messaging.envelope import MAX_RECIPIENTS, EnvelopeError, from_msgpack, to_msgpack
from teleconsult.messaging.records import ThreadKind

T = TypeVar("T")
TARGETS = ("teleconsult", "teleconsult-redis", "reference", "reference-sio")
REFERENCES = {"reference": "bench.refs.ws_broadcast", "reference-sio": "bench.refs.sio_minimal"}
NAMESPACE = "/chat"
CONNECT_PARALLEL = 50  # connections opened at once while setting up


def client_msg_id(index: int) -> str:
    return f"bench-fanout-{index:010d}"


def plaintext(index: int, size: int) -> bytes:
    head = f"fan-out message {index} ".encode()
    return head + b"x" * max(0, size - len(head))


# --- the teleconsult world -------------------------------------------------------------


@dataclass
class Group:
    """A doctor, ``recipients`` patients and their care-team thread.

    Only the doctor is a member at first: the patients join after they have
    connected, or each connection would announce its user's presence to every
    co-member (a thousand connections, a million pushes) before the run.
    """

    sender: rt.Person
    sender_keys: DeviceKeys
    sender_device: UUID
    recipients: list[rt.Person]
    probe_keys: DeviceKeys  # recipients[0]'s device: it opens every envelope it gets
    probe_device: UUID
    sealed_for: dict[UUID, bytes]  # recipient device -> X25519 public key
    thread_id: UUID


async def _device(conn: asyncpg.Connection, person: rt.Person) -> tuple[DeviceKeys, UUID]:
    keys = DeviceKeys.generate()
    device = await messaging.register_device(
        conn,
        user_id=person.user_id,
        x25519_public=keys.encryption_public_key,
        ed25519_public=keys.signing_public_key,
    )
    return keys, device.id


async def prepare_group(db: rt.Database, recipients: int, sealed: int, label: str) -> Group:
    conn = await asyncpg.connect(db.dsn)
    try:
        [sender] = await rt.add_people(conn, db, Role.DOCTOR, 1, f"{label}-sender")
        people = await rt.add_people(conn, db, Role.PATIENT, recipients, f"{label}-recipient")
        sender_keys, sender_device = await _device(conn, sender)
        sealed_for: dict[UUID, bytes] = {}
        keyed = [await _device(conn, person) for person in people[: sealed - 1]]
        for keys, device in keyed:
            sealed_for[device] = keys.encryption_public_key
        thread = await messaging.create_thread(
            conn,
            clinic_id=db.clinic_id,
            kind=ThreadKind.CARE_TEAM,
            created_by=sender.user_id,
            members=[(sender.user_id, Role.DOCTOR.value)],
        )
    finally:
        await conn.close()
    return Group(sender, sender_keys, sender_device, people, *keyed[0], sealed_for, thread.id)


async def add_members(db: rt.Database, group: Group) -> None:
    conn = await asyncpg.connect(db.dsn)
    try:
        async with conn.transaction():
            for person in group.recipients:
                await messaging.add_member(
                    conn, thread_id=group.thread_id, user_id=person.user_id, role="patient"
                )
    finally:
        await conn.close()


def envelope_bytes(group: Group, index: int, body: int) -> bytes:
    env = seal(
        plaintext=plaintext(index, body),
        thread_id=group.thread_id,
        sender=group.sender_keys,
        sender_device_id=group.sender_device,
        recipients=group.sealed_for,
        client_msg_id=client_msg_id(index),
    )
    return bytes(to_msgpack(env))


# --- counting -------------------------------------------------------------------------


class Tally:
    """Who got which message when: deliveries in the window, latencies, order, losses.

    ``slots`` holds the sender to ``window`` messages that have not reached everyone.
    """

    def __init__(self, recipients: int, window: int, warmup: float, duration: float) -> None:
        self.recipients = recipients
        self.slots = asyncio.Semaphore(window)
        self.idle = asyncio.Event()
        self.idle.set()
        self.started = time.perf_counter()
        self.measure_from = self.started + warmup
        self.measure_to = self.measure_from + duration
        self.sent_at: dict[int, float] = {}
        self.waiting: dict[int, int] = {}  # index -> recipients still to get it
        self.next_index = [0] * recipients
        self.misordered = 0
        self.in_window = 0
        self.total = 0
        self.completed = 0
        self.live = 0
        self.delivery = Latency()  # send -> each recipient
        self.complete = Latency()  # send -> the last recipient
        self.errors: dict[str, int] = {}

    def error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1

    def sent(self, index: int) -> None:
        self.sent_at[index] = time.perf_counter()
        self.waiting[index] = self.recipients
        self.idle.clear()

    def refused(self, index: int, code: str) -> None:
        """The server refused message ``index``: nobody will get it."""
        self.error(code)
        if self.waiting.pop(index, None) is not None:
            self._done()

    def got(self, recipient: int, index: int) -> None:
        now = time.perf_counter()
        if index != self.next_index[recipient]:
            self.misordered += 1
        self.next_index[recipient] = max(self.next_index[recipient], index + 1)
        self.total += 1
        self.live += 1
        if self.measure_from <= now <= self.measure_to:
            self.in_window += 1
        sent = self.sent_at.get(index, now)
        counted = self.measure_from <= sent < self.measure_to
        if counted:
            self.delivery.record(now - sent)
        left = self.waiting.get(index)
        if left is None:
            return  # a duplicate: misordered already counted it
        if left > 1:
            self.waiting[index] = left - 1
            return
        del self.waiting[index]
        self.completed += 1
        if counted:
            self.complete.record(now - sent)
        self._done()

    def _done(self) -> None:
        self.slots.release()
        if not self.waiting:
            self.idle.set()

    @property
    def lost(self) -> int:
        return sum(self.waiting.values())


# --- the two kinds of client ----------------------------------------------------------


Payload = Callable[[int], tuple[dict[str, Any], bytes]]  # message index -> (data, attachment)


class SioClients:
    """Recipients and a sender on a ``/chat`` namespace, through the lean Socket.IO client.

    ``payload(index)`` is what the sender's ``send`` carries (its envelope as the
    one binary attachment); a recipient finds the index in the pushed message's
    ``client_msg_id``. ``probe``, when given, checks what recipient 0 receives.
    """

    def __init__(
        self,
        base: str,
        tally: Tally,
        auths: list[dict[str, Any]],
        sender_auth: dict[str, Any],
        payload: Payload,
        probe: Callable[[int, bytes], str | None] | None = None,
    ) -> None:
        self.base, self.tally, self.auths, self.sender_auth = base, tally, auths, sender_auth
        self.payload, self.probe = payload, probe
        self.conns: list[SioConnection] = []
        self.sender: SioConnection | None = None
        self.probed = 0

    async def open(self, session: aiohttp.ClientSession) -> None:
        auths = self.auths
        self.conns = await open_all(
            len(auths), lambda i: SioConnection.open(session, self.base, NAMESPACE, auths[i])
        )
        for i, conn in enumerate(self.conns):
            conn.on_event = self._receiver(i)
        self.sender = await SioConnection.open(session, self.base, NAMESPACE, self.sender_auth)
        self.sender.on_ack = self._ack

    def _receiver(self, i: int) -> Callable[[str, Any, list[bytes]], None]:
        tally = self.tally

        def on_event(event: str, data: Any, attachments: list[bytes]) -> None:
            if event != "message":
                return
            index = int(data["client_msg_id"][-10:])
            tally.got(i, index)
            if i == 0 and self.probe is not None:
                problem = self.probe(index, attachments[0] if attachments else b"")
                if problem:
                    tally.error(f"probe: {problem}")
                else:
                    self.probed += 1

        return on_event

    def _ack(self, ack_id: int, answer: Any) -> None:
        if not isinstance(answer, dict) or not answer.get("ok"):
            code = (answer or {}).get("error", {}).get("code", "bad ack")
            self.tally.refused(ack_id - 1, f"send: {code}")

    async def send(self, index: int) -> None:
        assert self.sender is not None
        data, attachment = self.payload(index)
        frame = event_frame(NAMESPACE, "send", data, index + 1, binary=True)
        await self.sender.emit(frame, attachment)

    async def close(self) -> None:
        await close_all([*self.conns, *([self.sender] if self.sender else [])])


def teleconsult_clients(base: str, group: Group, tally: Tally, body: int) -> SioClients:
    """Real envelopes to the group's thread; recipient 0 opens every one as the app would."""
    auths = [{"token": p.token, "encoding": "msgpack"} for p in group.recipients]
    sender = {"token": group.sender.token, "encoding": "msgpack"}

    def payload(index: int) -> tuple[dict[str, Any], bytes]:
        data = {"thread_id": str(group.thread_id), "envelope": PLACEHOLDER}
        return data, envelope_bytes(group, index, body)

    def probe(index: int, attachment: bytes) -> str | None:
        try:
            opened = open_envelope(
                from_msgpack(attachment),
                me=group.probe_keys,
                my_device_id=group.probe_device,
                sender_signing_key=group.sender_keys.signing_public_key,
            )
        except EnvelopeError as exc:
            return str(exc)
        return None if opened == plaintext(index, body) else "wrong plaintext"

    return SioClients(base, tally, auths, sender, payload, probe)


def minimal_sio_clients(base: str, tally: Tally, recipients: int, envelope: bytes) -> SioClients:
    """The reference pushes what the sender sends: a message shaped like teleconsult's push."""

    def payload(index: int) -> tuple[dict[str, Any], bytes]:
        data = {
            "thread_id": "00000000-0000-4000-8000-000000000000",
            "seq": index + 1,
            "client_msg_id": client_msg_id(index),
            "sender_user_id": "00000000-0000-4000-8000-000000000001",
            "sender_device_id": "00000000-0000-4000-8000-000000000002",
            "created_at": "2026-01-01T00:00:00.000000Z",
            "envelope": PLACEHOLDER,
        }
        return data, envelope

    return SioClients(base, tally, [{}] * recipients, {}, payload)


class ReferenceClients:
    """The same recipients and sender on the bare broadcaster's ``/ws``."""

    def __init__(self, base: str, payload: bytes, tally: Tally, recipients: int) -> None:
        self.base, self.payload, self.tally, self.recipients = base, payload, tally, recipients
        self.conns: list[aiohttp.ClientWebSocketResponse] = []
        self.readers: list[asyncio.Task[None]] = []
        self.sender: aiohttp.ClientWebSocketResponse | None = None
        self.probed = 0

    async def open(self, session: aiohttp.ClientSession) -> None:
        url = f"{self.base}/ws"
        self.conns = await open_all(self.recipients, lambda i: session.ws_connect(url))
        self.readers = [asyncio.create_task(self._read(i, ws)) for i, ws in enumerate(self.conns)]
        self.sender = await session.ws_connect(url)

    async def _read(self, i: int, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.BINARY:
                self.tally.got(i, int.from_bytes(msg.data[:8], "big"))

    async def send(self, index: int) -> None:
        assert self.sender is not None
        await self.sender.send_bytes(index.to_bytes(8, "big") + self.payload)

    async def close(self) -> None:
        for task in self.readers:
            task.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)
        conns = [*self.conns, *([self.sender] if self.sender else [])]
        await asyncio.gather(*(ws.close() for ws in conns), return_exceptions=True)


async def open_all(count: int, opener: Callable[[int], Awaitable[T]]) -> list[T]:
    gate = asyncio.Semaphore(CONNECT_PARALLEL)

    async def one(i: int) -> T:
        async with gate:
            return await opener(i)

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def close_all(conns: list[SioConnection]) -> None:
    await asyncio.gather(*(conn.close() for conn in conns), return_exceptions=True)


# --- one run --------------------------------------------------------------------------

Clients = SioClients | ReferenceClients


async def drive(clients: Clients, tally: Tally, label: str, drain: float) -> None:
    """Send while the window lasts, ``window`` messages in flight; then wait for stragglers."""
    index = 0
    ticker = asyncio.create_task(progress(tally, label))
    try:
        while True:
            left = tally.measure_to - time.perf_counter()
            if left <= 0:
                break
            try:
                await asyncio.wait_for(tally.slots.acquire(), left)
            except TimeoutError:
                break
            tally.sent(index)
            await clients.send(index)
            index += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(tally.idle.wait(), drain)
    finally:
        ticker.cancel()
        await asyncio.gather(ticker, return_exceptions=True)


async def progress(tally: Tally, label: str) -> None:
    cpu, wall = time.process_time(), time.perf_counter()
    while True:
        await asyncio.sleep(1.0)
        now_cpu, now = time.process_time(), time.perf_counter()
        phase = "warm-up" if now < tally.measure_from else "measure"
        if now > tally.measure_to:
            phase = "drain"
        rt.say(
            f"[{label}] {phase} t={now - tally.started:5.1f}s "
            f"{tally.live / (now - wall):8.0f} deliveries/s  sent {len(tally.sent_at)}  "
            f"in flight {len(tally.waiting)}  gen cpu {(now_cpu - cpu) / (now - wall):4.0%}"
        )
        tally.live = 0
        cpu, wall = now_cpu, now


async def edges(tally: Tally, meter: rt.Meter, profile: Callable[[], Profile | None]) -> Any:
    """Start the meter (and py-spy) at the window's start; stop it at its end."""
    await asyncio.sleep(max(0.0, tally.measure_from - time.perf_counter()))
    await meter.start()
    spy = profile()
    await asyncio.sleep(max(0.0, tally.measure_to - time.perf_counter()))
    cpu = await meter.stop()
    return cpu, (await spy.finish() if spy else None)


def outcome(
    target: str, round_no: int, tally: Tally, cpu: Any, args: argparse.Namespace, probed: int
) -> rt.Outcome:
    delivery, complete = summarize(tally.delivery.total), summarize(tally.complete.total)
    rate = tally.in_window / args.duration
    found = rt.Outcome(
        target=target,
        round=round_no,
        figure=rate,
        fields={
            "deliveries_per_s": rate,
            "messages_per_s": rate / args.recipients,
            "delivery_p50_ms": delivery["p50"],
            "delivery_p99_ms": delivery["p99"],
            "complete_p50_ms": complete["p50"],
            "complete_p99_ms": complete["p99"],
            "messages_sent": len(tally.sent_at),
            "deliveries": tally.total,
            "lost": tally.lost,
            "misordered": tally.misordered,
            "errors": sum(tally.errors.values()),
            "error_kinds": dict(tally.errors),
            "envelopes_opened": probed,
            "server_us_per_delivery": (cpu.server / rate * 1e6) if rate else None,
        },
        cpu=cpu,
    )
    found.judge()
    if tally.lost:
        found.invalid.append(
            f"{tally.lost} deliveries lost: {len(tally.waiting)} messages did not reach everyone"
        )
    if tally.misordered:
        found.invalid.append(f"{tally.misordered} deliveries out of order or twice")
    if tally.errors:
        found.invalid.append(f"errors: {tally.errors}")
    return found


async def bench_target(
    target: str,
    round_no: int,
    db: rt.Database,
    args: argparse.Namespace,
    cores: tuple[int, int] | None,
    payload: bytes,
) -> rt.Outcome:
    label = target if args.rounds == 1 else f"{target} #{round_no}"
    port = _free_port()
    base = f"http://{HOST}:{port}"
    life = int(args.warmup + args.duration + args.drain + 300)
    group: Group | None = None
    if target.startswith("teleconsult"):
        rt.say(f"[{label}] preparing a doctor, {args.recipients} patients and their thread")
        group = await prepare_group(db, args.recipients, args.sealed, f"r{round_no}{target}")
    monitor = await asyncpg.connect(db.dsn)
    clients: Clients | None = None
    server: ServerProcess | None = None
    with tempfile.TemporaryDirectory(prefix="bench-fanout-") as data_dir:
        try:
            if group is not None:
                env = rt.teleconsult_env(db, port, Path(data_dir), redis=target.endswith("redis"))
                server = rt.start_teleconsult(target, env, cores, life)
            else:
                module = REFERENCES[target]
                server = rt.start_reference(target, module, port, cores, life)
            await rt.ready_at(base, server)
            async with client_session() as session:
                # Counting starts with the warm-up; the connections come first.
                tally = Tally(args.recipients, args.window, 3600.0, args.duration)
                if group is not None:
                    clients = teleconsult_clients(base, group, tally, args.body)
                elif target == "reference-sio":
                    clients = minimal_sio_clients(base, tally, args.recipients, payload)
                else:
                    clients = ReferenceClients(base, payload, tally, args.recipients)
                rt.say(f"[{label}] connecting {args.recipients} recipients and the sender")
                began = time.perf_counter()
                await clients.open(session)
                rt.say(f"[{label}] connected in {time.perf_counter() - began:.1f} s")
                if group is not None:
                    await add_members(db, group)
                tally.started = time.perf_counter()
                tally.measure_from = tally.started + args.warmup
                tally.measure_to = tally.measure_from + args.duration
                meter = rt.Meter(server.pid, monitor, db.name)

                def spy() -> Profile | None:
                    if args.profile is None or server is None:
                        return None
                    path = args.profile / f"fanout-{target}-{round_no}.txt"
                    return Profile(server.pid, args.duration, path)

                window = asyncio.create_task(edges(tally, meter, spy))
                await drive(clients, tally, label, args.drain)
                cpu, profile = await window
                server.check_alive()
                found = outcome(target, round_no, tally, cpu, args, clients.probed)
                found.profile = profile
                # The server goes first: recipients leaving one by one would each
                # announce their absence to every co-member.
                server.stop()
                await clients.close()
                return found
        finally:
            if server is not None:
                server.stop()
            await monitor.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async def sample(db: rt.Database, host: dict[str, Any]) -> bytes:
        """The references broadcast an envelope of the same size as teleconsult's."""
        group = await prepare_group(db, args.sealed, args.sealed, "sample")
        payload = envelope_bytes(group, 0, args.body)
        host["envelope_bytes"] = len(payload)
        return payload

    async def one(
        target: str, round_no: int, db: rt.Database, payload: bytes, cores: tuple[int, int] | None
    ) -> rt.Outcome:
        return await bench_target(target, round_no, db, args, cores, payload)

    host, outcomes = await rt.run_targets("fanout", args, sample, one)
    return rt.summary(
        "fanout: one sender to many recipients, deliveries per second",
        "bench.fanout",
        args,
        host,
        outcomes,
        COLUMNS,
        figure="deliveries per second",
        lower_is_better=False,
        references=("reference-sio", "reference"),
    )


COLUMNS = (
    rt.Column("deliv/s", "deliveries_per_s", ">8.0f"),
    rt.Column("msg/s", "messages_per_s", ">6.1f"),
    rt.Column("p50 ms", "delivery_p50_ms", ">7.1f"),
    rt.Column("p99 ms", "delivery_p99_ms", ">7.1f"),
    rt.Column("all p50", "complete_p50_ms", ">7.1f"),
    rt.Column("all p99", "complete_p99_ms", ">7.1f"),
    rt.Column("sent", "messages_sent", ">6d"),
    rt.Column("lost", "lost", ">5d"),
    rt.Column("errors", "errors", ">6d"),
    rt.Column("srv us/dlv", "server_us_per_delivery", ">10.1f"),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fanout",
        description="Fan-out deliveries/s: teleconsult against a bare aiohttp broadcaster.",
    )
    parser.add_argument("--recipients", type=int, default=1000, help="receiving connections")
    parser.add_argument(
        "--sealed",
        type=int,
        default=None,
        help=f"devices each envelope is sealed for, the sender's included (2-{MAX_RECIPIENTS}; "
        f"default: {MAX_RECIPIENTS}, or every recipient and the sender when fewer)",
    )
    parser.add_argument("--body", type=int, default=200, help="plaintext bytes per message")
    parser.add_argument("--window", type=int, default=4, help="messages in flight at most")
    parser.add_argument("--duration", type=positive, default=15.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds first")
    parser.add_argument("--drain", type=positive, default=10.0, help="wait for stragglers")
    rt.add_common_options(parser, TARGETS, ["teleconsult", "reference-sio", "reference"])
    args = parser.parse_args(argv)
    if args.sealed is None:
        args.sealed = min(MAX_RECIPIENTS, args.recipients + 1)
    if not 2 <= args.sealed <= MAX_RECIPIENTS or args.sealed - 1 > args.recipients:
        parser.error(f"--sealed must be 2..{MAX_RECIPIENTS} and at most --recipients + 1")
    if min(args.recipients, args.window, args.rounds, args.body) < 1 or args.warmup < 0:
        parser.error("--recipients, --window, --rounds, --body must be >= 1; --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return rt.finish(lambda: run(args), args)


if __name__ == "__main__":
    sys.exit(main())
