"""Booking: ``POST /api/v1/appointments`` against a raw INSERT of the same row.

Run: ``.venv/bin/python -m bench.booking [--concurrency 16] [--doctors 1] [--smoke]``.

``--doctors`` doctors (video, 30 minutes, no buffer, available every day
00:00-23:59) and ``--patients`` signed-in patients. Every request books its own
30-minute slot (slots in order, days ahead, doctors in turn, for the next patient
in turn), so no overlap constraint ever refuses one. Closed loop, the same
concurrency, warm-up and window for every target:

* ``teleconsult``: the whole path: token and session check, policy, doctor and
  availability reads, then one transaction writing the appointment under the
  doctor's and patient's locks, its consultation room, outbox rows and the audit row;
* ``raw-insert``: ``bench/refs/pyref.py``, bare aiohttp: verify the token, one
  ``INSERT INTO appointments`` of the same values (same table, same constraints)
  through a pool of the same size: the database's ceiling for this write.

Confirm steps: every booking answered 201, and the database holds exactly one
appointment per successful booking in the run's slots.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from bench.harness import report
from bench.harness.load import Refused, drive_http
from bench.harness.report import Column, Row
from bench.harness.world import Lab, Person, open_lab
from teleconsult.core.identity import Role

TARGETS = ("teleconsult", "raw-insert")
SLOTS_PER_DAY = 47  # 00:00 to 23:00: the last slot ends at 23:30, before 23:59
COLUMNS = (
    Column("bookings/s", "rate", ">10.0f"),
    Column("p50 ms", "p50", ">7.2f"),
    Column("p99 ms", "p99", ">7.2f"),
    Column("max ms", "max", ">7.2f"),
    Column("failed", "failed", ">6d"),
    Column("srv us/bk", "server_us", ">9.0f"),
    Column("db us/bk", "db_us", ">8.0f"),
)


class Slots:
    """Slot ``i``: doctor ``i % doctors`` at the ``i // doctors``-th half hour, days ahead."""

    def __init__(self, doctors: int) -> None:
        today = datetime.now(UTC).date() + timedelta(days=2)  # reminders still due
        self.origin = datetime(today.year, today.month, today.day, tzinfo=UTC)
        self.doctors, self.next = doctors, 0

    def take(self) -> int:
        self.next += 1
        return self.next - 1

    def align(self) -> tuple[datetime, int]:
        """A fresh start time for the next run: (its first start, its first slot)."""
        self.next = -(-self.next // self.doctors) * self.doctors
        return self.start(self.next), self.next

    def start(self, index: int) -> datetime:
        day, slot = divmod(index // self.doctors, SLOTS_PER_DAY)
        return self.origin + timedelta(days=day, minutes=30 * slot)


async def bench_target(
    lab: Lab, name: str, doctors: list[Person], patients: list[Person], slots: Slots
) -> Row:
    args = lab.args
    await lab.quiet()
    server = lab.teleconsult(name) if name == "teleconsult" else lab.reference(name, "--db")
    first_start, first = slots.align()
    headers = [
        {"Authorization": f"Bearer {p.token}", "Content-Type": "application/json"} for p in patients
    ]

    async def book(http: aiohttp.ClientSession, _: int) -> None:
        index = slots.take()
        body = {
            "doctor_id": str(doctors[index % len(doctors)].user_id),
            "service": "video",
            "starts_at": slots.start(index).isoformat(),
        }
        url = f"{server.base}/api/v1/appointments"
        hdrs = headers[index % len(headers)]
        async with http.post(url, data=json.dumps(body), headers=hdrs) as resp:
            text = await resp.read()
            if resp.status != 201:
                raise Refused(f"HTTP {resp.status}", text.decode(errors="replace"))

    try:
        await server.wait_http("/readyz")
        got = await drive_http(
            book,
            name,
            lab.meter(server),
            concurrency=args.concurrency,
            warmup=args.warmup,
            duration=args.duration,
        )
        server.check_alive()
    finally:
        server.stop()
    async with lab.connect() as conn:
        held = await conn.fetchval(
            "SELECT count(*) FROM appointments WHERE doctor_id = ANY($1::uuid[]) "
            "AND starts_at >= $2 AND starts_at <= $3",
            [d.user_id for d in doctors],
            first_start,
            slots.start(max(first, slots.next - 1)),
        )
    row = Row(name, cpu=got.cpu)
    row.fields.update(got.latency.ms(), rate=got.rate, failed=got.failed, held=held)
    row.fields.update(
        server_us=row.per_unit_us("server", got.completed),
        db_us=row.per_unit_us("db", got.completed),
    )
    row.notes += [f"error: {sample}" for sample in got.samples]
    if got.failed:
        row.notes.append("server log: " + " | ".join(server.last_log.splitlines()[-3:]))
    row.check(f"every booking answered 201 ({got.failed} not)", not got.failed)
    row.check(f"no request left unanswered ({got.unfinished})", not got.unfinished)
    row.check(
        f"one appointment per booking ({held} held / {got.succeeded} booked)",
        held == got.succeeded,
    )
    return row.judge()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with open_lab("booking", args) as lab:
        doctors = await lab.doctors(args.doctors, every_day=True)
        patients = await lab.people(Role.PATIENT, args.patients)
        slots = Slots(args.doctors)
        rows = [await bench_target(lab, name, doctors, patients, slots) for name in args.targets]
        found, ratio_text = report.ratios(
            rows, "rate", ["raw-insert"], higher_is_better=True, what="bookings/s"
        )
        head = f"{args.concurrency} concurrent patients, {args.doctors} doctor(s), closed loop"
        text = [head, report.table(rows, COLUMNS), ratio_text, report.cpu_table(rows)]
        doc = "\n".join(t for t in text if t)
        return report.document("booking", args, lab.facts, rows, doc, ratios=found)


def main(argv: list[str] | None = None) -> int:
    p = report.parser("bench.booking", __doc__, TARGETS, TARGETS)
    p.add_argument("--concurrency", type=int, default=16, help="closed-loop workers")
    p.add_argument("--doctors", type=int, default=1, help="doctors booked in turn")
    p.add_argument("--patients", type=int, default=2000, help="patients booking in turn")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    p.add_argument("--duration", type=report.positive, default=10.0, help="measured seconds")
    args = p.parse_args(argv)
    if args.smoke:
        args.concurrency, args.patients, args.warmup, args.duration = 2, 10, 0.2, 0.8
    if args.patients < args.doctors:
        p.error("--patients must be >= --doctors: a patient never holds two slots at once")
    return report.main(lambda: run(args), args)


if __name__ == "__main__":
    sys.exit(main())
