"""Signaling: join -> answer latency when many rooms join at once, against a bare Socket.IO server.

Run: ``.venv/bin/python -m bench.signal_join [--rooms 200] [--waves 5]
[--targets teleconsult,reference] [--profile DIR] [--json PATH]``.

One invocation makes a throwaway database and runs each target in turn, its
server pinned to one core and this load generator to the other. Every room
has a doctor and a patient, each with its own WebSocket connection to
``/signal`` (``2 x --rooms`` connections, opened before anything is timed).
A *wave* is every one of them sending ``join`` at the same moment, each to its
own room; a join's latency runs from its send to its ack, the answer. After a
wave every peer sends ``leave`` and the next wave joins fresh rooms. The first
``--warmup-waves`` are not counted.

* ``teleconsult`` -- ``teleconsult serve`` (one process, in-process bus and
  room registry). Each room is a consultation of a confirmed video
  appointment whose join window is open now (inserted with teleconsult's own
  store functions; one appointment a day per doctor and patient, so none
  overlap). A join checks the token's session at connect, then the room's
  access in PostgreSQL, takes the room's lock, records the event
  (``consultation_events``), answers, and binds the socket to the peer's bus
  channel; the patient's join also tells the doctor someone is waiting.
* ``teleconsult-redis`` -- the same with ``REDIS_URL``: rooms, their locks and
  the bus in Redis, as with several server processes.
* ``reference`` -- ``bench/refs/sio_minimal.py``: aiohttp + python-socketio with the
  same server options, answering ``join`` with a constant. The framework's
  ceiling: the same connections, packets and acks, no work.

The headline is the p99 of join -> answer over every counted wave. A run is
invalid when a join fails or goes unanswered within ``--timeout``, or when
the generator used 90 % of its core over the waves.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench import realtime as rt
from bench.api_requests import _free_port
from bench.loadgen import percentile
from bench.procs import HOST, ServerProcess
from bench.pyspy import Profile
from bench.report import positive
from bench.sio_client import SioConnection, client_session, event_frame
from teleconsult.core.identity import Role
from teleconsult.loadtest.report import Latency, summarize
from teleconsult.scheduling import store as scheduling
from teleconsult.scheduling.records import AppointmentStatus, ServiceKind

TARGETS = ("teleconsult", "teleconsult-redis", "reference")
REFERENCE_MODULE = "bench.refs.sio_minimal"
NAMESPACE = "/signal"
CONNECT_PARALLEL = 50


# --- rooms ----------------------------------------------------------------------------


@dataclass
class People:
    doctors: list[rt.Person]
    patients: list[rt.Person]
    next_day: int = 1  # each teleconsult run books days of its own, from this one


async def prepare_people(db: rt.Database, rooms: int) -> People:
    """``rooms`` doctors offering video and as many patients, all signed in."""
    conn = await asyncpg.connect(db.dsn)
    try:
        doctors = await rt.add_people(conn, db, Role.DOCTOR, rooms, "doctor")
        patients = await rt.add_people(conn, db, Role.PATIENT, rooms, "patient")
        for doctor in doctors:
            await scheduling.upsert_doctor_profile(
                conn,
                user_id=doctor.user_id,
                clinic_id=db.clinic_id,
                specialties=[],
                languages=["en"],
                consultation_minutes=30,
                buffer_minutes=0,
                fee_cents=0,
                currency="USD",
                services=[ServiceKind.VIDEO],
            )
    finally:
        await conn.close()
    return People(doctors, patients)


async def prepare_rooms(
    db: rt.Database, people: People, waves: int, first_day: int
) -> list[list[str]]:
    """Room ids per wave: room ``r`` of every wave is doctor ``r``'s with patient ``r``.

    Each wave's appointments are on a day of their own, so no doctor or patient is
    booked twice at once; every consultation's join window is open now.
    """
    now = datetime.now(UTC).replace(microsecond=0)
    midnight = now.replace(hour=0, minute=0, second=0)
    rooms: list[list[str]] = []
    conn = await asyncpg.connect(db.dsn)
    try:
        async with conn.transaction():
            for wave in range(waves):
                starts = midnight + timedelta(days=first_day + wave, hours=10)
                ids = []
                for doctor, patient in zip(people.doctors, people.patients, strict=True):
                    appointment = await scheduling.insert_appointment(
                        conn,
                        clinic_id=db.clinic_id,
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
                    ids.append(consultation.room_id)
                rooms.append(ids)
    finally:
        await conn.close()
    return rooms


# --- requests over the lean client ----------------------------------------------------


class Caller:
    """Requests with acks over one connection; an answer comes back with its arrival time."""

    def __init__(self, conn: SioConnection) -> None:
        self.conn = conn
        self.next_id = 0
        self.pending: dict[int, asyncio.Future[tuple[float, Any]]] = {}
        conn.on_ack = self._ack

    def _ack(self, ack_id: int, answer: Any) -> None:
        future = self.pending.pop(ack_id, None)
        if future is not None and not future.done():
            future.set_result((time.perf_counter(), answer))

    def prepare(self, event: str, data: Any) -> tuple[str, asyncio.Future[tuple[float, Any]]]:
        """The frame of a request and the future of its answer (sent by the caller)."""
        self.next_id += 1
        future = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = future
        return event_frame(NAMESPACE, event, data, self.next_id, binary=False), future


@dataclass
class Wave:
    latencies: list[float]
    seconds: float  # the first send to the last answer
    errors: dict[str, int]
    generator: float  # this process's CPU share from the first send to the last answer


def _check(answer: Any, doctor: bool, strict: bool) -> str | None:
    """None when ``answer`` is a good join answer; else what is wrong with it."""
    if not isinstance(answer, dict) or not answer.get("ok"):
        error = answer.get("error", {}) if isinstance(answer, dict) else {}
        return f"join refused: {error.get('code', answer)}"
    if not isinstance(answer.get("peer_id"), str):
        return "join answer without a peer id"
    if strict:
        expected = ("doctor", "admitted") if doctor else ("patient", "waiting")
        if (answer.get("role"), answer.get("status")) != expected:
            return f"joined as {answer.get('role')}/{answer.get('status')}"
    return None


async def wave(callers: list[Caller], rooms: list[str], within: float, strict: bool) -> Wave:
    """Every caller joins its room at once; then every caller leaves."""
    frames = [callers[i].prepare("join", {"room_id": rooms[i // 2]}) for i in range(len(callers))]
    sent: list[float] = []
    cpu, began = time.process_time(), time.perf_counter()
    for caller, (frame, _) in zip(callers, frames, strict=True):
        sent.append(time.perf_counter())
        await caller.conn.emit(frame)
    errors: dict[str, int] = {}
    latencies = []
    last = began
    done, _ = await asyncio.wait([f for _, f in frames], timeout=within)
    busy = (time.process_time() - cpu) / (time.perf_counter() - began)
    for i, (_, future) in enumerate(frames):
        if future not in done:
            errors["no answer in time"] = errors.get("no answer in time", 0) + 1
            future.cancel()
            continue
        answered, answer = future.result()
        last = max(last, answered)
        problem = _check(answer, doctor=i % 2 == 0, strict=strict)
        if problem:
            errors[problem] = errors.get(problem, 0) + 1
        else:
            latencies.append(answered - sent[i])
    leaves = [caller.prepare("leave", {}) for caller in callers]
    for caller, (frame, _) in zip(callers, leaves, strict=True):
        await caller.conn.emit(frame)
    await asyncio.wait([f for _, f in leaves], timeout=within)
    return Wave(latencies, last - began, errors, busy)


def summarize_list(seconds: list[float]) -> float:
    """The p99 of a few latencies, in milliseconds (nan for none)."""
    ordered = sorted(seconds)
    return percentile(ordered, 99) * 1e3


# --- one run --------------------------------------------------------------------------


async def bench_target(
    target: str,
    round_no: int,
    db: rt.Database,
    people: People,
    args: argparse.Namespace,
    cores: tuple[int, int] | None,
) -> rt.Outcome:
    label = target if args.rounds == 1 else f"{target} #{round_no}"
    port = _free_port()
    base = f"http://{HOST}:{port}"
    waves = args.warmup_waves + args.waves
    life = int(waves * (2 * args.timeout + args.pause) + 600)
    reference = target == "reference"
    rooms = [[f"reference-room-{w}-{r}" for r in range(args.rooms)] for w in range(waves)]
    if not reference:
        rt.say(f"[{label}] preparing {waves} x {args.rooms} rooms")
        rooms = await prepare_rooms(db, people, waves, people.next_day)
        people.next_day += waves
    monitor = await asyncpg.connect(db.dsn)
    server: ServerProcess | None = None
    conns: list[SioConnection] = []
    with tempfile.TemporaryDirectory(prefix="bench-signal-") as data_dir:
        try:
            if reference:
                server = rt.start_reference(target, REFERENCE_MODULE, port, cores, life)
            else:
                env = rt.teleconsult_env(db, port, Path(data_dir), redis=target.endswith("redis"))
                server = rt.start_teleconsult(target, env, cores, life)
            await rt.ready_at(base, server)
            async with client_session() as session:
                connect = Latency()
                conns = await connect_everyone(session, base, people, connect)
                callers = [Caller(conn) for conn in conns]
                rt.say(f"[{label}] {len(conns)} connections open")
                joins = Latency()
                errors: dict[str, int] = {}
                seconds: list[float] = []
                generator: list[float] = []  # CPU seconds of the generator during waves
                meter = rt.Meter(server.pid, monitor, db.name)
                spy: Profile | None = None
                for number in range(waves):
                    counted = number >= args.warmup_waves
                    if number == args.warmup_waves:
                        await meter.start()
                        if args.profile is not None:
                            path = args.profile / f"signal-{label.replace(' #', '-')}.txt"
                            span = args.waves * (args.pause + 1)
                            spy = Profile(server.pid, span, path)
                    got = await wave(callers, rooms[number], args.timeout, not reference)
                    p99 = summarize_list(got.latencies)
                    rt.say(
                        f"[{label}] wave {number + 1}/{waves}"
                        f"{'' if counted else ' (warm-up)'}: {len(got.latencies)} answers in "
                        f"{got.seconds * 1e3:.0f} ms, p99 {p99:.1f} ms, "
                        f"errors {sum(got.errors.values())}, gen cpu {got.generator:.0%}"
                    )
                    if counted:
                        for value in got.latencies:
                            joins.record(value)
                        for key, count in got.errors.items():
                            errors[key] = errors.get(key, 0) + count
                        seconds.append(got.seconds)
                        generator.append(got.generator * got.seconds)
                    await asyncio.sleep(args.pause)
                cpu = await meter.stop()
                # What matters is the generator during the waves, not in the pauses.
                cpu.generator = sum(generator) / sum(seconds) if seconds else 0.0
                cpu.generator_peak = max(cpu.generator_peak, cpu.generator)
                profile = await spy.finish() if spy is not None else None
                server.check_alive()
                found = outcome(target, round_no, args, joins, connect, seconds, errors, cpu)
                found.profile = profile
                return found
        finally:
            if server is not None:
                server.stop()
            await asyncio.gather(*(conn.close() for conn in conns), return_exceptions=True)
            await monitor.close()


async def connect_everyone(
    session: aiohttp.ClientSession, base: str, people: People, connect: Latency
) -> list[SioConnection]:
    """Doctor ``r`` is connection ``2r``, patient ``r`` is ``2r + 1``."""
    tokens = [p.token for pair in zip(people.doctors, people.patients, strict=True) for p in pair]
    gate = asyncio.Semaphore(CONNECT_PARALLEL)

    async def one(token: str) -> SioConnection:
        async with gate:
            began = time.perf_counter()
            conn = await SioConnection.open(session, base, NAMESPACE, {"token": token})
            connect.record(time.perf_counter() - began)
            return conn

    return list(await asyncio.gather(*(one(token) for token in tokens)))


def outcome(
    target: str,
    round_no: int,
    args: argparse.Namespace,
    joins: Latency,
    connect: Latency,
    seconds: list[float],
    errors: dict[str, int],
    cpu: Any,
) -> rt.Outcome:
    j, c = summarize(joins.total), summarize(connect.total)
    count = int(j["count"] or 0)
    wave_s = sum(seconds) / len(seconds) if seconds else float("nan")
    # Server CPU over the counted waves, their leaves and pauses, per join.
    per_join = cpu.server * cpu.wall / count if count else None
    found = rt.Outcome(
        target=target,
        round=round_no,
        figure=j["p99"] if j["p99"] is not None else float("nan"),
        fields={
            "rooms": args.rooms,
            "joins": count,
            "p50_ms": j["p50"],
            "p90_ms": j["p90"],
            "p99_ms": j["p99"],
            "max_ms": j["max"],
            "wave_ms": wave_s * 1e3,
            "joins_per_s": 2 * args.rooms / wave_s if seconds else None,
            "connect_p99_ms": c["p99"],
            "errors": sum(errors.values()),
            "error_kinds": errors,
            "server_ms_per_join": per_join * 1e3 if per_join is not None else None,
        },
        cpu=cpu,
    )
    found.judge()
    if errors:
        found.invalid.append(f"failed joins: {errors}")
    return found


# --- the invocation -------------------------------------------------------------------

COLUMNS = (
    rt.Column("rooms", "rooms", ">5d"),
    rt.Column("joins", "joins", ">6d"),
    rt.Column("p50 ms", "p50_ms", ">7.1f"),
    rt.Column("p90 ms", "p90_ms", ">7.1f"),
    rt.Column("p99 ms", "p99_ms", ">7.1f"),
    rt.Column("max ms", "max_ms", ">7.1f"),
    rt.Column("wave ms", "wave_ms", ">7.0f"),
    rt.Column("joins/s", "joins_per_s", ">7.0f"),
    rt.Column("errors", "errors", ">6d"),
    rt.Column("srv ms/join+leave", "server_ms_per_join", ">16.2f"),
    rt.Column("conn p99", "connect_p99_ms", ">8.1f"),
)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async def people(db: rt.Database, host: dict[str, Any]) -> People:
        rt.say(f"preparing {args.rooms} doctors and {args.rooms} patients")
        return await prepare_people(db, args.rooms)

    async def one(
        target: str, round_no: int, db: rt.Database, found: People, cores: tuple[int, int] | None
    ) -> rt.Outcome:
        return await bench_target(target, round_no, db, found, args, cores)

    host, outcomes = await rt.run_targets("signal", args, people, one)
    return rt.summary(
        "signal_join: join -> answer latency, many rooms joining at once",
        "bench.signal_join",
        args,
        host,
        outcomes,
        COLUMNS,
        figure="join -> answer p99",
        lower_is_better=True,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.signal_join",
        description="Join -> answer p99: teleconsult's /signal against a bare Socket.IO server.",
    )
    parser.add_argument("--rooms", type=int, default=200, help="rooms joining at once (x2 peers)")
    parser.add_argument("--waves", type=int, default=5, help="counted waves")
    parser.add_argument("--warmup-waves", type=int, default=1, help="waves not counted, first")
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between waves")
    parser.add_argument("--timeout", type=positive, default=30.0, help="per join, seconds")
    rt.add_common_options(parser, TARGETS, ["teleconsult", "reference"])
    args = parser.parse_args(argv)
    if min(args.rooms, args.waves, args.rounds) < 1 or args.warmup_waves < 0 or args.pause < 0:
        parser.error("--rooms, --waves, --rounds must be >= 1; --warmup-waves, --pause >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return rt.finish(lambda: run(args), args)


if __name__ == "__main__":
    sys.exit(main())
