"""Signaling: join -> answer latency when many rooms join at once, against a Socket.IO
server that answers ``join`` with a constant.

Run: ``.venv/bin/python -m bench.signal_join [--rooms 200] [--waves 5] [--smoke]``.

Each room has a doctor and a patient, each with a WebSocket connection to
``/signal`` (``2 x --rooms`` connections, opened before anything is timed). A
*wave* is every connection sending ``join`` at once, each to its own room; a
join's latency runs from its send to its ack. Then everyone sends ``leave`` and
the next wave joins fresh rooms; the first ``--warmup-waves`` do not count.

* ``teleconsult`` (``-redis``: rooms and bus in Redis): each room is the
  consultation of a confirmed video appointment whose join window is open now. A
  join checks access and records its events in PostgreSQL (two statements),
  changes the room with one registry script, binds the socket to its peer on the
  hub and answers; the patient's join also tells the doctor.
* ``sio-constant``: ``bench/refs/pyref.py``, python-socketio with teleconsult's
  options answering ``join`` with a constant shaped like teleconsult's answer: the
  same connections, packets and acks, no work.

Confirm steps: every join answered ok (for teleconsult: the doctor admitted, the
patient waiting), every leave answered. ``wave ms`` is how long the generator
took to put a whole wave on the wire.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.harness import report
from bench.harness.latency import Recorder
from bench.harness.load import Progress, say
from bench.harness.report import Column, Row
from bench.harness.sio import SioConnection, client_session, event_frame
from bench.harness.world import Lab, Person, open_lab
from teleconsult.core.identity import Role
from teleconsult.scheduling import store as scheduling
from teleconsult.scheduling.records import AppointmentStatus, ServiceKind

TARGETS = ("teleconsult", "teleconsult-redis", "sio-constant")
COLUMNS = (
    Column("joins", "joins", ">6d"),
    Column("p50 ms", "p50_ms", ">7.1f"),
    Column("p90 ms", "p90_ms", ">7.1f"),
    Column("p99 ms", "p99_ms", ">7.1f"),
    Column("max ms", "max_ms", ">7.1f"),
    Column("wave ms", "send_ms", ">7.1f"),
    Column("srv ms/join+leave", "server_ms", ">17.2f"),
    Column("conn p99", "connect_p99_ms", ">8.1f"),
)


async def make_rooms(
    lab: Lab, doctors: list[Person], patients: list[Person], day: int
) -> list[str]:
    """Room ``r`` of the day: doctor ``r`` with patient ``r``, its join window open now."""
    now = datetime.now(UTC).replace(microsecond=0)
    starts = now.replace(hour=10, minute=0, second=0) + timedelta(days=day)
    rooms = []
    async with lab.connect() as conn, conn.transaction():
        for doctor, patient in zip(doctors, patients, strict=True):
            appointment = await scheduling.insert_appointment(
                conn,
                clinic_id=lab.clinic_id,
                doctor_id=doctor.user_id,
                patient_id=patient.user_id,
                service=ServiceKind.VIDEO,
                starts_at=starts,
                ends_at=starts + timedelta(minutes=30),
                created_by=doctor.user_id,
                status=AppointmentStatus.CONFIRMED,
            )
            consultation = await scheduling.insert_consultation(
                conn,
                appointment_id=appointment.id,
                join_opens_at=now - timedelta(minutes=5),
                join_closes_at=now + timedelta(hours=2),
            )
            rooms.append(str(consultation.room_id))
    return rooms


class Caller:
    """Requests with acks over one connection; each answer with its arrival time."""

    def __init__(self, conn: SioConnection) -> None:
        self.conn, self.next_id = conn, 0
        self.pending: dict[int, asyncio.Future[tuple[float, Any]]] = {}
        conn.on_ack = self._ack

    def _ack(self, ack_id: int, answer: Any) -> None:
        future = self.pending.pop(ack_id, None)
        if future is not None and not future.done():
            future.set_result((time.perf_counter(), answer))

    async def send(self, event: str, data: Any) -> tuple[float, asyncio.Future[tuple[float, Any]]]:
        self.next_id += 1
        future = self.pending[self.next_id] = asyncio.get_running_loop().create_future()
        sent = time.perf_counter()
        await self.conn.emit(event_frame("/signal", event, data, self.next_id, False))
        return sent, future


def problem(answer: Any, doctor: bool, strict: bool) -> str | None:
    if not isinstance(answer, dict) or not answer.get("ok"):
        error = answer.get("error", {}) if isinstance(answer, dict) else {}
        return f"join refused: {error.get('code', answer)}"
    expected = ("doctor", "admitted") if doctor else ("patient", "waiting")
    if strict and (answer.get("role"), answer.get("status")) != expected:
        return f"joined as {answer.get('role')}/{answer.get('status')}"
    return None


async def bench_target(
    lab: Lab, name: str, doctors: list[Person], patients: list[Person], args: argparse.Namespace
) -> Row:
    await lab.quiet()
    tc = name.startswith("teleconsult")
    waves = args.warmup_waves + args.waves
    rooms = [[f"ref-room-{w}-{r}" for r in range(args.rooms)] for w in range(waves)]
    if tc:
        say(f"[{name}] preparing {waves} x {args.rooms} rooms")
        rooms = [await make_rooms(lab, doctors, patients, lab.args.day + w) for w in range(waves)]
        lab.args.day += waves
    server = lab.teleconsult(name) if tc else lab.reference(name)
    joins, connect, send = Recorder(), Recorder(), Recorder()
    errors: Counter[str] = Counter()
    leaves_missing = 0
    row = Row(name)
    conns: list[SioConnection] = []
    try:
        await server.wait_http("/readyz")
        async with client_session() as session:
            gate = asyncio.Semaphore(50)

            async def one(person: Person) -> SioConnection:
                async with gate:
                    began = time.perf_counter()
                    conn = await SioConnection.open(
                        session, server.base, "/signal", {"token": person.token}
                    )
                    connect.record(time.perf_counter() - began)
                    return conn

            pairs = [p for pair in zip(doctors, patients, strict=True) for p in pair]
            conns = list(await asyncio.gather(*(one(p) for p in pairs)))
            callers = [Caller(c) for c in conns]
            say(f"[{name}] {len(conns)} connections open; server pid {server.pid}")
            meter = lab.meter(server)
            said = ""
            async with Progress(name, lambda: said, meter):
                for number in range(waves):
                    counted = number >= args.warmup_waves
                    if number == args.warmup_waves:
                        await meter.start()
                    began = time.perf_counter()
                    sent = [
                        await c.send("join", {"room_id": rooms[number][i // 2]})
                        for i, c in enumerate(callers)
                    ]
                    wave_send = time.perf_counter() - began
                    done, _ = await asyncio.wait([f for _, f in sent], timeout=args.timeout)
                    got = Recorder()
                    for i, (at, future) in enumerate(sent):
                        if future not in done:
                            errors["no answer in time"] += counted
                            continue
                        answered, answer = future.result()
                        why = problem(answer, doctor=i % 2 == 0, strict=tc)
                        if why:
                            errors[why] += counted
                        else:
                            got.record(answered - at)
                    leaves = [await c.send("leave", {}) for c in callers]
                    _, late = await asyncio.wait([f for _, f in leaves], timeout=args.timeout)
                    said = f"wave {number + 1}/{waves}: p99 {got.p(99) * 1e3:.1f} ms"
                    if counted:
                        joins.add(got)
                        send.record(wave_send)
                        leaves_missing += len(late)
                    await asyncio.sleep(args.pause)
                row.cpu = await meter.stop()
            server.check_alive()
    finally:
        server.stop()
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
    ms = joins.ms()
    row.fields.update(
        rooms=args.rooms,
        joins=joins.count,
        **{f"{k}_ms": v for k, v in ms.items() if k in ("p50", "p90", "p99", "max")},
        send_ms=send.max * 1e3,
        connect_p99_ms=connect.p(99) * 1e3,
        server_ms=row.per_unit_us("server", joins.count) / 1e3,
        errors=dict(errors),
    )
    row.check(f"every join answered ok ({sum(errors.values())} not: {dict(errors)})", not errors)
    row.check(f"every leave answered ({leaves_missing} not)", not leaves_missing)
    return row.judge()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with open_lab("signal", args) as lab:
        say(f"preparing {args.rooms} doctors and {args.rooms} patients")
        doctors = await lab.doctors(args.rooms)
        patients = await lab.people(Role.PATIENT, args.rooms)
        rows = [await bench_target(lab, name, doctors, patients, args) for name in args.targets]
        found, ratio_text = report.ratios(
            rows, "p99_ms", ["sio-constant"], higher_is_better=False, what="join -> answer p99"
        )
        head = f"{args.rooms} rooms ({2 * args.rooms} peers) joining at once, {args.waves} waves"
        text = [head, report.table(rows, COLUMNS), ratio_text, report.cpu_table(rows)]
        return report.document(
            "signal_join", args, lab.facts, rows, "\n".join(t for t in text if t), ratios=found
        )


def main(argv: list[str] | None = None) -> int:
    p = report.parser("bench.signal_join", __doc__, TARGETS, ("teleconsult", "sio-constant"))
    p.add_argument("--rooms", type=int, default=200, help="rooms joining at once (x2 peers)")
    p.add_argument("--waves", type=int, default=5, help="counted waves")
    p.add_argument("--warmup-waves", type=int, default=1, help="waves not counted, first")
    p.add_argument("--pause", type=float, default=1.0, help="seconds between waves")
    p.add_argument("--timeout", type=report.positive, default=30.0, help="per join, seconds")
    args = p.parse_args(argv)
    if args.smoke:
        args.rooms, args.waves, args.warmup_waves, args.pause = 5, 2, 1, 0.2
    args.day = 1  # each teleconsult run books days of its own, from tomorrow
    return report.main(lambda: run(args), args)


if __name__ == "__main__":
    sys.exit(main())
