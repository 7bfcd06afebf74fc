"""Authenticated ``GET /api/v1/me``: the whole teleconsult stack against its ceiling.

Run: ``.venv/bin/python -m bench.api_requests [--duration 10] [--concurrency 32]
[--rate R] [--targets teleconsult,reference] [--rounds N] [--json PATH]``
(``--help`` for the rest).

One invocation makes a fresh database with a clinic and ``--users`` signed-in
patients, then, one target after the other, starts the target's server in its
own subprocess on 127.0.0.1 (pinned to one core, the generator to another),
drives it closed-loop (and open-loop with ``--rate``), and stops it. The
targets (see ``bench/servers.py``):

* ``teleconsult`` -- ``teleconsult serve`` as deployed (INFO access log on);
* ``teleconsult-quiet`` -- the same with ``LOG_LEVEL=WARNING`` (no access log);
* ``reference`` -- bare aiohttp + pyjwt + one asyncpg ``SELECT``: the ceiling;
* ``reference-nodb`` -- the reference without the query.

A result is flagged invalid when the generator itself used >= 90 % of a core
(then it measured the generator) or when any request failed, and noisy when
more than a quarter of a core went to neither generator, server nor database
(on a shared machine: someone else's work). ``--quiet-wait`` and
``--retry-noisy`` help get clean figures on such a machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg

from bench.cpu import CpuProbe, others_busy
from bench.loadgen import GENERATOR_CPU_LIMIT, LoadSpec, Window, percentile, run_load
from bench.report import Result, format_table, positive, ratios, target_list
from teleconsult.accounts import store
from teleconsult.core.identity import Role
from teleconsult.core.migrations import migrate
from teleconsult.core.tokens import TokenService, hash_refresh_token, new_refresh_token

ADMIN_DSN = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
HOST = "127.0.0.1"
PATH = "/api/v1/me"
ISSUER = "teleconsult"
# CPU (share of a core) taken by neither generator, server nor database above which
# a result is marked noisy: on a shared machine, someone else's work was running.
NOISE_LIMIT = 0.25
REPO = Path(__file__).resolve().parent.parent

# (server kind, extra environment) per target name.
TARGETS: dict[str, tuple[str, dict[str, str]]] = {
    "teleconsult": ("teleconsult", {"LOG_LEVEL": "INFO"}),
    "teleconsult-quiet": ("teleconsult", {"LOG_LEVEL": "WARNING"}),
    "reference": ("reference", {}),
    "reference-nodb": ("reference-nodb", {}),
}
# Settings the parent's environment must not leak into a server.
_SCRUBBED = ("REDIS_URL", "MQTT_URL", "LOG_LEVEL", "LOG_FORMAT", "HOST", "PORT")


@dataclass
class Fixture:
    dsn: str
    secret: str
    headers: list[dict[str, str]]


# --- database -------------------------------------------------------------------------


def _dsn_for(database: str) -> str:
    return urlunsplit(urlsplit(ADMIN_DSN)._replace(path=f"/{database}"))


async def prepare_database(users: int) -> Fixture:
    """A fresh migrated database, one clinic, ``users`` patients each with a live session."""
    name = f"tc_bench_{os.getpid()}_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = _dsn_for(name)
    secret = secrets.token_urlsafe(48)
    tokens = TokenService(secret=secret, issuer=ISSUER, access_ttl=3600)
    headers: list[dict[str, str]] = []
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        clinic = await store.insert_clinic(conn, name="Bench Clinic", timezone="UTC")
        expires = datetime.now(UTC) + timedelta(days=1)
        for i in range(users):
            user = await store.insert_user(
                conn,
                clinic_id=clinic.id,
                email=f"bench-{i}@example.test",
                password_hash="!unusable",  # nobody signs in with a password here
                role=Role.PATIENT,
                full_name=f"Bench Patient {i}",
                phone="+254700000000",
            )
            assert user is not None
            session_id = await store.create_session(
                conn,
                user_id=user.id,
                expires_at=expires,
                token_hash=hash_refresh_token(new_refresh_token()),
            )
            token = tokens.mint_access(user_id=user.id, session_id=session_id)
            headers.append({"Authorization": f"Bearer {token}"})
    finally:
        await conn.close()
    return Fixture(dsn=dsn, secret=secret, headers=headers)


async def drop_database(dsn: str) -> None:
    name = urlsplit(dsn).path.lstrip("/")
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


# --- servers --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """One target's server subprocess; always stopped by ``stop``."""

    def __init__(self, target: str, fixture: Fixture, cpu: int | None, pool_max: int) -> None:
        kind, extra = TARGETS[target]
        self.target = target
        self.port = _free_port()
        self.url = f"http://{HOST}:{self.port}{PATH}"
        self._dir = tempfile.TemporaryDirectory(prefix=f"bench-{target}-")
        self.log_path = Path(self._dir.name) / "server.log"
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
        env.update(
            HOST=HOST,
            PORT=str(self.port),
            DATABASE_URL=fixture.dsn,
            DATABASE_POOL_MIN="1",
            DATABASE_POOL_MAX=str(pool_max),
            JWT_SECRET=fixture.secret,
            JWT_ISSUER=ISSUER,
            ACCESS_TOKEN_TTL="3600",
            TELECONSULT_DATA_DIR=str(Path(self._dir.name) / "data"),
            LOG_FORMAT="json",
            PYTHONUNBUFFERED="1",
        )
        env.update(extra)
        command = [sys.executable, "-m", "bench.servers", kind, "--max-seconds", "900"]
        if cpu is not None:
            command += ["--cpu", str(cpu)]
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    async def wait_ready(self, headers: dict[str, str], within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.target} exited early:\n{self.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                    async with session.get(self.url, headers=headers) as resp:
                        body = await resp.text()
                        if resp.status == 200:
                            return
                        raise RuntimeError(f"{self.target} answered {resp.status}: {body}")
                await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.target} not ready after {within} s:\n{self.log_tail()}")

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


# --- the run --------------------------------------------------------------------------


def _result(
    target: str,
    round_no: int,
    window: Window,
    probe: CpuProbe,
    rate: float | None,
    errors_ok: bool,
) -> Result:
    lat = window.latencies
    completed = len(lat) + window.error_count
    ms = 1e3
    result = Result(
        target=target,
        mode=window.mode,
        round=round_no,
        requests=completed,
        rps=window.completed / window.wall if window.wall else 0.0,
        p50_ms=percentile(lat, 50) * ms,
        p90_ms=percentile(lat, 90) * ms,
        p99_ms=percentile(lat, 99) * ms,
        p999_ms=percentile(lat, 99.9) * ms,
        max_ms=(lat[-1] if lat else float("nan")) * ms,
        errors=window.error_count,
        error_kinds=dict(window.errors),
        generator_cpu=window.generator_cpu,
        server_cpu=probe.server,
        database_cpu=probe.database_cpu,
        core_busy=probe.cores,
        other_cpu=probe.other,
        target_rate=rate,
    )
    if window.generator_cpu >= GENERATOR_CPU_LIMIT:
        result.invalid.append(
            f"generator used {window.generator_cpu:.0%} of a core "
            f"(limit {GENERATOR_CPU_LIMIT:.0%}): it measured itself"
        )
    if rate is not None and result.rps < 0.95 * rate:
        result.notes.append(
            f"open loop: {result.rps:.0f} of {rate:g} req/s answered in the window -- over "
            "capacity, so latencies are mostly queueing"
        )
    if window.max_send_lag > 0.005:
        result.notes.append(
            f"open loop: the generator sent up to {window.max_send_lag * 1e3:.1f} ms late "
            "(counted in the latencies)"
        )
    if result.other_cpu > NOISE_LIMIT:
        result.noisy = True
        result.notes.append(
            f"{result.other_cpu:.0%} of a core went to neither generator, server nor database "
            "(kernel, other processes): noisy"
        )
    if window.error_count and not errors_ok:
        result.invalid.append(f"{window.error_count} failed requests: {dict(window.errors)}")
    return result


async def bench_target(
    target: str,
    round_no: int,
    fixture: Fixture,
    args: argparse.Namespace,
    cores: tuple[int, int] | None,
) -> list[Result]:
    if args.quiet_wait > 0:
        await _wait_for_quiet(args.quiet_wait)
    server = Server(target, fixture, cores[1] if cores else None, args.pool_max)
    monitor: asyncpg.Connection | None = None
    try:
        await server.wait_ready(fixture.headers[0])
        monitor = await asyncpg.connect(fixture.dsn)
        database = urlsplit(fixture.dsn).path.lstrip("/")
        rates: list[float | None] = [None] + ([args.rate] if args.rate else [])
        results = []
        for rate in rates:
            probe = CpuProbe(server.proc.pid, monitor, database)
            spec = LoadSpec(
                url=server.url,
                headers=fixture.headers,
                concurrency=args.concurrency,
                warmup=args.warmup,
                duration=args.duration,
                rate=rate,
                timeout=args.timeout,
            )
            window = await run_load(spec, target, probe)
            results.append(_result(target, round_no, window, probe, rate, args.allow_errors))
            if server.proc.poll() is not None:
                raise RuntimeError(f"{target} died during the run:\n{server.log_tail()}")
        return results
    finally:
        if monitor is not None:
            await monitor.close()
        server.stop()


async def _bench_retrying(
    target: str,
    round_no: int,
    fixture: Fixture,
    args: argparse.Namespace,
    cores: tuple[int, int] | None,
) -> list[Result]:
    """``bench_target``, run again (up to ``--retry-noisy`` times) while it comes out noisy."""
    attempt = 0
    while True:
        got = await bench_target(target, round_no, fixture, args, cores)
        if not any(r.noisy for r in got) or attempt >= args.retry_noisy:
            break
        attempt += 1
        print(f"[{target}] noisy: attempt {attempt + 1}", file=sys.stderr)
    if attempt:
        for r in got:
            r.notes.append(f"attempt {attempt + 1}; {attempt} noisy attempt(s) discarded")
    return got


async def _wait_for_quiet(bound: float) -> None:
    """On a shared machine, wait (at most ``bound`` s) until the others are idle."""
    started = time.monotonic()
    said = False
    while True:
        busy = await others_busy()
        waited = time.monotonic() - started
        if busy <= NOISE_LIMIT or waited >= bound:
            if said or busy > NOISE_LIMIT:
                state = "idle" if busy <= NOISE_LIMIT else f"still busy ({busy:.0%} of a core)"
                print(f"machine {state} after {waited:.0f} s", file=sys.stderr)
            return
        if not said:
            print(f"machine busy ({busy:.0%} of a core): waiting", file=sys.stderr)
            said = True


def machine(cores: tuple[int, int] | None) -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    from importlib.metadata import version

    return {
        "nproc": len(os.sched_getaffinity(0)),  # called before the generator pins itself
        "cpu_model": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "aiohttp": version("aiohttp"),
        "asyncpg": version("asyncpg"),
        "pyjwt": version("pyjwt"),
        "pinning": (
            {"load_generator_core": cores[0], "server_core": cores[1]}
            if cores
            else "none (fewer than 2 cores)"
        ),
    }


def _pick_cores() -> tuple[int, int] | None:
    """(load generator core, server core), or None on a single core."""
    available = sorted(os.sched_getaffinity(0))
    return (available[0], available[1]) if len(available) >= 2 else None


async def run(args: argparse.Namespace) -> dict[str, Any]:
    # SIGINT or SIGTERM cancel the run, so the ``finally`` clauses stop the
    # servers and drop the database.
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    assert main_task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, main_task.cancel)
    cores = _pick_cores()
    host = machine(cores)
    host["busy_before_run"] = await others_busy()
    fixture = await prepare_database(args.users)
    results: list[Result] = []
    try:
        if cores:
            os.sched_setaffinity(0, {cores[0]})
        for round_no in range(1, args.rounds + 1):
            for target in args.targets:
                results.extend(await _bench_retrying(target, round_no, fixture, args, cores))
    finally:
        await drop_database(fixture.dsn)
    found_ratios = ratios(results)
    return {
        "benchmark": "api_requests: authenticated GET /api/v1/me",
        "command": shlex.join([sys.executable, "-m", "bench.api_requests", *sys.argv[1:]]),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": host,
        "params": {
            "duration": args.duration,
            "warmup": args.warmup,
            "concurrency": args.concurrency,
            "rate": args.rate,
            "users": args.users,
            "pool_max": args.pool_max,
            "targets": args.targets,
            "rounds": args.rounds,
            "quiet_wait": args.quiet_wait,
            "retry_noisy": args.retry_noisy,
        },
        "results": [asdict(r) for r in results],
        "ratios": found_ratios,
        "table": format_table(results, found_ratios),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.api_requests",
        description="Authenticated GET /api/v1/me: teleconsult against a bare-aiohttp reference.",
    )
    parser.add_argument("--duration", type=positive, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument("--concurrency", type=int, default=32, help="connections / workers")
    parser.add_argument("--rate", type=positive, default=None, help="also run open loop at R/s")
    parser.add_argument("--users", type=int, default=64, help="signed-in users to cycle through")
    parser.add_argument("--pool-max", type=int, default=10, help="database pool size (both)")
    parser.add_argument("--timeout", type=positive, default=10.0, help="per-request timeout")
    parser.add_argument(
        "--targets",
        type=target_list(TARGETS),
        default=["teleconsult", "reference"],
        help=f"comma-separated, run in this order; from {', '.join(TARGETS)}",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="run the target list this many times, in order"
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        help="before each target, wait up to this many seconds for an idle machine",
    )
    parser.add_argument(
        "--retry-noisy",
        type=int,
        default=0,
        help="run a target again, up to this many times, while its result is noisy",
    )
    parser.add_argument("--allow-errors", action="store_true", help="errors do not invalidate")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    if min(args.concurrency, args.users, args.pool_max, args.rounds) < 1:
        parser.error("--concurrency, --users, --pool-max and --rounds must be >= 1")
    if args.warmup < 0 or args.retry_noisy < 0 or args.quiet_wait < 0:
        parser.error("--warmup, --retry-noisy and --quiet-wait must be >= 0")
    return args


def _finite(value: Any) -> Any:
    """NaN (no data: a percentile of nothing) as JSON null."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = asyncio.run(run(args))
    except asyncio.CancelledError:
        print("interrupted: servers stopped, database dropped", file=sys.stderr)
        return 130
    host = report["machine"]
    print(
        f"{host['nproc']} cores ({host['cpu_model']}), Python {host['python']}, "
        f"pinning: {host['pinning']}; "
        f"other processes' CPU before the run: {host['busy_before_run']:.0%} of a core"
    )
    if host["busy_before_run"] > NOISE_LIMIT:
        print("! something else was using the machine before the run: expect noise")
    print(report["table"])
    if args.json is not None:
        text = json.dumps(_finite(report), indent=2, allow_nan=False)
        args.json.write_text(text + "\n", encoding="utf-8")
        print(f"results written to {args.json}")
    return 1 if any(r["invalid"] for r in report["results"]) else 0


if __name__ == "__main__":
    sys.exit(main())
