"""Chat delivery: the highest message rate with send->delivered p99 <= 50 ms, and the
server's CPU per delivered message, teleconsult against python-socketio references.

Run: ``.venv/bin/python -m bench.chat_delivery [--targets ...] [--pairs 32] [--smoke]``.

``--pairs`` pairs of Socket.IO connections (lean client, WebSocket) from this
process; each message goes from one end of a pair to the other, round-robin
over every connection. Targets, each on the server core in turn:

* ``teleconsult`` (``-redis``: with Redis): ``/chat`` with msgpack; a ``send``
  carries a real sealed envelope (2 devices) that the server checks, stores with
  its audit row, pushes and acks;
* ``sio-batch``: python-socketio, each message stored by a multi-row INSERT every
  2 ms before it is pushed and acked (``bench/refs/pyref.py --persist batch``);
* ``sio-insert``: the same with one INSERT per message (``--persist each``);
* ``sio-relay``: the same, nothing stored: the framework's ceiling;
* ``node-socketio``: Node.js and socket.io, nothing stored.

The references get payloads of the envelope's size and push a message shaped like
teleconsult's. Per target: the rate search of ``bench.harness.steps``, the
confirm run is the row; then every other target runs at teleconsult's rate, so
server CPU per message compares at the same load. Confirm steps: every message
acked ok, every acked message delivered, rows stored = messages acked, and for
teleconsult one envelope opened and verified by its recipient.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from typing import Any
from uuid import uuid4

from bench.harness import report
from bench.harness.load import Progress, open_loop, say
from bench.harness.procs import ServerProcess
from bench.harness.report import Column, Row
from bench.harness.sio import PLACEHOLDER, SioConnection, client_session, event_frame
from bench.harness.steps import STEP_HEAD, Deliveries, Step, fill, rate_row, score, search
from bench.harness.world import (
    Device,
    Lab,
    Pairs,
    envelope,
    index_of,
    msg_id,
    node_version,
    open_lab,
)
from teleconsult.client.crypto import DeviceKeys, open_envelope
from teleconsult.messaging.envelope import from_msgpack

TARGETS = (
    "teleconsult",
    "teleconsult-redis",
    "sio-batch",
    "sio-insert",
    "sio-relay",
    "node-socketio",
)
DEFAULT = ("teleconsult", "sio-batch", "sio-insert", "sio-relay")
PERSIST = {"sio-batch": "batch", "sio-insert": "each", "sio-relay": "none"}
NAMESPACE = "/chat"
REF_THREAD = "00000000-0000-4000-8000-000000000000"
COLUMNS = (
    Column("msg/s at budget", "rate_text", ">15"),
    Column("p50 ms", "p50_ms", ">7.2f"),
    Column("p99 ms", "p99_ms", ">7.2f"),
    Column("srv us/msg", "server_us", ">10.0f"),
    Column("db us/msg", "db_us", ">9.0f"),
)


class Target:
    """One server's connections; messages are indices, unique across the invocation."""

    next_index = 0

    def __init__(self, lab: Lab, name: str, server: ServerProcess, fixture: Pairs) -> None:
        self.lab, self.name, self.server, self.fixture = lab, name, server, fixture
        self.args = lab.args
        self.tc = name.startswith("teleconsult")
        self.links: list[SioConnection] = []
        self.current: Deliveries | None = None
        self.acked_total = 0  # every ok ack of this target, whatever its step
        keys = DeviceKeys.generate()
        me, peer = Device(keys, uuid4()), Device(DeviceKeys.generate(), uuid4())
        self.template = envelope(me, [me, peer], uuid4(), b"x" * self.args.body, msg_id(0))
        self.meter = lab.meter(server)

    async def open(self, session: Any) -> None:
        gate = asyncio.Semaphore(32)

        async def one(k: int) -> SioConnection:
            auth: dict[str, Any] = {"pair": k // 2}
            if self.tc:
                auth = {"token": self.fixture.people[k].token, "encoding": "msgpack"}
            async with gate:
                conn = await SioConnection.open(session, self.server.base, NAMESPACE, auth)
            conn.on_ack, conn.on_event = self._ack, self._event
            conn.on_close = self._lost
            return conn

        self.links = list(await asyncio.gather(*(one(k) for k in range(2 * self.args.pairs))))

    def _ack(self, ack_id: int, payload: Any) -> None:
        ok = isinstance(payload, dict) and payload.get("ok")
        self.acked_total += bool(ok)
        error = None if ok else str((payload or {}).get("error", {}).get("code", "bad_ack"))
        if self.current is not None:
            self.current.ack(ack_id, error)

    def _event(self, event: str, data: Any, attachments: list[bytes]) -> None:
        if event == "message" and isinstance(data, dict) and self.current is not None:
            index = index_of(data.get("client_msg_id"))
            if index is not None:
                self.current.deliver(index)

    def _lost(self) -> None:
        if self.current is not None:
            self.current.lost_link()

    def message(self, index: int, sender: int | None = None) -> tuple[int, str, bytes]:
        """(sending link, frame, attachment) of message ``index``; round-robin by default."""
        sender = index % len(self.links) if sender is None else sender
        if not self.tc:
            data = {
                "thread_id": REF_THREAD,
                "client_msg_id": msg_id(index),
                "envelope": PLACEHOLDER,
            }
            return sender, event_frame(NAMESPACE, "send", data, index, True), self.template
        f, peer = self.fixture, sender ^ 1
        thread = f.threads[sender // 2]
        body = b"x" * self.args.body
        sealed = envelope(
            f.devices[sender], [f.devices[sender], f.devices[peer]], thread, body, msg_id(index)
        )
        data = {"thread_id": str(thread), "envelope": PLACEHOLDER}
        return sender, event_frame(NAMESPACE, "send", data, index, True), sealed

    async def step(self, rate: float, seconds: float, kind: str) -> Step:
        args = self.args
        count = int((args.warmup + seconds) * rate) + 2
        base, Target.next_index = Target.next_index, Target.next_index + count
        # Sealing is the sending device's work, done before the clock starts.
        out = [self.message(base + j) for j in range(count)]
        d = self.current = Deliveries(
            base, count, args.budget_ms / 1e3, first=math.ceil(args.warmup * rate)
        )

        async def send(j: int, due: float) -> None:
            d.send(j, due)
            sender, frame, attachment = out[j]
            await self.links[sender].emit(frame, attachment)

        plan = await open_loop(
            rate,
            seconds,
            args.warmup,
            send,
            meter=self.meter,
            stop=(lambda: d.hopeless(int(rate * seconds))) if kind == "search" else None,
        )
        await d.drain(args.drain)
        self.server.check_alive()
        return score(self.name, kind, d, plan)

    async def verify_one(self) -> bool:
        """Message on pair 0; the receiving device opens and verifies it: the real thing."""
        got: asyncio.Future[list[bytes]] = asyncio.get_running_loop().create_future()

        def take(event: str, data: Any, attachments: list[bytes]) -> None:
            if event == "message" and not got.done():
                got.set_result(attachments)

        index, Target.next_index = Target.next_index, Target.next_index + 1
        self.links[1].on_event = take
        try:
            _, frame, attachment = self.message(index, sender=0)
            await self.links[0].emit(frame, attachment)
            raw = (await asyncio.wait_for(got, 10))[0]
            f = self.fixture
            plain = open_envelope(
                from_msgpack(raw, max_bytes=len(raw)),
                me=f.devices[1].keys,
                my_device_id=f.devices[1].id,
                sender_signing_key=f.devices[0].keys.signing_public_key,
            )
        finally:
            self.links[1].on_event = self._event
        await asyncio.sleep(0.2)  # its ack
        return bool(plain == b"x" * self.args.body)

    async def stored(self) -> int | None:
        """Rows the target stored for its messages (None: it stores nothing)."""
        async with self.lab.connect() as conn:
            if self.tc:
                sql = "SELECT count(*) FROM messages WHERE thread_id = ANY($1::uuid[])"
                return int(await conn.fetchval(sql, self.fixture.threads))
            if PERSIST.get(self.name, "none") == "none":
                return None
            exists = await conn.fetchval("SELECT to_regclass('bench_ref_messages') IS NOT NULL")
            return (
                int(await conn.fetchval("SELECT count(*) FROM bench_ref_messages")) if exists else 0
            )


def start(lab: Lab, name: str) -> tuple[ServerProcess, str]:
    if name.startswith("teleconsult"):
        return lab.teleconsult(name), "/healthz"
    if name == "node-socketio":
        return lab.node(name), "/socket.io/?EIO=4&transport=polling"
    return lab.reference(name, "--persist", PERSIST[name]), "/readyz"


async def bench_target(
    lab: Lab, name: str, fixture: Pairs, same_rate: float | None
) -> tuple[Row, Row | None, list[Step]]:
    args = lab.args
    await lab.quiet()
    server, ready = start(lab, name)
    target: Target | None = None
    try:
        await server.wait_http(ready)
        target = Target(lab, name, server, fixture)
        baseline = await target.stored()
        async with client_session() as session:
            await target.open(session)
            say(f"[{name}] {len(target.links)} connections open, server pid {server.pid}")
            verified = await target.verify_one() if target.tc else None
            say(STEP_HEAD)
            d = target

            def text() -> str:
                c = d.current
                return f"sent {c.sent} late {c.late}" if c is not None else "connecting"

            async with Progress(name, text, target.meter):
                steps, confirm = await search(
                    target.step,
                    start=args.start_rate,
                    resolution=args.resolution,
                    max_steps=args.max_steps,
                    step_seconds=args.duration,
                    confirm_seconds=args.confirm,
                )
                same = None
                if same_rate is not None and not target.tc:
                    same = await target.step(same_rate, args.confirm, "same-load")
                    steps.append(same)
                stored = await target.stored()
            await asyncio.gather(*(c.close() for c in target.links), return_exceptions=True)
    finally:
        server.stop()
    row = rate_row(name, steps, confirm, args.budget_ms)
    if verified is not None:
        row.check("one envelope opened and verified by its recipient", verified)
    if stored is not None and baseline is not None:
        made = stored - baseline
        row.check(
            f"rows stored = messages acked ({made} / {target.acked_total})",
            made == target.acked_total,
        )
    same_row = None
    if same is not None:
        same_row = Row(f"{name} @{same.rate:.0f}/s")
        fill(same_row, same)
    return row.judge(), same_row.judge() if same_row else None, steps


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with open_lab("chat", args) as lab:
        lab.facts["node"] = node_version() if "node-socketio" in args.targets else "-"
        fixture = Pairs([], [], [])
        if any(t.startswith("teleconsult") for t in args.targets):
            fixture = await lab.pairs(args.pairs)
        rows: list[Row] = []
        same: list[Row] = []
        steps: list[Step] = []
        same_rate: float | None = None
        for name in args.targets:
            row, at_same, tried = await bench_target(lab, name, fixture, same_rate)
            rows.append(row)
            steps += tried
            if at_same is not None:
                same.append(at_same)
            if name == "teleconsult" and row.fields.get("rate"):
                same_rate = row.fields["rate"]
                at = Row(f"teleconsult @{same_rate:.0f}/s", dict(row.fields), row.cpu, row.lag)
                at.checks, at.invalid = row.checks, row.invalid
                same.append(at)
        found, ratio_text = report.ratios(
            rows, "rate", TARGETS[2:], higher_is_better=True, what="rate at the budget"
        )
        text = [
            f"{args.pairs} pairs, {args.body}-byte texts, budget p99 <= {args.budget_ms:g} ms",
            report.table(rows, COLUMNS),
            ratio_text,
        ]
        if same:
            text += ["\nat teleconsult's rate, the same load for all:", report.table(same, COLUMNS)]
            more, same_text = report.ratios(
                same,
                "server_us",
                TARGETS[2:],
                higher_is_better=False,
                what="server CPU per message",
            )
            found += more
            text.append(same_text)
        text += [
            "",
            "steps:",
            STEP_HEAD,
            *(s.line() for s in steps),
            "",
            report.cpu_table(rows + same),
        ]
        return report.document(
            "chat_delivery",
            args,
            lab.facts,
            rows + same,
            "\n".join(t for t in text if t),
            ratios=found,
            steps=[s.json() for s in steps],
        )


def main(argv: list[str] | None = None) -> int:
    p = report.parser("bench.chat_delivery", __doc__, TARGETS, DEFAULT)
    p.add_argument("--budget-ms", type=report.positive, default=50.0, help="send->delivered p99")
    p.add_argument("--pairs", type=int, default=32, help="pairs of connections")
    p.add_argument("--body", type=int, default=100, help="plaintext bytes per message")
    p.add_argument("--start-rate", type=report.positive, default=200.0, help="first rate, msg/s")
    p.add_argument("--resolution", type=report.positive, default=0.15, help="search stops here")
    p.add_argument("--max-steps", type=int, default=12, help="search steps per target")
    p.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds per step")
    p.add_argument("--duration", type=report.positive, default=2.0, help="measured s per step")
    p.add_argument("--confirm", type=report.positive, default=5.0, help="measured s, confirm run")
    p.add_argument("--drain", type=report.positive, default=10.0, help="wait for stragglers, s")
    found = p.parse_args(argv)
    if found.smoke:
        found.pairs, found.start_rate, found.max_steps = 1, 20.0, 1
        found.warmup, found.duration, found.confirm, found.drain = 0.1, 0.4, 0.4, 5.0
        found.budget_ms = 60_000.0  # a smoke run checks behaviour, never speed
    return report.main(lambda: run(found), found)


if __name__ == "__main__":
    sys.exit(main())
