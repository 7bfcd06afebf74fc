"""Fan-out: one sender to 1,000 recipients, deliveries per second, against a bare
python-socketio room broadcast.

Run: ``.venv/bin/python -m bench.fanout [--recipients 1000] [--window 4] [--smoke]``.

* ``teleconsult`` (``-redis``: bus in Redis): a doctor sends to a care-team thread
  of ``--recipients`` patients, each connected once to ``/chat`` (msgpack). Every
  message is a real envelope sealed for ``--sealed`` devices (64, the limit: the
  sender's and 63 recipients'; the others get the same push without a key) that
  the server checks, stores with its audit row and pushes to every member.
  Members join the thread after connecting, or every connect would announce its
  presence to everyone already there.
* ``sio-room``: ``bench/refs/pyref.py``: every connection in one python-socketio
  room; the sender's ``send`` (the same envelope size, a push shaped like
  teleconsult's) is emitted to the room, encoded once. Nothing stored or checked.

The sender keeps ``--window`` messages in flight: the next goes when one has reached
everyone. Deliveries count in the measured window. Confirm steps: every recipient
got every message once and in order, every send was acked ok, and for teleconsult
recipient 0 opened and verified every envelope and the server stored every message.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from typing import Any
from uuid import uuid4

from bench.harness import report
from bench.harness.latency import Recorder
from bench.harness.load import Progress, say
from bench.harness.report import Column, Row
from bench.harness.sio import PLACEHOLDER, SioConnection, client_session, event_frame
from bench.harness.world import Device, Lab, Person, envelope, index_of, msg_id, open_lab
from teleconsult.client.crypto import DeviceKeys, open_envelope
from teleconsult.core.identity import Role
from teleconsult.messaging import store as messaging
from teleconsult.messaging.envelope import MAX_RECIPIENTS, EnvelopeError, from_msgpack
from teleconsult.messaging.records import ThreadKind

TARGETS = ("teleconsult", "teleconsult-redis", "sio-room")
COLUMNS = (
    Column("deliv/s", "deliveries_per_s", ">8.0f"),
    Column("msg/s", "messages_per_s", ">6.1f"),
    Column("p50 ms", "p50_ms", ">7.1f"),
    Column("p99 ms", "p99_ms", ">7.1f"),
    Column("all p99", "all_p99_ms", ">7.1f"),
    Column("sent", "sent", ">5d"),
    Column("lost", "lost", ">5d"),
    Column("srv us/dlv", "server_us", ">10.1f"),
)


def text(index: int, size: int) -> bytes:
    head = f"fan-out message {index} ".encode()
    return head + b"x" * max(0, size - len(head))


class Tally:
    """Who got which message when; ``slots`` holds the sender to the window."""

    def __init__(self, recipients: int, window: int) -> None:
        self.recipients = recipients
        self.slots = asyncio.Semaphore(window)
        self.idle = asyncio.Event()
        self.idle.set()
        self.measure = (float("inf"), float("inf"))
        self.sent_at: dict[int, float] = {}
        self.waiting: dict[int, int] = {}  # index -> recipients still to get it
        self.next = [0] * recipients
        self.misordered = self.in_window = self.live = self.refused = self.bad_probe = 0
        self.delivery, self.complete = Recorder(), Recorder()

    def sent(self, index: int) -> None:
        self.sent_at[index] = time.perf_counter()
        self.waiting[index] = self.recipients
        self.idle.clear()

    def refuse(self, index: int) -> None:
        self.refused += 1
        if self.waiting.pop(index, None) is not None:
            self._done()

    def got(self, recipient: int, index: int) -> None:
        now = time.perf_counter()
        self.misordered += index != self.next[recipient]
        self.next[recipient] = max(self.next[recipient], index + 1)
        self.live += 1
        self.in_window += self.measure[0] <= now <= self.measure[1]
        sent = self.sent_at.get(index, now)
        counted = self.measure[0] <= sent < self.measure[1]
        if counted:
            self.delivery.record(now - sent)
        left = self.waiting.get(index)
        if left is None:
            return
        if left > 1:
            self.waiting[index] = left - 1
            return
        del self.waiting[index]
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


class Group:
    """teleconsult's side: the doctor, the patients, the keys, the thread."""

    def __init__(self, sender: Person, recipients: list[Person], devices: list[Device]) -> None:
        self.sender, self.recipients, self.devices = sender, recipients, devices
        self.thread = uuid4()

    @classmethod
    async def make(cls, lab: Lab, recipients: int, sealed: int) -> Group:
        [sender] = await lab.people(Role.DOCTOR, 1)
        people = await lab.people(Role.PATIENT, recipients)
        group = cls(sender, people, await lab.devices([sender, *people[: sealed - 1]]))
        group.thread = await lab.thread(
            ThreadKind.CARE_TEAM, [(sender, Role.DOCTOR)], creator=sender
        )
        return group

    async def add_members(self, lab: Lab) -> None:
        async with lab.connect() as conn, conn.transaction():
            for p in self.recipients:
                await messaging.add_member(
                    conn, thread_id=self.thread, user_id=p.user_id, role="patient"
                )

    def envelope(self, index: int, body: int) -> bytes:
        sender = self.devices[0]
        return envelope(sender, self.devices, self.thread, text(index, body), msg_id(index))

    def opens(self, index: int, raw: bytes, body: int) -> bool:
        probe = self.devices[1]
        try:
            plain = open_envelope(
                from_msgpack(raw, max_bytes=len(raw)),
                me=probe.keys,
                my_device_id=probe.id,
                sender_signing_key=self.devices[0].keys.signing_public_key,
            )
        except EnvelopeError:
            return False
        return plain == text(index, body)


async def bench_target(lab: Lab, name: str, args: argparse.Namespace) -> Row:
    await lab.quiet()
    tc = name.startswith("teleconsult")
    group = await Group.make(lab, args.recipients, args.sealed) if tc else None
    fake = [Device(DeviceKeys.generate(), uuid4()) for _ in range(args.sealed)]
    template = envelope(fake[0], fake, uuid4(), text(0, args.body), msg_id(0))
    server = lab.teleconsult(name) if tc else lab.reference(name)
    tally = Tally(args.recipients, args.window)
    conns: list[SioConnection] = []
    row = Row(name)
    try:
        await server.wait_http("/readyz")
        async with client_session() as session:
            gate = asyncio.Semaphore(50)

            async def connect(person: Person | None) -> SioConnection:
                auth: dict[str, Any] = {"room": "all"}
                if person is not None:
                    auth = {"token": person.token, "encoding": "msgpack"}
                async with gate:
                    return await SioConnection.open(session, server.base, "/chat", auth)

            people: list[Person | None] = (
                list(group.recipients) if group else [None] * args.recipients
            )
            say(f"[{name}] connecting {len(people)} recipients; server pid {server.pid}")
            conns = list(await asyncio.gather(*(connect(p) for p in people)))
            sender = await connect(group.sender if group else None)
            conns.append(sender)
            opened = 0

            def receiver(i: int) -> Any:
                def on_event(event: str, data: Any, attachments: list[bytes]) -> None:
                    nonlocal opened
                    index = index_of(data.get("client_msg_id")) if event == "message" else None
                    if index is None:
                        return
                    tally.got(i, index)
                    if i == 0 and group is not None:
                        ok = group.opens(index, attachments[0] if attachments else b"", args.body)
                        opened += ok
                        tally.bad_probe += not ok

                return on_event

            for i, conn in enumerate(conns[:-1]):
                conn.on_event = receiver(i)
            sender.on_ack = lambda ack_id, answer: (
                None if isinstance(answer, dict) and answer.get("ok") else tally.refuse(ack_id)
            )
            if group is not None:
                await group.add_members(lab)
            meter = lab.meter(server)
            began = time.perf_counter()
            tally.measure = (began + args.warmup, began + args.warmup + args.duration)
            index = 0

            def line() -> str:
                got, tally.live = tally.live, 0
                return f"{got:7d} deliveries, sent {index}, in flight {len(tally.waiting)}"

            async with Progress(name, line, meter):
                edges = asyncio.create_task(window(meter, tally))
                while time.perf_counter() < tally.measure[1]:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            tally.slots.acquire(), tally.measure[1] - time.perf_counter()
                        )
                        data: dict[str, Any] = {"thread_id": "t", "client_msg_id": msg_id(index)}
                        attachment = template
                        if group is not None:
                            data = {"thread_id": str(group.thread)}
                            attachment = group.envelope(index, args.body)
                        data["envelope"] = PLACEHOLDER
                        tally.sent(index)
                        await sender.emit(
                            event_frame("/chat", "send", data, index, True), attachment
                        )
                        index += 1
                row.cpu = await edges
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(tally.idle.wait(), args.drain)
            server.check_alive()
            stored = None
            if group is not None:
                async with lab.connect() as conn:
                    sql = "SELECT count(*) FROM messages WHERE thread_id = $1"
                    stored = await conn.fetchval(sql, group.thread)
            # The server goes first: recipients leaving one by one would each announce it.
            server.stop()
            await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
    finally:
        server.stop()
    rate = tally.in_window / args.duration
    row.fields.update(
        deliveries_per_s=rate,
        messages_per_s=rate / args.recipients,
        p50_ms=tally.delivery.p(50) * 1e3,
        p99_ms=tally.delivery.p(99) * 1e3,
        all_p99_ms=tally.complete.p(99) * 1e3,
        sent=index,
        lost=tally.lost,
        envelope_bytes=len(template),
        server_us=row.per_unit_us("server", tally.in_window),
    )
    row.check(f"every recipient got every message ({tally.lost} missing)", not tally.lost)
    row.check(f"once and in order ({tally.misordered} not)", not tally.misordered)
    row.check(f"every send acked ok ({tally.refused} refused)", not tally.refused)
    if group is not None:
        row.check(f"recipient 0 opened every envelope ({opened}/{index})", opened == index)
        row.check(f"the server stored every message ({stored}/{index})", stored == index)
    return row.judge()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with open_lab("fanout", args) as lab:
        rows = [await bench_target(lab, name, args) for name in args.targets]
        found, ratio_text = report.ratios(
            rows, "deliveries_per_s", ["sio-room"], higher_is_better=True, what="deliveries/s"
        )
        head = f"one sender, {args.recipients} recipients, {args.window} in flight"
        text = "\n".join(
            x for x in (head, report.table(rows, COLUMNS), ratio_text, report.cpu_table(rows)) if x
        )
        return report.document("fanout", args, lab.facts, rows, text, ratios=found)


async def window(meter: Any, tally: Tally) -> Any:
    await asyncio.sleep(max(0.0, tally.measure[0] - time.perf_counter()))
    await meter.start()
    await asyncio.sleep(max(0.0, tally.measure[1] - time.perf_counter()))
    return await meter.stop()


def main(argv: list[str] | None = None) -> int:
    p = report.parser("bench.fanout", __doc__, TARGETS, ("teleconsult", "sio-room"))
    p.add_argument("--recipients", type=int, default=1000, help="receiving connections")
    p.add_argument("--sealed", type=int, default=MAX_RECIPIENTS, help="devices per envelope")
    p.add_argument("--body", type=int, default=200, help="plaintext bytes per message")
    p.add_argument("--window", type=int, default=4, help="messages in flight at most")
    p.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds first")
    p.add_argument("--duration", type=report.positive, default=15.0, help="measured seconds")
    p.add_argument("--drain", type=report.positive, default=10.0, help="wait for stragglers, s")
    args = p.parse_args(argv)
    if args.smoke:
        args.recipients, args.warmup, args.duration, args.drain = 5, 0.2, 0.8, 5.0
    args.sealed = max(2, min(args.sealed, args.recipients + 1, MAX_RECIPIENTS))
    return report.main(lambda: run(args), args)


if __name__ == "__main__":
    sys.exit(main())
