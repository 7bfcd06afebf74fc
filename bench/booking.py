"""Booking: ``POST /api/v1/appointments`` against raw asyncpg INSERTs of the same rows.

Run: ``.venv/bin/python -m bench.booking [--duration 10] [--concurrency 16]
[--doctors 1] [--targets teleconsult,reference,...] [--rounds 1] [--quiet-wait S]
[--json PATH]``.

One invocation makes a fresh database on the local PostgreSQL (a clinic in UTC,
``--doctors`` doctors -- video, 30-minute consultations, no buffer, available
every day 00:00-23:59 -- and ``--patients`` patients with live sessions and
access tokens minted with the server's JWT secret, so argon2 never runs), then
runs each target closed-loop for the same warm-up and measured window at the
same concurrency, one after the other, and drops the database at the end. The
targets:

* ``teleconsult`` -- ``teleconsult serve`` in its own subprocess (pinned to one
  core, the load generator to another), each request a patient booking a video
  slot for themself: JWT and session check, policy, doctor and availability
  reads, then one transaction writing the appointment (under the doctor's and
  patient's advisory locks, against the exclusion constraints), its consultation
  room, three outbox rows and the hash-chained audit row.
* ``reference`` -- the database's ceiling for this write: one raw asyncpg
  ``INSERT INTO appointments`` per booking (same table, same constraints, same
  values) from a pool of the same size, no HTTP, no other row.
* ``reference-tx`` -- the service's write transaction and nothing else, through
  teleconsult's own store functions (so the same SQL, locks and savepoints):
  appointment + consultation + outbox + audit row, no HTTP and no reads.
* ``reference-tx-noaudit`` -- the same transaction without the audit row, to
  show what the serialised audit-chain append costs.

Every request books a distinct 30-minute slot (consecutive slots of consecutive
days from two days ahead, so the reminders are due in the future; doctors in
turn) for the next patient in turn, so neither overlap constraint ever refuses:
anything but a 201 (or an exception on a reference) is an error. After each run the rows the
database holds for that run's slots are counted against the successes.

A result is flagged invalid when the generator used >= 90 % of a core (for the
references the generator *is* the client), when any booking failed, or when
the rows do not add up. The run is bounded (sessions last a day, access tokens
are minted afresh for each run and live an hour, the server dies with this
process or after its ``--max-seconds``) and always stops its server and drops
its database, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from uuid import UUID

import aiohttp
import asyncpg

from bench.api_requests import ADMIN_DSN, drop_database, machine
from bench.cpu import CpuProbe, background_busy
from bench.loadgen import GENERATOR_CPU_LIMIT, percentile
from bench.report import positive, target_list
from teleconsult.accounts import store as accounts
from teleconsult.audit import AuditEvent, AuditTrail
from teleconsult.core.identity import Role
from teleconsult.core.migrations import migrate
from teleconsult.core.settings import SchedulingSettings
from teleconsult.core.tokens import TokenService, hash_refresh_token, new_refresh_token
from teleconsult.notifications import store as outbox_store
from teleconsult.scheduling import store as scheduling
from teleconsult.scheduling.records import AppointmentStatus, NewNotification, ServiceKind

HOST = "127.0.0.1"
ISSUER = "teleconsult"
TOKEN_TTL = 3600  # the longest ACCESS_TOKEN_TTL allows; bounds one target's run
SESSION_TTL = timedelta(days=1)  # bounds the whole invocation
REPO = Path(__file__).resolve().parent.parent
TARGETS = ("teleconsult", "reference", "reference-tx", "reference-tx-noaudit")
REFERENCE = "reference"

SERVICE = ServiceKind.VIDEO
CONSULTATION = timedelta(minutes=30)
# Work rules run 00:00-23:59 (the schema wants end_time < 24:00), so a day holds
# 47 half-hour slots, 00:00 to 23:00, the last one ending at 23:30.
SLOTS_PER_DAY = 47
FIRST_DAY_AHEAD = 2  # both reminders (24 h and 1 h before) are still due: 3 outbox rows
NOISE_LIMIT = 0.25  # CPU share of a core used by none of ours above which a run is noisy
MAX_ERROR_SAMPLES = 5

# Settings of the parent's environment that must not leak into the server.
_SCRUBBED_PREFIXES = (
    "DATABASE_",
    "REDIS_",
    "MQTT_",
    "LOG_",
    "JWT_",
    "NOTIFY_",
    "PASSWORD_HASH_",
    "LOGIN_",
    "REMINDER_",
    "JOIN_",
)
_SCRUBBED = {
    "HOST",
    "PORT",
    "PUBLIC_URL",
    "TELECONSULT_DATA_DIR",
    "ACCESS_TOKEN_TTL",
    "REFRESH_TOKEN_TTL",
    "MAX_BODY_BYTES",
    "SHUTDOWN_TIMEOUT",
    "TRUST_FORWARDED_FOR",
}

_RAW_INSERT = """
INSERT INTO appointments (
    clinic_id, doctor_id, patient_id, service, starts_at, ends_at,
    buffer_minutes, status, created_by
)
VALUES ($1, $2, $3, 'video', $4, $5, 0, 'requested', $3)
RETURNING id
"""

_ROWS_FOR_RANGE = """
WITH a AS (
    SELECT id FROM appointments
    WHERE doctor_id = ANY($1::uuid[]) AND starts_at >= $2 AND starts_at <= $3
)
SELECT
    (SELECT count(*) FROM a) AS appointments,
    (SELECT count(*) FROM consultations c JOIN a ON c.appointment_id = a.id) AS consultations,
    (SELECT count(*) FROM notification_outbox n JOIN a ON n.appointment_id = a.id) AS outbox,
    (SELECT count(*) FROM audit_log l JOIN a ON l.object_id = a.id::text
     WHERE l.action = 'appointment.create') AS audit
"""


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- the world ------------------------------------------------------------------------


@dataclass
class World:
    dsn: str
    database: str
    secret: str
    clinic_id: UUID
    doctors: list[UUID]
    patients: list[UUID]
    sessions: list[UUID]  # one per patient, same order

    def sign_in(self) -> list[dict[str, str]]:
        """Fresh access tokens, one per patient, as the server would mint them."""
        tokens = TokenService(secret=self.secret, issuer=ISSUER, access_ttl=TOKEN_TTL)
        return [
            {
                "Authorization": f"Bearer {tokens.mint_access(user_id=user, session_id=session)}",
                "Content-Type": "application/json",
            }
            for user, session in zip(self.patients, self.sessions, strict=True)
        ]


class Slots:
    """Distinct bookable slots, handed out once each, in order, across the whole run.

    Slot ``index`` is doctor ``index % doctors`` at the ``index // doctors``-th
    half-hour start; with at least as many patients as doctors, patient
    ``index % patients`` never holds two overlapping slots either.
    """

    def __init__(self, first_day: date, doctors: int) -> None:
        self._origin = datetime(first_day.year, first_day.month, first_day.day, tzinfo=UTC)
        self.doctors = doctors
        self.next = 0

    def take(self) -> int:
        index = self.next
        self.next += 1
        return index

    def align(self) -> None:
        """Start the next run at a fresh start time, so runs never share one."""
        self.next = -(-self.next // self.doctors) * self.doctors

    def doctor(self, index: int) -> int:
        return index % self.doctors

    def start(self, index: int) -> datetime:
        day, slot = divmod(index // self.doctors, SLOTS_PER_DAY)
        return self._origin + timedelta(days=day, minutes=30 * slot)


def _dsn_for(database: str) -> str:
    return urlunsplit(urlsplit(ADMIN_DSN)._replace(path=f"/{database}"))


async def prepare_world(doctors: int, patients: int) -> World:
    """A fresh migrated database: one clinic, bookable doctors, signed-in patients."""
    name = f"tc_bench_booking_{os.getpid()}_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = _dsn_for(name)
    try:
        return await _populate(dsn, name, doctors, patients)
    except BaseException:
        await drop_database(dsn)
        raise


async def _populate(dsn: str, name: str, doctors: int, patients: int) -> World:
    secret = secrets.token_urlsafe(48)
    expires = datetime.now(UTC) + SESSION_TTL
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        async with conn.transaction():
            clinic = await accounts.insert_clinic(conn, name="Bench Clinic", timezone="UTC")
            doctor_ids = [
                await _bookable_doctor(conn, clinic.id, number) for number in range(doctors)
            ]
            ids: list[UUID] = []
            sessions: list[UUID] = []
            for i in range(patients):
                user = await accounts.insert_user(
                    conn,
                    clinic_id=clinic.id,
                    email=f"bench-patient-{i}@example.test",
                    password_hash="!unusable",
                    role=Role.PATIENT,
                    full_name=f"Bench Patient {i}",
                    phone="+254700000000",
                )
                assert user is not None
                session_id = await accounts.create_session(
                    conn,
                    user_id=user.id,
                    expires_at=expires,
                    token_hash=hash_refresh_token(new_refresh_token()),
                )
                ids.append(user.id)
                sessions.append(session_id)
        # A table of our own for the commit-latency probe (not part of the schema).
        await conn.execute("CREATE TABLE bench_commit_probe (n integer NOT NULL)")
    finally:
        await conn.close()
    return World(
        dsn=dsn,
        database=name,
        secret=secret,
        clinic_id=clinic.id,
        doctors=doctor_ids,
        patients=ids,
        sessions=sessions,
    )


async def _bookable_doctor(conn: asyncpg.Connection, clinic_id: UUID, number: int) -> UUID:
    """A doctor offering video, 30-minute consultations, no buffer, every day 00:00-23:59."""
    doctor = await accounts.insert_user(
        conn,
        clinic_id=clinic_id,
        email=f"bench-doctor-{number}@example.test",
        password_hash="!unusable",  # nobody signs in with a password: argon2 never runs
        role=Role.DOCTOR,
        full_name=f"Bench Doctor {number}",
    )
    assert doctor is not None
    profile = await scheduling.upsert_doctor_profile(
        conn,
        user_id=doctor.id,
        clinic_id=clinic_id,
        specialties=["general practice"],
        languages=["en"],
        consultation_minutes=int(CONSULTATION.total_seconds() // 60),
        buffer_minutes=0,
        fee_cents=0,
        currency="USD",
        services=[SERVICE],
    )
    assert profile is not None
    for weekday in range(7):
        await scheduling.add_availability_rule(
            conn,
            doctor_id=doctor.id,
            weekday=weekday,
            start_time=clock_time(0, 0),
            end_time=clock_time(23, 59),
        )
    return doctor.id


async def commit_probe(dsn: str, seconds: float = 1.0) -> dict[str, float]:
    """One connection committing one-row INSERTs back to back: the serial commit cost.

    With ``synchronous_commit=on`` each commit waits for its WAL flush, so this is
    the price of any transaction that holds a lock through its commit.
    """
    conn = await asyncpg.connect(dsn)
    try:
        latencies: list[float] = []
        stop = time.perf_counter() + seconds
        while time.perf_counter() < stop:
            began = time.perf_counter()
            await conn.execute("INSERT INTO bench_commit_probe (n) VALUES (1)")
            latencies.append(time.perf_counter() - began)
    finally:
        await conn.close()
    latencies.sort()
    return {
        "commits_per_s": len(latencies) / seconds,
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
    }


async def database_facts(dsn: str) -> dict[str, str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT name, setting FROM pg_settings WHERE name = ANY($1::text[])",
            [
                "server_version",
                "fsync",
                "synchronous_commit",
                "wal_sync_method",
                "commit_delay",
                "shared_buffers",
                "max_connections",
            ],
        )
    finally:
        await conn.close()
    return {row["name"]: row["setting"] for row in rows}


# --- one closed-loop run --------------------------------------------------------------


class Refused(Exception):
    """A booking that did not succeed: ``kind`` is counted, ``detail`` sampled."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


Attempt = Callable[[int], Awaitable[None]]  # books slot ``index`` or raises


@dataclass(frozen=True)
class Spec:
    concurrency: int
    warmup: float
    duration: float
    timeout: float


@dataclass
class Measured:
    latencies: list[float] = field(default_factory=list)  # seconds, successes in the window
    errors: Counter[str] = field(default_factory=Counter)  # failures in the window
    error_samples: list[str] = field(default_factory=list)  # first few, any time
    wall: float = 0.0  # the window's length: ``completed`` is counted in exactly this
    generator_cpu: float = 0.0
    completed: int = 0  # successes that finished inside the window
    succeeded: int = 0  # every success, warm-up included: the rows the database must hold
    failed: int = 0  # every failure, warm-up included
    first_slot: int = 0
    last_slot: int = -1
    out_of_time: int = 0  # requests still unanswered when the bound came


class _Loop:
    def __init__(self, label: str, attempt: Attempt, slots: Slots, spec: Spec) -> None:
        self.label = label
        self.attempt = attempt
        self.slots = slots
        self.spec = spec
        self.m = Measured(first_slot=slots.next, wall=spec.duration)
        self.started = time.perf_counter()
        self.measure_from = self.started + spec.warmup
        self.measure_to = self.measure_from + spec.duration
        self._live: list[float] = []
        self._live_errors = 0

    async def one(self) -> None:
        index = self.slots.take()
        began = time.perf_counter()
        error: str | None = None
        detail = ""
        try:
            async with asyncio.timeout(self.spec.timeout):
                await self.attempt(index)
        except Refused as exc:
            error, detail = exc.kind, exc.detail
        except TimeoutError:
            error, detail = "timeout", f"no answer within {self.spec.timeout:g} s"
        except (aiohttp.ClientError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            error, detail = type(exc).__name__, str(exc)
        done = time.perf_counter()
        in_window = began >= self.measure_from and done <= self.measure_to
        if error is None:
            self.m.succeeded += 1
            self._live.append(done - began)
            if self.measure_from <= done <= self.measure_to:
                self.m.completed += 1
            if in_window:
                self.m.latencies.append(done - began)
            return
        self.m.failed += 1
        self._live_errors += 1
        if in_window:
            self.m.errors[error] += 1
        if len(self.m.error_samples) < MAX_ERROR_SAMPLES:
            self.m.error_samples.append(f"slot {index}: {error}: {detail[:300]}")

    async def worker(self) -> None:
        while time.perf_counter() < self.measure_to:
            await self.one()

    async def progress(self) -> None:
        cpu, wall = time.process_time(), time.perf_counter()
        while True:
            await asyncio.sleep(1.0)
            now_cpu, now = time.process_time(), time.perf_counter()
            live, errors = sorted(self._live), self._live_errors
            self._live, self._live_errors = [], 0
            phase = "warm-up" if now < self.measure_from else "measure"
            say(
                f"[{self.label}] {phase} t={now - self.started:5.1f}s "
                f"{len(live) / (now - wall):7.0f} bookings/s  "
                f"p50 {percentile(live, 50) * 1e3:7.2f} ms  "
                f"p99 {percentile(live, 99) * 1e3:7.2f} ms  "
                f"errors {errors}  gen cpu {(now_cpu - cpu) / (now - wall):4.0%}"
            )
            cpu, wall = now_cpu, now

    async def window(self, on_window: Callable[[str], Awaitable[None]]) -> None:
        await asyncio.sleep(max(0.0, self.measure_from - time.perf_counter()))
        await on_window("start")
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.sleep(max(0.0, self.measure_to - wall))
        self.m.generator_cpu = (time.process_time() - cpu) / (time.perf_counter() - wall)
        await on_window("end")

    async def run(self, on_window: Callable[[str], Awaitable[None]]) -> Measured:
        workers = [asyncio.create_task(self.worker()) for _ in range(self.spec.concurrency)]
        ticker = asyncio.create_task(self.progress())
        edges = asyncio.create_task(self.window(on_window))
        try:
            bound = self.measure_to - time.perf_counter() + self.spec.timeout + 2.0
            done, pending = await asyncio.wait([*workers, edges], timeout=bound)
            for task in done:
                task.result()  # a bug surfaces here
            self.m.out_of_time = len([task for task in pending if task is not edges])
        finally:
            for task in (*workers, ticker, edges):
                task.cancel()
            await asyncio.gather(*workers, ticker, edges, return_exceptions=True)
        self.m.last_slot = self.slots.next - 1
        self.m.latencies.sort()
        return self.m


# --- who else used the CPU ------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_by_process() -> dict[int, tuple[str, int, float]]:
    """(name, start time, user + system CPU seconds) of every process now."""
    found: dict[int, tuple[str, int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm, rest = (entry / "stat").read_text().split(" (", 1)[1].rsplit(")", 1)
            fields = rest.split()
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        cpu = (int(fields[11]) + int(fields[12])) / _TICK
        found[int(entry.name)] = (comm, int(fields[19]), cpu)
    return found


def _kernel_ticks() -> tuple[int, int, int]:
    """(irq + softirq, steal, total) jiffies over all cores, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return values[5] + values[6], values[7], sum(values)


def _command(pid: int, comm: str) -> str:
    """The command line, cut short; a kernel thread (no command line) by its family."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        raw = b""
    text = " ".join(raw.replace(b"\0", b" ").decode(errors="replace").split())
    return text[:90] if text else f"[{comm.split('/')[0]}]"


class Bystanders:
    """Who else used CPU in the window -- processes outside the benchmark (summed by
    command, kernel threads by family), interrupts and steal: the "other" column."""

    def __init__(self, ours: set[int], database: str) -> None:
        self._ours = ours
        self._database = database
        self._start: tuple[float, dict[int, tuple[str, int, float]], tuple[int, int, int]] | None
        self._start = None
        self.top: list[tuple[float, str]] = []  # (share of a core, command), largest first
        self.total = 0.0  # every outside process seen at the end, share of one core
        self.irq = self.steal = 0.0  # shares of one core

    def __call__(self, edge: str) -> None:
        now, cpu, kernel = time.perf_counter(), _cpu_by_process(), _kernel_ticks()
        if edge == "start" or self._start is None:
            self._start = (now, cpu, kernel)
            return
        began, cpu0, kernel0 = self._start
        wall = now - began
        cores = os.cpu_count() or 1
        ticks = max(1, kernel[2] - kernel0[2])
        self.irq = (kernel[0] - kernel0[0]) / ticks * cores
        self.steal = (kernel[1] - kernel0[1]) / ticks * cores
        by_command: dict[str, float] = {}
        for pid, (comm, started, seconds) in cpu.items():
            before = cpu0.get(pid)
            # A process born in the window counts whole; the start time tells a reused pid.
            used = seconds - (before[2] if before and before[1] == started else 0.0)
            if pid in self._ours or used <= 0:
                continue
            command = _command(pid, comm)
            if self._database not in command:  # not a backend of our own database
                by_command[command] = by_command.get(command, 0.0) + used / wall
        self.total = sum(by_command.values())
        ranked = sorted(((share, cmd) for cmd, share in by_command.items()), reverse=True)
        self.top = [(share, cmd) for share, cmd in ranked[:4] if share >= 0.02]


class Edges:
    """Everything sampled at the window's edges."""

    def __init__(self, probe: CpuProbe, bystanders: Bystanders) -> None:
        self.probe = probe
        self.bystanders = bystanders

    async def __call__(self, edge: str) -> None:
        self.bystanders(edge)
        await self.probe(edge)


# --- targets --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """``teleconsult serve`` (via ``bench.servers``) in a subprocess; ``stop`` always ends it."""

    def __init__(self, world: World, cpu: int | None, pool_size: int, lifetime: int) -> None:
        self.port = _free_port()
        self.base = f"http://{HOST}:{self.port}"
        self._dir = tempfile.TemporaryDirectory(prefix="bench-booking-")
        self.log_path = Path(self._dir.name) / "server.log"
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in _SCRUBBED and not k.startswith(_SCRUBBED_PREFIXES)
        }
        env.update(
            HOST=HOST,
            PORT=str(self.port),
            DATABASE_URL=world.dsn,
            DATABASE_POOL_MIN=str(pool_size),
            DATABASE_POOL_MAX=str(pool_size),
            JWT_SECRET=world.secret,
            JWT_ISSUER=ISSUER,
            ACCESS_TOKEN_TTL=str(TOKEN_TTL),
            NOTIFY_IN_SERVER="false",
            LOG_LEVEL="WARNING",
            LOG_FORMAT="json",
            TELECONSULT_DATA_DIR=str(Path(self._dir.name) / "data"),
            PYTHONUNBUFFERED="1",
        )
        command = [sys.executable, "-m", "bench.servers", "teleconsult"]
        command += ["--max-seconds", str(lifetime)]
        if cpu is not None:
            command += ["--cpu", str(cpu)]
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    async def wait_ready(self, within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"teleconsult exited early:\n{self.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                    async with session.get(f"{self.base}/readyz") as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.2)
        raise RuntimeError(f"teleconsult not ready after {within:g} s:\n{self.log_tail()}")

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=5)
        finally:
            self._log.close()
            self._dir.cleanup()


def http_attempt(session: aiohttp.ClientSession, url: str, world: World, slots: Slots) -> Attempt:
    doctors = [str(doctor) for doctor in world.doctors]
    signed_in = world.sign_in()

    async def book(index: int) -> None:
        body = json.dumps(
            {
                "doctor_id": doctors[slots.doctor(index)],
                "service": SERVICE.value,
                "starts_at": slots.start(index).isoformat(),
            }
        ).encode()
        headers = signed_in[index % len(signed_in)]
        async with session.post(url, data=body, headers=headers) as resp:
            text = await resp.read()
            if resp.status != 201:
                raise Refused(f"HTTP {resp.status}", text.decode(errors="replace"))

    return book


def raw_insert_attempt(pool: asyncpg.Pool, world: World, slots: Slots) -> Attempt:
    async def book(index: int) -> None:
        starts = slots.start(index)
        patient = world.patients[index % len(world.patients)]
        await pool.fetchval(
            _RAW_INSERT,
            world.clinic_id,
            world.doctors[slots.doctor(index)],
            patient,
            starts,
            starts + CONSULTATION,
        )

    return book


def transaction_attempt(
    pool: asyncpg.Pool, world: World, slots: Slots, *, audited: bool = True
) -> Attempt:
    """What ``SchedulingService.book`` writes for a patient's video booking, in one
    transaction through the same store functions, without its reads or HTTP;
    ``audited`` False leaves out the audit row (and so the audit chain's lock)."""
    audit = AuditTrail(pool)
    settings = SchedulingSettings()
    before = timedelta(minutes=settings.join_before_minutes)
    after = timedelta(minutes=settings.join_after_minutes)

    async def book(index: int) -> None:
        starts = slots.start(index)
        ends = starts + CONSULTATION
        patient = world.patients[index % len(world.patients)]
        async with pool.acquire() as conn, conn.transaction():
            appointment = await scheduling.insert_appointment(
                conn,
                clinic_id=world.clinic_id,
                doctor_id=world.doctors[slots.doctor(index)],
                patient_id=patient,
                service=SERVICE,
                starts_at=starts,
                ends_at=ends,
                created_by=patient,
                status=AppointmentStatus.REQUESTED,
            )
            await scheduling.insert_consultation(
                conn,
                appointment_id=appointment.id,
                join_opens_at=starts - before,
                join_closes_at=ends + after,
            )
            now = datetime.now(UTC)
            payload = {"change": "booked", "service": SERVICE.value}
            items = [NewNotification("appointment_booked", appointment.id, now, payload)]
            for minutes in settings.reminder_offsets_minutes:
                due = starts - timedelta(minutes=minutes)
                if due > now:
                    items.append(
                        NewNotification(f"reminder_{minutes}m", appointment.id, due, dict(payload))
                    )
            await outbox_store.enqueue(conn, items)
            if not audited:
                return
            await audit.record(
                AuditEvent(
                    action="appointment.create",
                    actor_id=patient,
                    actor_role=Role.PATIENT.value,
                    clinic_id=world.clinic_id,
                    object_type="appointment",
                    object_id=str(appointment.id),
                    ip=HOST,
                    detail={"patient_id": str(patient), "status": appointment.status.value},
                ),
                conn=conn,
            )

    return book


# --- results --------------------------------------------------------------------------


@dataclass
class Result:
    target: str
    round: int
    bookings: int  # in the window, successes and failures
    bookings_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    error_kinds: dict[str, int]
    error_samples: list[str]
    generator_cpu: float
    server_cpu: float  # the target's process: for the references, the generator itself
    database_cpu: float
    core_busy: dict[str, float]
    other_cpu: float
    rows: dict[str, int]  # what the database holds for this run's slots
    rows_per_booking: float
    invalid: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    noisy: bool = False  # something outside the benchmark took a noticeable share of CPU
    bystanders: list[str] = field(default_factory=list)  # other processes busy in the window
    kernel_irq: float = 0.0  # interrupt + softirq time, share of one core (loopback TCP too)
    steal: float = 0.0  # time the hypervisor gave our cores to someone else


def _result(
    target: str,
    round_no: int,
    m: Measured,
    edges: Edges,
    rows: dict[str, int],
    in_process: bool,
) -> Result:
    probe, bystanders = edges.probe, edges.bystanders
    lat = m.latencies
    server_cpu = m.generator_cpu if in_process else probe.server
    ours = m.generator_cpu + probe.database_cpu + (0.0 if in_process else probe.server)
    written = sum(rows.values())
    result = Result(
        target=target,
        round=round_no,
        bookings=len(lat) + sum(m.errors.values()),
        bookings_per_s=m.completed / m.wall if m.wall else 0.0,
        p50_ms=percentile(lat, 50) * 1e3,
        p90_ms=percentile(lat, 90) * 1e3,
        p99_ms=percentile(lat, 99) * 1e3,
        max_ms=(lat[-1] if lat else float("nan")) * 1e3,
        errors=sum(m.errors.values()),
        error_kinds=dict(m.errors),
        error_samples=m.error_samples,
        generator_cpu=m.generator_cpu,
        server_cpu=server_cpu,
        database_cpu=probe.database_cpu,
        core_busy=probe.cores,
        other_cpu=sum(probe.cores.values()) - ours,
        rows=rows,
        rows_per_booking=written / rows["appointments"] if rows["appointments"] else 0.0,
    )
    if m.generator_cpu >= GENERATOR_CPU_LIMIT:
        who = "the reference client" if in_process else "the load generator"
        result.invalid.append(
            f"{who} used {m.generator_cpu:.0%} of a core (limit {GENERATOR_CPU_LIMIT:.0%}): "
            "it measured itself"
        )
    if m.failed:
        result.invalid.append(f"{m.failed} bookings failed ({result.errors} in the window)")
    if m.out_of_time:
        result.invalid.append(f"{m.out_of_time} workers still waiting at the bound")
    if rows["appointments"] != m.succeeded:
        result.invalid.append(
            f"{m.succeeded} bookings succeeded but the database holds "
            f"{rows['appointments']} appointments for their slots"
        )
    result.bystanders = [f"{share:.0%} {command}" for share, command in bystanders.top]
    result.kernel_irq = bystanders.irq
    result.steal = bystanders.steal
    if result.other_cpu > NOISE_LIMIT:
        result.noisy = True
        named = "; ".join(result.bystanders) or "no single process"
        result.notes.append(
            f"{result.other_cpu:.0%} of a core went to neither generator, server nor database: "
            f"interrupts {bystanders.irq:.0%}, steal {bystanders.steal:.0%}, "
            f"other processes {bystanders.total:.0%}: {named}"
        )
    return result


async def count_rows(
    conn: asyncpg.Connection, world: World, slots: Slots, m: Measured
) -> dict[str, int]:
    if m.last_slot < m.first_slot:
        return {"appointments": 0, "consultations": 0, "outbox": 0, "audit": 0}
    row = await conn.fetchrow(
        _ROWS_FOR_RANGE, world.doctors, slots.start(m.first_slot), slots.start(m.last_slot)
    )
    assert row is not None
    return {key: int(row[key]) for key in ("appointments", "consultations", "outbox", "audit")}


async def wait_for_quiet(bound: float) -> None:
    """On a shared machine, wait (at most ``bound`` s) until nothing else is busy."""
    started = time.monotonic()
    said = False
    while True:
        busy = sum((await background_busy()).values())
        waited = time.monotonic() - started
        if busy <= NOISE_LIMIT or waited >= bound:
            if said:
                state = "idle" if busy <= NOISE_LIMIT else f"still busy ({busy:.0%} of a core)"
                say(f"machine {state} after {waited:.0f} s")
            return
        if not said:
            say(f"machine busy ({busy:.0%} of a core): waiting up to {bound:g} s")
            said = True


async def bench_target(
    target: str,
    round_no: int,
    world: World,
    slots: Slots,
    args: argparse.Namespace,
    cores: tuple[int, int] | None,
) -> Result:
    label = target if args.rounds == 1 else f"{target} #{round_no}"
    if args.quiet_wait > 0:
        await wait_for_quiet(args.quiet_wait)
    slots.align()
    spec = Spec(args.concurrency, args.warmup, args.duration, args.timeout)
    lifetime = int(args.warmup + args.duration + args.timeout + 120)
    monitor = await asyncpg.connect(world.dsn)
    server: Server | None = None
    pool: asyncpg.Pool | None = None
    try:
        if target == "teleconsult":
            server = Server(world, cores[1] if cores else None, args.pool_size, lifetime)
            await server.wait_ready()
            pid = server.proc.pid
        else:
            pool = await asyncpg.create_pool(
                world.dsn, min_size=args.pool_size, max_size=args.pool_size
            )
            pid = os.getpid()
        ours = {os.getpid(), pid}
        edges = Edges(CpuProbe(pid, monitor, world.database), Bystanders(ours, world.database))
        if server is not None:
            connector = aiohttp.TCPConnector(
                limit=args.concurrency, limit_per_host=args.concurrency
            )
            timeout = aiohttp.ClientTimeout(total=args.timeout)
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                url = f"{server.base}/api/v1/appointments"
                loop = _Loop(label, http_attempt(session, url, world, slots), slots, spec)
                measured = await loop.run(edges)
            if server.proc.poll() is not None:
                raise RuntimeError(f"teleconsult died during the run:\n{server.log_tail()}")
        else:
            assert pool is not None
            if target == REFERENCE:
                attempt = raw_insert_attempt(pool, world, slots)
            else:
                audited = target == "reference-tx"
                attempt = transaction_attempt(pool, world, slots, audited=audited)
            loop = _Loop(label, attempt, slots, spec)
            measured = await loop.run(edges)
        rows = await count_rows(monitor, world, slots, measured)
    finally:
        if pool is not None:
            await pool.close()
        if server is not None:
            server.stop()
        await monitor.close()
    return _result(target, round_no, measured, edges, rows, in_process=server is None)


def ratios(results: list[Result], base: str = REFERENCE) -> list[dict[str, Any]]:
    """Every other target against ``base`` of the same round: throughput and p99."""
    bases = {r.round: r for r in results if r.target == base}
    found = []
    for r in results:
        ref = bases.get(r.round)
        if ref is None or r is ref or (base != REFERENCE and r.target != "teleconsult"):
            continue
        found.append(
            {
                "target": r.target,
                "base": base,
                "round": r.round,
                "throughput_ratio": (
                    r.bookings_per_s / ref.bookings_per_s if ref.bookings_per_s else float("nan")
                ),
                "p99_ratio": r.p99_ms / ref.p99_ms if ref.p99_ms else float("nan"),
            }
        )
    return found


def _per_booking_us(cpu: float, rate: float) -> float:
    return cpu / rate * 1e6 if rate else float("nan")


def _validity(r: Result) -> str:
    return "INVALID" if r.invalid else "noisy" if r.noisy else "yes"


def format_table(results: list[Result], found: list[dict[str, Any]]) -> str:
    """Throughput and latency, the ratios, then where the CPU went."""
    rounds = max((r.round for r in results), default=1)

    def label(target: str, round_no: int) -> str:
        return target if rounds == 1 else f"{target} #{round_no}"

    width = max([len("target")] + [len(label(r.target, r.round)) for r in results])

    def name(target: str, round_no: int) -> str:
        return f"{label(target, round_no):<{width}}"

    head = (
        f"{'target':<{width}} {'bookings/s':>10} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} "
        f"{'max ms':>7} {'errors':>6} {'rows/booking':>12}  valid"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{name(r.target, r.round)} {r.bookings_per_s:>10.0f} {r.p50_ms:>7.2f} "
            f"{r.p90_ms:>7.2f} {r.p99_ms:>7.2f} {r.max_ms:>7.2f} {r.errors:>6} "
            f"{r.rows_per_booking:>12.1f}  {_validity(r)}"
        )
    for r in results:
        for reason in r.invalid:
            lines.append(f"  ! {label(r.target, r.round)}: {reason}")
        for note in r.notes:
            lines.append(f"  - {label(r.target, r.round)}: {note}")
        for sample in r.error_samples:
            lines.append(f"  > {label(r.target, r.round)}: {sample}")
    for base, title in (
        (REFERENCE, "vs reference (one raw INSERT), same round:"),
        ("reference-tx", "vs reference-tx (the same write transaction, no HTTP), same round:"),
    ):
        block = [ratio for ratio in found if ratio["base"] == base]
        if block:
            lines += ["", title]
        for ratio in block:
            lines.append(
                f"  {name(ratio['target'], ratio['round'])} "
                f"throughput x{ratio['throughput_ratio']:.3f}   p99 x{ratio['p99_ratio']:.1f}"
            )
    lines.append("")
    head = (
        f"{'CPU (1.0 = a core)':<{width}} {'gen':>5} {'server':>6} {'db':>5} {'other':>5} "
        f"{'irq':>5} {'cores':>11}  {'server us/bk':>12} {'db us/bk':>8}"
    )
    lines += [head, "-" * len(head)]
    for r in results:
        cores = " ".join(f"{r.core_busy[c]:>5.0%}" for c in sorted(r.core_busy))
        server = "(=gen)" if r.target != "teleconsult" else f"{r.server_cpu:.0%}"
        lines.append(
            f"{name(r.target, r.round)} {r.generator_cpu:>5.0%} {server:>6} "
            f"{r.database_cpu:>5.0%} {r.other_cpu:>5.0%} {r.kernel_irq:>5.0%} {cores:>11}  "
            f"{_per_booking_us(r.server_cpu, r.bookings_per_s):>12.0f} "
            f"{_per_booking_us(r.database_cpu, r.bookings_per_s):>8.0f}"
        )
    lines.append(
        "(references run in the generator's process, so their 'server us/bk' is the client's; "
        "'other' = busy cores less gen, server and db, incl. 'irq')"
    )
    return "\n".join(lines)


# --- the run --------------------------------------------------------------------------


def _pick_cores() -> tuple[int, int] | None:
    """(load generator core, server core), or None on a single core."""
    available = sorted(os.sched_getaffinity(0))
    return (available[0], available[1]) if len(available) >= 2 else None


async def run(args: argparse.Namespace) -> dict[str, Any]:
    # SIGINT or SIGTERM cancel the run; the ``finally`` clauses stop the server
    # and drop the database.
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    assert main_task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, main_task.cancel)
    cores = _pick_cores()
    host = machine(cores)
    host["busy_before_run"] = await background_busy()
    say(f"preparing a database: {args.doctors} doctor(s), {args.patients} signed-in patients")
    world = await prepare_world(args.doctors, args.patients)
    results: list[Result] = []
    try:
        host["postgresql"] = await database_facts(world.dsn)
        host["serial_commit"] = await commit_probe(world.dsn)
        if cores:
            os.sched_setaffinity(0, {cores[0]})
        slots = Slots(datetime.now(UTC).date() + timedelta(days=FIRST_DAY_AHEAD), args.doctors)
        for round_no in range(1, args.rounds + 1):
            for target in args.targets:
                results.append(await bench_target(target, round_no, world, slots, args, cores))
    finally:
        await drop_database(world.dsn)
    found = ratios(results) + ratios(results, "reference-tx")
    return {
        "benchmark": "booking: POST /api/v1/appointments vs raw asyncpg INSERT",
        "command": shlex.join([sys.executable, "-m", "bench.booking", *sys.argv[1:]]),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": host,
        "params": {
            "duration": args.duration,
            "warmup": args.warmup,
            "concurrency": args.concurrency,
            "pool_size": args.pool_size,
            "patients": args.patients,
            "doctors": args.doctors,
            "quiet_wait": args.quiet_wait,
            "targets": args.targets,
            "rounds": args.rounds,
            "timeout": args.timeout,
        },
        "results": [asdict(r) for r in results],
        "ratios": found,
        "table": format_table(results, found),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.booking",
        description="Bookings/s and latency: teleconsult against raw asyncpg INSERTs.",
    )
    parser.add_argument("--duration", type=positive, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument("--concurrency", type=int, default=16, help="closed-loop workers")
    parser.add_argument(
        "--pool-size", type=int, default=10, help="database pool size, server and references"
    )
    parser.add_argument("--patients", type=int, default=2000, help="patients booked in turn")
    parser.add_argument(
        "--doctors",
        type=int,
        default=1,
        help="doctors booked in turn (1: every booking queues on the one doctor's lock)",
    )
    parser.add_argument("--timeout", type=positive, default=10.0, help="per-booking timeout")
    parser.add_argument(
        "--targets",
        type=target_list(TARGETS),
        default=list(TARGETS),
        help=f"comma-separated, run in this order; from {', '.join(TARGETS)}",
    )
    parser.add_argument("--rounds", type=int, default=1, help="run the targets this many times")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        help="before each target, wait up to this many seconds for an idle machine",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    counts = (args.concurrency, args.pool_size, args.patients, args.doctors, args.rounds)
    if min(counts) < 1 or args.warmup < 0 or args.quiet_wait < 0:
        parser.error(
            "--concurrency, --pool-size, --patients, --doctors, --rounds must be >= 1; "
            "--warmup, --quiet-wait >= 0"
        )
    if args.patients < args.doctors:
        parser.error(
            "--patients must be >= --doctors (a patient must never hold two slots at once)"
        )
    per_target = args.warmup + args.duration + args.timeout + 30
    if per_target > 0.8 * TOKEN_TTL:
        parser.error(f"one run takes about {per_target:.0f} s: keep it under {0.8 * TOKEN_TTL:.0f}")
    budget = args.rounds * len(args.targets) * (per_target + args.quiet_wait)
    if budget > 0.5 * SESSION_TTL.total_seconds():
        parser.error(f"about {budget:.0f} s in all: keep it under 12 hours")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = asyncio.run(run(args))
    except asyncio.CancelledError:
        say("interrupted: server stopped, database dropped")
        return 130
    host = report["machine"]
    before = ", ".join(f"{core} {busy:.0%}" for core, busy in host["busy_before_run"].items())
    pg = host["postgresql"]
    commit = host["serial_commit"]
    print(
        f"{host['nproc']} cores ({host['cpu_model']}), Python {host['python']}, "
        f"PostgreSQL {pg.get('server_version')} (fsync={pg.get('fsync')}, "
        f"synchronous_commit={pg.get('synchronous_commit')}), pinning: {host['pinning']}; "
        f"busy before the run: {before}"
    )
    print(
        f"serial commits on one connection: {commit['commits_per_s']:.0f}/s, "
        f"p50 {commit['p50_ms']:.2f} ms, p99 {commit['p99_ms']:.2f} ms"
    )
    print(report["table"])
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"results written to {args.json}")
    return 1 if any(r["invalid"] for r in report["results"]) else 0


if __name__ == "__main__":
    sys.exit(main())
