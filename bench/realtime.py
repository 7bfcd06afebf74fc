"""What the real-time benchmarks share: people, server processes, CPU, profiles, tables.

``bench/fanout.py``, ``bench/reconnect_storm.py`` and ``bench/signal_join.py``
each run teleconsult and a reference in one invocation. They build on this:

* a throwaway database with signed-in people (users and sessions inserted with
  teleconsult's own store functions; access tokens minted with the server's
  secret, so no password is ever hashed);
* servers under test as ``bench.procs.ServerProcess`` subprocesses pinned to
  the server core, teleconsult with the settings every target shares, and a
  fine-grained readiness probe (the storm times a restart with it);
* :class:`Meter`: CPU of the generator (mean and busiest quarter second),
  the server, the benchmark database's backends and everything else over
  a measured window;
* :class:`Profile`: py-spy on the server over a window, summed by function;
* :class:`Outcome` and the tables, ratios and JSON every benchmark prints.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit
from uuid import UUID

import aiohttp
import asyncpg

from bench.api_requests import ADMIN_DSN, _finite, drop_database, machine
from bench.cpu import CpuProbe, others_busy
from bench.loadgen import GENERATOR_CPU_LIMIT
from bench.procs import HOST, ServerProcess
from bench.pyspy import profile_text
from bench.report import target_list
from teleconsult.accounts import store as accounts
from teleconsult.core.identity import Role
from teleconsult.core.migrations import migrate
from teleconsult.core.tokens import TokenService, hash_refresh_token, new_refresh_token

ISSUER = "teleconsult"
TOKEN_TTL = 3600  # the longest ACCESS_TOKEN_TTL allows: bounds one invocation
NOISE_LIMIT = 0.25  # CPU (share of a core) of processes not ours above which a run is noisy
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
# The settings every teleconsult target gets: one process, no MQTT, no outbox worker,
# no webhook rows for offline members, per-connection event limits out of the way.
TELECONSULT_ENV = {
    "NOTIFY_IN_SERVER": "false",
    "MQTT_EMBEDDED_PORT": "off",
    "CHAT_OFFLINE_HOOK": "false",
    "CHAT_EVENTS_PER_SECOND": "100000",
    "CHAT_EVENT_BURST": "100000",
    "LOG_LEVEL": "WARNING",
    "LOG_FORMAT": "json",
}


def say(text: str) -> None:
    """Progress goes to stderr; the tables go to stdout."""
    print(text, file=sys.stderr, flush=True)


# --- people ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Person:
    user_id: UUID
    session_id: UUID
    token: str


@dataclass
class Database:
    dsn: str
    name: str
    secret: str
    clinic_id: UUID

    def tokens(self) -> TokenService:
        return TokenService(secret=self.secret, issuer=ISSUER, access_ttl=TOKEN_TTL)


@contextlib.asynccontextmanager
async def scratch_database(label: str) -> AsyncIterator[Database]:
    """A fresh migrated database with one clinic; dropped on the way out, whatever happens."""
    name = f"tc_bench_{label}_{os.getpid()}_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = urlunsplit(urlsplit(ADMIN_DSN)._replace(path=f"/{name}"))
    try:
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn)
            clinic = await accounts.insert_clinic(conn, name="Bench Clinic", timezone="UTC")
        finally:
            await conn.close()
        yield Database(dsn, name, secrets.token_urlsafe(48), clinic.id)
    finally:
        await drop_database(dsn)


async def add_people(
    conn: asyncpg.Connection, db: Database, role: Role, count: int, label: str
) -> list[Person]:
    """``count`` users of ``role``, each with a live session and an access token."""
    tokens = db.tokens()
    expires = datetime.now(UTC) + timedelta(days=1)
    people = []
    async with conn.transaction():
        for i in range(count):
            user = await accounts.insert_user(
                conn,
                clinic_id=db.clinic_id,
                email=f"bench-{label}-{i}@example.test",
                password_hash="!unusable",  # nobody signs in with a password here
                role=role,
                full_name=f"Bench {label} {i}",
            )
            assert user is not None
            session = await accounts.create_session(
                conn,
                user_id=user.id,
                expires_at=expires,
                token_hash=hash_refresh_token(new_refresh_token()),
            )
            token = tokens.mint_access(user_id=user.id, session_id=session)
            people.append(Person(user.id, session, token))
    return people


# --- servers --------------------------------------------------------------------------


def teleconsult_env(
    db: Database, port: int, data_dir: Path, *, redis: bool = False
) -> dict[str, str]:
    """The whole environment of a teleconsult target: nothing of the caller's leaks in."""
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    env.update(
        HOST=HOST,
        PORT=str(port),
        DATABASE_URL=db.dsn,
        JWT_SECRET=db.secret,
        JWT_ISSUER=ISSUER,
        ACCESS_TOKEN_TTL=str(TOKEN_TTL),
        TELECONSULT_DATA_DIR=str(data_dir),
        PYTHONUNBUFFERED="1",
        **TELECONSULT_ENV,
    )
    if redis:
        env["REDIS_URL"] = REDIS_URL
    return env


def start_teleconsult(
    name: str,
    env: dict[str, str],
    cores: tuple[int, int] | None,
    life: int,
) -> ServerProcess:
    """``python -m teleconsult serve`` as deployed, pinned to the server core."""
    return ServerProcess(
        name,
        [sys.executable, "-m", "teleconsult", "serve"],
        env,
        cpu=cores[1] if cores else None,
        max_seconds=life,
    )


def start_reference(
    name: str, module: str, port: int, cores: tuple[int, int] | None, life: int
) -> ServerProcess:
    """``python -m MODULE --port P``, pinned to the server core."""
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    env["PYTHONUNBUFFERED"] = "1"
    return ServerProcess(
        name,
        [sys.executable, "-m", module, "--host", HOST, "--port", str(port)],
        env,
        cpu=cores[1] if cores else None,
        max_seconds=life,
    )


async def ready_at(base: str, proc: ServerProcess, within: float = 60.0) -> float:
    """Poll ``GET /readyz`` every 20 ms; the ``time.perf_counter()`` of the first 200."""
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while time.monotonic() < deadline:
            proc.check_alive()
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                async with http.get(f"{base}/readyz") as resp:
                    if resp.status == 200:
                        return time.perf_counter()
            await asyncio.sleep(0.02)
    raise RuntimeError(f"{proc.name} not ready after {within:g} s:\n{proc.log_tail()}")


# --- CPU ------------------------------------------------------------------------------


@dataclass
class Cpu:
    """Shares of one core over a window (1.0 = a whole core)."""

    generator: float = 0.0
    generator_peak: float = 0.0  # the busiest quarter second
    server: float = 0.0
    database: float = 0.0
    other: float = 0.0
    cores: dict[str, float] = field(default_factory=dict)
    wall: float = 0.0  # the window's length, seconds


class Meter:
    """CPU over one window: ``await start()``, the work, ``await stop()``."""

    SLICE = 0.25

    def __init__(self, server_pid: int, monitor: asyncpg.Connection, database: str) -> None:
        self._probe = CpuProbe(server_pid, monitor, database)
        self._cpu0 = self._wall0 = 0.0
        self._peak = 0.0
        self._sampler: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._probe("start")
        self._cpu0, self._wall0 = time.process_time(), time.perf_counter()
        self._sampler = asyncio.create_task(self._sample())

    async def _sample(self) -> None:
        cpu, wall = time.process_time(), time.perf_counter()
        while True:
            await asyncio.sleep(self.SLICE)
            now_cpu, now = time.process_time(), time.perf_counter()
            self._peak = max(self._peak, (now_cpu - cpu) / (now - wall))
            cpu, wall = now_cpu, now

    async def stop(self) -> Cpu:
        wall = time.perf_counter() - self._wall0
        found = Cpu(generator=(time.process_time() - self._cpu0) / wall, wall=wall)
        if self._sampler is not None:
            self._sampler.cancel()
            await asyncio.gather(self._sampler, return_exceptions=True)
        found.generator_peak = max(self._peak, found.generator)
        await self._probe("end")
        found.server, found.database = self._probe.server, self._probe.database_cpu
        found.other, found.cores = self._probe.other, dict(self._probe.cores)
        return found


async def wait_for_quiet(bound: float) -> None:
    """On a shared machine, wait (at most ``bound`` s) until the other processes idle."""
    began = time.monotonic()
    while True:
        busy = await others_busy()
        if busy <= NOISE_LIMIT or time.monotonic() - began >= bound:
            say(f"other processes: {busy:.0%} of a core")
            return


# --- outcomes -------------------------------------------------------------------------


@dataclass
class Outcome:
    """One target's result in one round. ``figure`` is the headline number."""

    target: str
    round: int
    figure: float
    fields: dict[str, Any]  # the scenario's own columns
    cpu: Cpu
    invalid: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    profile: dict[str, Any] | None = None

    @property
    def noisy(self) -> bool:
        return self.cpu.other > NOISE_LIMIT

    def judge(self) -> None:
        """Shared rules: a busy generator invalidates, a busy machine is noise."""
        if self.cpu.generator >= GENERATOR_CPU_LIMIT:
            self.invalid.append(
                f"the load generator used {self.cpu.generator:.0%} of its core "
                f"(limit {GENERATOR_CPU_LIMIT:.0%}): it measured itself"
            )
        elif self.cpu.generator_peak >= GENERATOR_CPU_LIMIT:
            self.notes.append(
                f"the generator's busiest quarter second used {self.cpu.generator_peak:.0%} "
                "of its core: some client-side queueing is in the figures"
            )
        if self.noisy:
            self.notes.append(f"{self.cpu.other:.0%} of a core went to other processes (noisy)")


@dataclass(frozen=True)
class Column:
    title: str
    key: str
    spec: str  # format spec, e.g. ">9.0f"


def _width(spec: str) -> int:
    digits = "".join(ch for ch in spec.split(".")[0] if ch.isdigit())
    return int(digits or "0")


def _cell(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return f"{'-':>{_width(spec)}}"
    if spec.endswith("d") and isinstance(value, float):
        value = round(value)
    return format(value, spec)


def _label(outcome: Outcome, rounds: int) -> str:
    return outcome.target if rounds == 1 else f"{outcome.target} #{outcome.round}"


def validity(outcome: Outcome) -> str:
    return "INVALID" if outcome.invalid else "noisy" if outcome.noisy else "yes"


def format_tables(
    outcomes: list[Outcome],
    columns: Sequence[Column],
    *,
    figure: str,
    lower_is_better: bool,
    references: Sequence[str] = ("reference",),
) -> str:
    """The scenario's table, the ratios to each reference of the same round, and CPU."""
    rounds = max((o.round for o in outcomes), default=1)
    width = max([len("target")] + [len(_label(o, rounds)) for o in outcomes])
    head = f"{'target':<{width}} " + " ".join(f"{c.title:>{_width(c.spec)}}" for c in columns)
    lines = [head + "  valid", "-" * (len(head) + 7)]
    for o in outcomes:
        cells = " ".join(_cell(o.fields.get(c.key), c.spec) for c in columns)
        lines.append(f"{_label(o, rounds):<{width}} {cells}  {validity(o)}")
    for o in outcomes:
        lines += [f"  ! {_label(o, rounds)}: {reason}" for reason in o.invalid]
        lines += [f"  - {_label(o, rounds)}: {note}" for note in o.notes]
    for found in ratios(outcomes, lower_is_better, references):
        if found["first"]:
            lines += ["", f"ratio to {found['base']}, {figure} (same round):"]
        label = found["target"] if rounds == 1 else f"{found['target']} #{found['round']}"
        flag = "" if found["valid"] else "  (a side is INVALID: read with care)"
        lines.append(f"  {label}: x{found['ratio']:.3f} -- {found['meaning']}{flag}")
    lines.append("")
    head = (
        f"{'CPU (1.0 = a core)':<{width}} {'gen':>5} {'gen max':>7} {'server':>6} {'db':>5} "
        f"{'other':>5}  cores"
    )
    lines += [head, "-" * (len(head) + 10)]
    for o in outcomes:
        c = o.cpu
        cores = " ".join(f"{c.cores[k]:.0%}" for k in sorted(c.cores))
        lines.append(
            f"{_label(o, rounds):<{width}} {c.generator:>5.0%} {c.generator_peak:>7.0%} "
            f"{c.server:>6.0%} {c.database:>5.0%} {c.other:>5.0%}  {cores}"
        )
    lines.append("('gen max': the generator's busiest quarter second; 'other': everyone else)")
    return "\n".join(lines)


def ratios(
    outcomes: list[Outcome], lower_is_better: bool, references: Sequence[str] = ("reference",)
) -> list[dict[str, Any]]:
    """Every teleconsult target's figure over each reference's, round by round."""
    found = []
    for base in references:
        refs = {o.round: o for o in outcomes if o.target == base}
        first = True
        for o in outcomes:
            ref = refs.get(o.round)
            if ref is None or not o.target.startswith("teleconsult") or not ref.figure:
                continue
            value = o.figure / ref.figure
            found.append(
                {
                    "target": o.target,
                    "base": base,
                    "round": o.round,
                    "ratio": value,
                    "valid": not o.invalid and not ref.invalid,
                    "first": first,
                    "meaning": (
                        f"{value:.2f} times {base}'s time"
                        if lower_is_better
                        else f"{value:.1%} of {base}'s rate"
                    ),
                }
            )
            first = False
    return found


# --- the invocation -------------------------------------------------------------------


def pick_cores() -> tuple[int, int] | None:
    """(load generator core, server core), or None on a single core."""
    available = sorted(os.sched_getaffinity(0))
    return (available[0], available[1]) if len(available) >= 2 else None


def host_facts(cores: tuple[int, int] | None) -> dict[str, Any]:
    from importlib.metadata import version

    facts = machine(cores)
    for package in ("python-socketio", "python-engineio", "msgpack", "pynacl"):
        facts[package] = version(package)
    return facts


def cancel_on_signals() -> None:
    """SIGINT and SIGTERM cancel the running main task, so every ``finally`` runs."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)


S = TypeVar("S")
Prepare = Callable[[Database, dict[str, Any]], Awaitable[S]]
OneTarget = Callable[[str, int, Database, S, tuple[int, int] | None], Awaitable[Outcome]]


async def run_targets(
    label: str, args: argparse.Namespace, prepare: Prepare[S], one: OneTarget[S]
) -> tuple[dict[str, Any], list[Outcome]]:
    """The invocation every scenario shares.

    A scratch database; ``prepare(db, host)`` once (it may add facts to ``host``);
    then, pinned to the generator's core, ``one(target, round, db, prepared, cores)``
    for each round and target, in order, each after ``--quiet-wait`` if asked.
    """
    cancel_on_signals()
    cores = pick_cores()
    host = host_facts(cores)
    host["busy_before_run"] = await others_busy()
    outcomes: list[Outcome] = []
    async with scratch_database(label) as db:
        prepared = await prepare(db, host)
        if cores:
            os.sched_setaffinity(0, {cores[0]})
        for round_no in range(1, args.rounds + 1):
            for target in args.targets:
                if args.quiet_wait > 0:
                    await wait_for_quiet(args.quiet_wait)
                outcomes.append(await one(target, round_no, db, prepared, cores))
    return host, outcomes


def summary(
    name: str,
    module: str,
    args: argparse.Namespace,
    host: dict[str, Any],
    outcomes: list[Outcome],
    columns: Sequence[Column],
    *,
    figure: str,
    lower_is_better: bool,
    references: Sequence[str] = ("reference",),
    postscript: str = "",
) -> dict[str, Any]:
    """The JSON document of a run, its printed tables under ``table``."""
    table = format_tables(
        outcomes, columns, figure=figure, lower_is_better=lower_is_better, references=references
    )
    return {
        "benchmark": name,
        "command": " ".join([sys.executable, "-m", module, *sys.argv[1:]]),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": host,
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "results": [asdict(o) for o in outcomes],
        "ratios": ratios(outcomes, lower_is_better, references),
        "table": table + (f"\n{postscript}" if postscript else ""),
    }


def add_common_options(
    parser: argparse.ArgumentParser, targets: Sequence[str], default: Sequence[str]
) -> None:
    """``--targets``, ``--rounds``, ``--quiet-wait``, ``--profile`` and ``--json``."""
    parser.add_argument(
        "--targets",
        type=target_list(targets),
        default=list(default),
        help=f"comma-separated, run in this order; from {', '.join(targets)}",
    )
    parser.add_argument("--rounds", type=int, default=1, help="run the targets this many times")
    parser.add_argument(
        "--quiet-wait", type=float, default=0.0, help="before each target, wait up to S s for idle"
    )
    parser.add_argument("--profile", type=Path, default=None, help="py-spy the server into DIR")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")


def finish(run: Callable[[], Any], args: argparse.Namespace, profiles: bool = True) -> int:
    """Run the benchmark coroutine factory, print, write JSON; exit 1 when a row is invalid."""
    if args.rounds < 1 or args.quiet_wait < 0:
        raise SystemExit("--rounds must be >= 1 and --quiet-wait >= 0")
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    json_path: Path | None = args.json
    try:
        found: dict[str, Any] = asyncio.run(run())
    except asyncio.CancelledError:
        say("interrupted: servers stopped, database dropped")
        return 130
    host = found["machine"]
    print(
        f"{host['nproc']} cores ({host['cpu_model']}), Python {host['python']}, "
        f"aiohttp {host['aiohttp']}, python-socketio {host['python-socketio']}, "
        f"pinning: {host['pinning']}; other processes before the run: "
        f"{host['busy_before_run']:.0%} of a core"
    )
    print(found["table"])
    if profiles:
        for result in found["results"]:
            if result.get("profile"):
                print()
                print(profile_text(f"{result['target']} #{result['round']}", result["profile"]))
    if json_path is not None:
        text = json.dumps(_finite(found), indent=2, allow_nan=False, default=str)
        json_path.write_text(text + "\n", encoding="utf-8")
        print(f"results written to {json_path}")
    return 1 if any(r["invalid"] for r in found["results"]) else 0
