"""One invocation's world: a throwaway database, its people, and the servers under test.

``async with open_lab(label, args) as lab`` makes a fresh migrated database with a
clinic (``TEST_DATABASE_URL``, default ``postgresql://postgres@127.0.0.1:5432/test``),
pins this process (the load generator) and PostgreSQL to the first core, and on
the way out, whatever happens, restores PostgreSQL's affinity and drops the
database. People are inserted with teleconsult's own store functions, each with a
live session and an access token minted with the server's JWT secret, so no
password is ever hashed.

Every server is a :class:`bench.harness.procs.ServerProcess` on the second core:
``lab.teleconsult()`` (``python -m teleconsult serve`` as deployed),
``lab.reference()`` (``bench/refs/pyref.py``: aiohttp and python-socketio) and
``lab.node()`` (``bench/refs/socketio_relay``: Node.js and socket.io).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from datetime import time as clock
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from uuid import UUID

import asyncpg

from bench.harness.cpu import Cores, CpuMeter, PostgresPin, database_pids, pick_cores, wait_quiet
from bench.harness.cpu import machine_busy as _busy
from bench.harness.load import pin_self, say
from bench.harness.procs import HOST, REPO, ServerProcess, free_port
from teleconsult.accounts import store as accounts
from teleconsult.client.crypto import DeviceKeys, seal
from teleconsult.core.identity import Role
from teleconsult.core.migrations import migrate
from teleconsult.core.settings import OWASP_MIN_MEMLIMIT_KIB, OWASP_MIN_OPSLIMIT
from teleconsult.core.tokens import TokenService, hash_refresh_token, new_refresh_token
from teleconsult.messaging import store as messaging
from teleconsult.messaging.envelope import to_msgpack
from teleconsult.messaging.records import ThreadKind
from teleconsult.scheduling import store as scheduling
from teleconsult.scheduling.records import ServiceKind

ADMIN_DSN = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
ISSUER = "teleconsult"
TOKEN_TTL = 3600  # the longest ACCESS_TOKEN_TTL allows: bounds one invocation
POOL_SIZE = 10  # teleconsult's default DATABASE_POOL_MAX; the references get the same
NODE_DIR = REPO / "bench" / "refs" / "socketio_relay"
# teleconsult as one process with no MQTT, no outbox worker, no webhook rows for
# offline members, and per-connection event limits out of a generator's way.
TELECONSULT_ENV = {
    "NOTIFY_IN_SERVER": "false",
    "MQTT_EMBEDDED_PORT": "off",
    "CHAT_OFFLINE_HOOK": "false",
    "CHAT_EVENTS_PER_SECOND": "1000000",
    "CHAT_EVENT_BURST": "1000000",
    "CHAT_MAX_QUEUED_EVENTS": "4096",
    "LOGIN_MAX_PER_ADDRESS": "1000000",
    "REGISTER_MAX_PER_ADDRESS": "1000000",
    "LOG_LEVEL": "WARNING",
    "LOG_FORMAT": "json",
    "SHUTDOWN_TIMEOUT": "1",  # open connections need not wait out a graceful stop
    "PASSWORD_HASH_MEMLIMIT_KIB": str(OWASP_MIN_MEMLIMIT_KIB),
    "PASSWORD_HASH_OPSLIMIT": str(OWASP_MIN_OPSLIMIT),
}


@dataclass(frozen=True)
class Person:
    user_id: UUID
    session_id: UUID
    token: str


@dataclass(frozen=True)
class Device:
    keys: DeviceKeys
    id: UUID


def envelope(
    sender: Device, recipients: Sequence[Device], thread: UUID, body: bytes, msg_id: str
) -> bytes:
    """A real sealed and signed envelope in msgpack, as a client sends it."""
    env = seal(
        plaintext=body,
        thread_id=thread,
        sender=sender.keys,
        sender_device_id=sender.id,
        recipients={d.id: d.keys.encryption_public_key for d in recipients},
        client_msg_id=msg_id,
    )
    return bytes(to_msgpack(env))


def msg_id(index: int) -> str:
    """A client message id (16 characters) that carries the message's index."""
    return f"b{index:015d}"


def index_of(value: Any) -> int | None:
    try:
        return int(str(value)[1:])
    except ValueError:
        return None


@dataclass
class Pairs:
    """Patients ``2k`` and ``2k + 1``, a device each, and a direct thread per pair."""

    people: list[Person]
    devices: list[Device]
    threads: list[UUID]

    def envelope(self, sender: int, body: bytes, index: int) -> tuple[UUID, bytes]:
        """Message ``index`` from ``sender`` to the other end of its pair: (thread, bytes)."""
        thread = self.threads[sender // 2]
        ends = [self.devices[sender], self.devices[sender ^ 1]]
        return thread, envelope(ends[0], ends, thread, body, msg_id(index))


@dataclass
class Lab:
    """One invocation: its options, database, secret, clinic, cores and PostgreSQL pin."""

    args: argparse.Namespace
    dsn: str
    name: str
    secret: str
    clinic_id: UUID
    cores: Cores | None
    pg: PostgresPin
    facts: dict[str, Any] = field(default_factory=dict)
    _email: int = 0

    @property
    def server_cpu(self) -> int | None:
        return self.cores.server if self.cores else None

    def connect(self) -> contextlib.AbstractAsyncContextManager[asyncpg.Connection]:
        """``async with lab.connect() as conn``: a connection to the benchmark database."""
        return _connection(self.dsn)

    async def people(self, role: Role, count: int) -> list[Person]:
        tokens = TokenService(secret=self.secret, issuer=ISSUER, access_ttl=TOKEN_TTL)
        expires = datetime.now(UTC) + timedelta(days=1)
        found = []
        async with self.connect() as conn, conn.transaction():
            for _ in range(count):
                self._email += 1
                user = await accounts.insert_user(
                    conn,
                    clinic_id=self.clinic_id,
                    email=f"bench-{self._email}@example.test",
                    password_hash="!unusable",  # nobody signs in with a password here
                    role=role,
                    full_name=f"Bench {role.value} {self._email}",
                    phone="+254700000000",
                )
                assert user is not None
                session = await accounts.create_session(
                    conn,
                    user_id=user.id,
                    expires_at=expires,
                    token_hash=hash_refresh_token(new_refresh_token()),
                )
                token = tokens.mint_access(user_id=user.id, session_id=session)
                found.append(Person(user.id, session, token))
        return found

    async def doctors(self, count: int, *, every_day: bool = False) -> list[Person]:
        """Doctors offering 30-minute video consultations, no buffer (``every_day``:
        available 00:00-23:59 every day, so any half-hour slot can be booked)."""
        doctors = await self.people(Role.DOCTOR, count)
        async with self.connect() as conn, conn.transaction():
            for doctor in doctors:
                await scheduling.upsert_doctor_profile(
                    conn,
                    user_id=doctor.user_id,
                    clinic_id=self.clinic_id,
                    specialties=["general practice"],
                    languages=["en"],
                    consultation_minutes=30,
                    buffer_minutes=0,
                    fee_cents=0,
                    currency="USD",
                    services=[ServiceKind.VIDEO],
                )
                for weekday in range(7 if every_day else 0):
                    await scheduling.add_availability_rule(
                        conn,
                        doctor_id=doctor.user_id,
                        weekday=weekday,
                        start_time=clock(0, 0),
                        end_time=clock(23, 59),
                    )
        return doctors

    async def pairs(self, count: int) -> Pairs:
        people = await self.people(Role.PATIENT, 2 * count)
        threads = []
        for a, b in zip(people[0::2], people[1::2], strict=True):
            members = [(a, Role.PATIENT), (b, Role.PATIENT)]
            threads.append(await self.thread(ThreadKind.DIRECT, members, creator=a))
        return Pairs(people, await self.devices(people), threads)

    async def devices(self, people: Sequence[Person]) -> list[Device]:
        found = []
        async with self.connect() as conn:
            for person in people:
                keys = DeviceKeys.generate()
                device = await messaging.register_device(
                    conn,
                    user_id=person.user_id,
                    x25519_public=keys.encryption_public_key,
                    ed25519_public=keys.signing_public_key,
                    label="bench",
                )
                found.append(Device(keys, device.id))
        return found

    async def thread(
        self, kind: ThreadKind, members: Sequence[tuple[Person, Role]], *, creator: Person
    ) -> UUID:
        async with self.connect() as conn:
            thread = await messaging.create_thread(
                conn,
                clinic_id=self.clinic_id,
                kind=kind,
                created_by=creator.user_id,
                members=[(p.user_id, r.value) for p, r in members],
            )
        return thread.id

    # --- servers ------------------------------------------------------------------------

    def teleconsult(
        self, name: str = "teleconsult", *, port: int | None = None, **extra: str
    ) -> ServerProcess:
        """``python -m teleconsult serve``; ``extra`` settings on top of ``TELECONSULT_ENV``.

        A name ending in ``-redis`` gets ``REDIS_URL``: bus, presence and rooms in Redis,
        as with several server processes."""
        port = port if port is not None else free_port()
        env = {
            **TELECONSULT_ENV,
            "HOST": HOST,
            "PORT": str(port),
            "DATABASE_URL": self.dsn,
            "JWT_SECRET": self.secret,
            "JWT_ISSUER": ISSUER,
            "ACCESS_TOKEN_TTL": str(TOKEN_TTL),
            **extra,
        }
        if name.endswith("-redis"):
            env["REDIS_URL"] = REDIS_URL
        command = [sys.executable, "-m", "teleconsult", "serve"]
        return ServerProcess(name, command, env, cpu=self.server_cpu, port=port)

    def reference(self, name: str, *options: str, port: int | None = None) -> ServerProcess:
        """``python -m bench.refs.pyref``: the Python reference, ``options`` its flags."""
        port = port if port is not None else free_port()
        command = [sys.executable, "-m", "bench.refs.pyref", "--port", str(port), *options]
        env = {"DATABASE_URL": self.dsn, "JWT_SECRET": self.secret, "JWT_ISSUER": ISSUER}
        return ServerProcess(name, command, env, cpu=self.server_cpu, port=port)

    def node(self, name: str = "node-socketio") -> ServerProcess:
        """``bench/refs/socketio_relay/server.js`` on Node.js (``npm ci`` there on first use)."""
        node, npm = shutil.which("node"), shutil.which("npm")
        if node is None or npm is None:
            raise RuntimeError(f"{name} needs Node.js and npm on the PATH")
        if not (NODE_DIR / "node_modules" / "socket.io").is_dir():
            say("installing the Socket.IO relay's packages: npm ci")
            subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True)
        port = free_port()
        env = {"HOST": HOST, "PORT": str(port), "MAX_SECONDS": "900"}
        return ServerProcess(
            name, [node, str(NODE_DIR / "server.js")], env, cpu=self.server_cpu, port=port
        )

    def meter(self, server: ServerProcess | None, **extra: ServerProcess) -> CpuMeter:
        """CPU of the generator, the server, the database (and ``extra`` processes)."""
        groups: dict[str, Any] = {"db": database_pids(self.pg.postmaster, self.name)}
        if server is not None:
            groups["server"] = lambda: [server.pid]
        for key, proc in extra.items():
            groups[key] = lambda proc=proc: [proc.pid]
        return CpuMeter(groups)

    async def quiet(self) -> None:
        if self.args.quiet_wait > 0:
            await wait_quiet(self.args.quiet_wait, say)


@contextlib.asynccontextmanager
async def _connection(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


def _facts(cores: Cores | None) -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    facts: dict[str, Any] = {
        "cores": len(os.sched_getaffinity(0)),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pinning": {"generator": cores.generator, "server": cores.server} if cores else "none",
    }
    for package in ("aiohttp", "python-socketio", "asyncpg"):
        facts[package] = version(package)
    return facts


@contextlib.asynccontextmanager
async def open_lab(label: str, args: argparse.Namespace) -> AsyncIterator[Lab]:
    """The scratch database, the pinning and the facts of one invocation (see the module)."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # every ``finally`` runs on Ctrl-C
        loop.add_signal_handler(sig, task.cancel)
    cores = pick_cores()
    facts = _facts(cores)
    facts["busy_before"] = await _busy()
    name = f"tc_bench_{label}_{os.getpid()}_{secrets.token_hex(3)}"
    async with _connection(ADMIN_DSN) as admin:
        await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = urlunsplit(urlsplit(ADMIN_DSN)._replace(path=f"/{name}"))
    pg = PostgresPin()
    try:
        async with _connection(dsn) as conn:
            await migrate(conn)
            clinic = await accounts.insert_clinic(conn, name="Bench Clinic", timezone="UTC")
            await pg.find(conn)
            facts["postgresql"] = await conn.fetchval("SHOW server_version")
        if cores is not None:
            pg.pin(cores.generator)
            pin_self(cores.generator)
        facts["postgresql_pinning"] = pg.note
        yield Lab(args, dsn, name, secrets.token_urlsafe(48), clinic.id, cores, pg, facts)
    finally:
        pg.restore()
        async with _connection(ADMIN_DSN) as admin:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def node_version() -> str:
    node = shutil.which("node")
    if node is None:
        return "-"
    lock = NODE_DIR / "node_modules" / "socket.io" / "package.json"
    sio = json.loads(lock.read_text())["version"] if lock.exists() else "?"
    out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=10)
    return f"Node.js {out.stdout.strip()}, socket.io {sio}"


async def _unpin() -> None:
    async with _connection(ADMIN_DSN) as conn:
        pin = PostgresPin()
        if await pin.find(conn) is not None:
            pin.pin_back()
            print(f"PostgreSQL (postmaster {pin.postmaster} and children) on every core again")


if __name__ == "__main__":
    # After a run was SIGKILLed: ``python -m bench.harness.world`` puts PostgreSQL back.
    asyncio.run(_unpin())
