"""Audited writes per second: the old global-lock chain against the intake and sequencer.

Run: ``.venv/bin/python bench/audit_writes.py [--duration 5] [--warmup 1]
[--concurrency 16] [--processes 1,2] [--targets old,new,new-cte,none]
[--quiet-wait S] [--json PATH]``.

One audited write is a small change (one ``INSERT INTO bench_changes``) and its
audit event, committed together. Closed loop, the same concurrency per writer
process, warm-up and window for every target, one target after the other, on a
throwaway database of the local PostgreSQL (``TEST_DATABASE_URL``, default
``postgresql://postgres@127.0.0.1:5432/test``), dropped at the end:

* ``old``: the design before the intake, reproduced here as the reference: in the
  change's transaction, a savepoint, ``pg_advisory_xact_lock`` on one cluster-wide
  key, ``SELECT ... FROM audit_head FOR UPDATE``, the chained ``audit_log`` row
  (hashed with ``compute_hash``) and the head update, all held until COMMIT;
* ``new``: ``BEGIN``, the change, ``AuditTrail.record(event, conn)`` (one
  ``INSERT INTO audit_intake``), ``COMMIT``;
* ``new-cte``: the change and its intake row in one statement (a CTE built with
  ``intake_placeholders``/``intake_params``): one round trip;
* ``none``: the change alone, unaudited (one INSERT): the ceiling of this machine
  and database for the write itself.

Each target runs with 1, then 2 writer processes (``--processes``). For the
``new`` targets every writer process also runs an ``AuditSequencer`` (one of
them leads). The sequencer's lag is the time from an event's intake insert to
the commit of the batch that chained it (checkpoint ``signed_at`` minus
``occurred_at``). Every target ends by checking that the chain holds exactly one
row per write, and the run ends with ``verify_database`` over everything.
Progress goes to stderr every second. ``busy`` is how many cores other work kept
busy in the second before a target (``--quiet-wait S`` waits up to S seconds for
less than 0.3).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import sys
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from uuid import UUID

import asyncpg
from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

from teleconsult.audit import (
    INTAKE_COLUMNS,
    AuditEvent,
    AuditRecord,
    AuditSequencer,
    AuditTrail,
    CheckpointSigner,
    compute_hash,
    format_report,
    intake_params,
    intake_placeholders,
    verify_database,
)
from teleconsult.core.db import create_pool
from teleconsult.core.migrations import migrate

ADMIN_DSN = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
TARGETS = ("old", "new", "new-cte", "none")
# The old writers' lock: "tcaudit!" as bytes, as the old AuditTrail took it.
OLD_LOCK_KEY = int.from_bytes(b"tcaudit!", "big")
CLINIC = UUID("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee")
ACTOR = UUID("11111111-2222-3333-4444-555555555555")

INSERT_CHANGE = "INSERT INTO bench_changes (writer, n) VALUES ($1, $2)"
OLD_INSERT = """
INSERT INTO audit_log (seq, occurred_at, actor_id, actor_role, clinic_id, action,
                       object_type, object_id, ip, outcome, detail, prev_hash, hash)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::text::jsonb, $12, $13)
"""
CTE_WRITE = f"""
WITH c AS (INSERT INTO bench_changes (writer, n) VALUES ($1, $2) RETURNING id)
INSERT INTO audit_intake ({", ".join(INTAKE_COLUMNS)})
SELECT {intake_placeholders(3, object_id="COALESCE({}, c.id::text)")} FROM c
"""


def event(writer: int, n: int, object_id: str | None) -> AuditEvent:
    return AuditEvent(
        action="bench.write",
        actor_id=ACTOR,
        actor_role="doctor",
        clinic_id=CLINIC,
        object_type="bench_change",
        object_id=object_id,
        ip="127.0.0.1",
        detail={"writer": writer, "n": n},
    )


async def old_write(conn: asyncpg.Connection, writer: int, n: int) -> None:
    """What ``AuditTrail.record(event, conn)`` did before the intake."""
    audited = event(writer, n, f"{writer}-{n}")
    async with conn.transaction():
        await conn.execute(INSERT_CHANGE, writer, n)
        async with conn.transaction():  # the old record's savepoint
            await conn.execute("SELECT pg_advisory_xact_lock($1)", OLD_LOCK_KEY)
            head = await conn.fetchrow("SELECT seq, hash FROM audit_head FOR UPDATE")
            assert head is not None
            unhashed = AuditRecord(
                seq=head["seq"] + 1,
                occurred_at=datetime.now(UTC),
                action=audited.action,
                outcome=audited.outcome,
                actor_id=audited.actor_id,
                actor_role=audited.actor_role,
                clinic_id=audited.clinic_id,
                object_type=audited.object_type,
                object_id=audited.object_id,
                ip=audited.ip,
                detail=dict(audited.detail),
                prev_hash=bytes(head["hash"]),
                hash=b"",
            )
            record = replace(unhashed, hash=compute_hash(unhashed.prev_hash, unhashed))
            await conn.execute(
                OLD_INSERT,
                record.seq,
                record.occurred_at,
                record.actor_id,
                record.actor_role,
                record.clinic_id,
                record.action,
                record.object_type,
                record.object_id,
                record.ip,
                record.outcome,
                json.dumps(dict(record.detail), sort_keys=True, separators=(",", ":")),
                record.prev_hash,
                record.hash,
            )
            await conn.execute("UPDATE audit_head SET seq = $1, hash = $2", record.seq, record.hash)


# --- worker process --------------------------------------------------------------------


def _emit(document: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(document) + "\n")
    sys.stdout.flush()


async def worker(args: argparse.Namespace) -> None:
    """One writer process: wait for "go", write for warmup + duration, report."""
    pool = await create_pool(args.dsn, min_size=args.concurrency, max_size=args.concurrency)
    trail = AuditTrail(pool)
    sequencer: AuditSequencer | None = None
    if args.design in ("new", "new-cte"):
        sequencer = AuditSequencer(
            args.dsn,
            signer=CheckpointSigner(bytes.fromhex(args.seed)),
            checkpoint_file=Path(args.checkpoints),
        )
        await sequencer.start()
    histogram = HdrHistogram(1, 60_000_000, 3)
    counts = {"total": 0, "measured": 0, "second": 0, "errors": 0}
    writer = args.writer

    async def one(n: int) -> None:
        async with pool.acquire() as conn:
            if args.design == "old":
                await old_write(conn, writer, n)
            elif args.design == "new":
                async with conn.transaction():
                    await conn.execute(INSERT_CHANGE, writer, n)
                    await trail.record(event(writer, n, f"{writer}-{n}"), conn)
            elif args.design == "new-cte":
                await conn.execute(CTE_WRITE, writer, n, *intake_params(event(writer, n, None)))
            else:
                await conn.execute(INSERT_CHANGE, writer, n)

    _emit({"ready": True})
    await asyncio.to_thread(sys.stdin.readline)
    start = time.monotonic()
    measure_from = start + args.warmup
    stop_at = measure_from + args.duration
    sequence = iter(range(10**12))

    async def loop() -> None:
        while (now := time.monotonic()) < stop_at:
            began = time.perf_counter()
            try:
                await one(next(sequence))
            except (asyncpg.PostgresError, OSError) as exc:
                counts["errors"] += 1
                if counts["errors"] <= 3:
                    print(f"write failed: {exc!r}", file=sys.stderr)
                continue
            counts["total"] += 1
            if now >= measure_from:
                histogram.record_value(max(1, int((time.perf_counter() - began) * 1e6)))
                counts["measured"] += 1
                counts["second"] += 1

    async def progress() -> None:
        second = 0
        await asyncio.sleep(max(0.0, measure_from - time.monotonic()))
        while time.monotonic() < stop_at - 0.01:
            await asyncio.sleep(1.0)
            second += 1
            _emit({"second": second, "writes": counts["second"]})
            counts["second"] = 0

    ticker = asyncio.create_task(progress())
    await asyncio.gather(*(loop() for _ in range(args.concurrency)))
    ticker.cancel()
    try:
        await ticker
    except asyncio.CancelledError:
        pass
    if sequencer is not None:
        # Keep the candidate running until the leader has chained this run's events.
        for _ in range(600):  # at most 30 s
            if not await pool.fetchval("SELECT EXISTS (SELECT 1 FROM audit_intake)"):
                break
            await asyncio.sleep(0.05)
        await sequencer.close()
    await pool.close()
    _emit(
        {
            "done": True,
            "total": counts["total"],
            "measured": counts["measured"],
            "errors": counts["errors"],
            "seconds": args.duration,
            "histogram": base64.b64encode(histogram.encode()).decode("ascii"),
        }
    )


# --- parent ----------------------------------------------------------------------------


def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    return values[3] + values[4], sum(values)  # idle + iowait, all


def cores_busy(seconds: float = 1.0) -> float:
    """How many cores all processes kept busy over ``seconds`` (Linux /proc/stat)."""
    idle0, total0 = _cpu_times()
    time.sleep(seconds)
    idle1, total1 = _cpu_times()
    share = 1 - (idle1 - idle0) / max(1, total1 - total0)
    return share * (os.cpu_count() or 1)


async def quiet(wait: float) -> float:
    """Wait up to ``wait`` seconds for the machine to go idle; return the cores busy."""
    deadline = time.monotonic() + wait
    busy = await asyncio.to_thread(cores_busy)
    while busy > 0.3 and time.monotonic() < deadline:
        busy = await asyncio.to_thread(cores_busy)
    return busy


@dataclass
class Result:
    target: str
    processes: int
    writes_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    rows_per_write: float
    lag_p50_ms: float | None
    lag_p99_ms: float | None
    batches: int | None
    busy_before: float


def dsn_for(database: str) -> str:
    return urlunsplit(urlsplit(ADMIN_DSN)._replace(path=f"/{database}"))


async def create_bench_database() -> str:
    name = f"tc_bench_audit_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = dsn_for(name)
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        await conn.execute(
            "CREATE TABLE bench_changes (id bigserial PRIMARY KEY, writer int NOT NULL, "
            "n bigint NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"
        )
    finally:
        await conn.close()
    return dsn


async def drop_bench_database(dsn: str) -> None:
    name = urlsplit(dsn).path.lstrip("/")
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def run_target(
    args: argparse.Namespace, dsn: str, design: str, processes: int, seed: str, checkpoints: Path
) -> Result:
    conn = await asyncpg.connect(dsn)
    try:
        seq_before = await conn.fetchval("SELECT seq FROM audit_head")
        changes_before = await conn.fetchval("SELECT count(*) FROM bench_changes")
    finally:
        await conn.close()
    busy_before = await quiet(args.quiet_wait)
    command = [
        sys.executable,
        __file__,
        "--worker",
        "--dsn",
        dsn,
        "--design",
        design,
        "--concurrency",
        str(args.concurrency),
        "--duration",
        str(args.duration),
        "--warmup",
        str(args.warmup),
        "--seed",
        seed,
        "--checkpoints",
        str(checkpoints),
    ]
    workers = [
        await asyncio.create_subprocess_exec(
            *command,
            "--writer",
            str(index),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for index in range(processes)
    ]
    for proc in workers:
        assert proc.stdout is not None
        line = await proc.stdout.readline()
        if not line or not json.loads(line).get("ready"):
            raise RuntimeError(f"a {design} writer did not start")
    for proc in workers:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
    label = f"{design} x{processes}"
    per_second: dict[int, list[int]] = {}
    finals: list[dict[str, Any]] = []

    async def read(proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            document = json.loads(line)
            if "second" in document:
                got = per_second.setdefault(document["second"], [])
                got.append(document["writes"])
                if len(got) == processes:
                    print(
                        f"  {label:<12} {document['second']:>2} s  {sum(got):>7,} writes/s",
                        file=sys.stderr,
                        flush=True,
                    )
            elif document.get("done"):
                finals.append(document)
        await proc.wait()

    await asyncio.gather(*(read(proc) for proc in workers))
    if len(finals) != processes:
        raise RuntimeError(f"a {design} writer failed")
    histogram = HdrHistogram(1, 60_000_000, 3)
    for final in finals:
        histogram.add(HdrHistogram.decode(base64.b64decode(final["histogram"])))
    measured = sum(f["measured"] for f in finals)
    total = sum(f["total"] for f in finals)
    conn = await asyncpg.connect(dsn)
    try:
        seq_after = await conn.fetchval("SELECT seq FROM audit_head")
        changes = await conn.fetchval("SELECT count(*) FROM bench_changes") - changes_before
        lag: list[float | None] = [None, None]
        batches = None
        if design in ("new", "new-cte"):
            lag = list(
                await conn.fetchval(
                    """
                    SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY lag)
                    FROM (
                        SELECT extract(epoch FROM c.signed_at - l.occurred_at) * 1000 AS lag
                        FROM audit_log AS l
                        CROSS JOIN LATERAL (
                            SELECT signed_at FROM audit_checkpoints AS c
                            WHERE c.seq >= l.seq ORDER BY c.seq LIMIT 1
                        ) AS c
                        WHERE l.seq > $1 AND l.seq <= $2
                    ) AS lags
                    """,
                    seq_before,
                    seq_after,
                )
            )
            batches = await conn.fetchval(
                "SELECT count(*) FROM audit_checkpoints WHERE seq > $1 AND seq <= $2",
                seq_before,
                seq_after,
            )
    finally:
        await conn.close()
    chained = seq_after - seq_before
    expected_rows = 0 if design == "none" else total
    if not (total == changes and chained == expected_rows):
        print(
            f"  {label}: MISMATCH writes {total}, changes {changes}, audit rows {chained}",
            file=sys.stderr,
        )
    return Result(
        target=design,
        processes=processes,
        writes_per_s=measured / args.duration,
        p50_ms=histogram.get_value_at_percentile(50) / 1000,
        p99_ms=histogram.get_value_at_percentile(99) / 1000,
        errors=sum(f["errors"] for f in finals),
        rows_per_write=chained / total if total else 0.0,  # 0 for "none"
        lag_p50_ms=lag[0],
        lag_p99_ms=lag[1],
        batches=batches,
        busy_before=busy_before,
    )


def print_report(results: list[Result]) -> None:
    old = {r.processes: r.writes_per_s for r in results if r.target == "old"}
    header = (
        f"{'target':<9} {'procs':>5} {'writes/s':>9} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'vs old':>7} {'lag p50':>8} {'lag p99':>8} {'batches':>7} {'rows/w':>6} "
        f"{'errors':>6} {'busy':>5}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        ratio = f"{r.writes_per_s / old[r.processes]:.1f}x" if old.get(r.processes) else "-"
        lag50 = "-" if r.lag_p50_ms is None else f"{r.lag_p50_ms:.0f} ms"
        lag99 = "-" if r.lag_p99_ms is None else f"{r.lag_p99_ms:.0f} ms"
        print(
            f"{r.target:<9} {r.processes:>5} {r.writes_per_s:>9,.0f} {r.p50_ms:>7.2f} "
            f"{r.p99_ms:>7.2f} {ratio:>7} {lag50:>8} {lag99:>8} "
            f"{'-' if r.batches is None else r.batches:>7} {r.rows_per_write:>6.2f} "
            f"{r.errors:>6} {r.busy_before:>5.2f}"
        )


async def main(args: argparse.Namespace, checkpoints: Path) -> tuple[list[Result], bool]:
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    process_counts = [int(p) for p in args.processes.split(",")]
    print(
        f"audited writes: {args.duration:g} s (after {args.warmup:g} s warm-up) per target, "
        f"{args.concurrency} connections per writer process, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f}",
        file=sys.stderr,
    )
    dsn = await create_bench_database()
    seed = secrets.token_bytes(32).hex()
    results: list[Result] = []
    try:
        for design in targets:
            for processes in process_counts:
                results.append(await run_target(args, dsn, design, processes, seed, checkpoints))
        report = await verify_database(
            dsn,
            trusted_keys=[CheckpointSigner(bytes.fromhex(seed)).public_key],
            checkpoint_files=[checkpoints] if await asyncio.to_thread(checkpoints.exists) else [],
        )
    finally:
        await drop_bench_database(dsn)
    print_report(results)
    print(f"after all targets: {format_report(report).splitlines()[-1]}")
    return results, report.ok


def run(args: argparse.Namespace) -> int:
    targets = {t.strip() for t in args.targets.split(",") if t.strip()}
    if targets - set(TARGETS):
        print(f"unknown targets: {sorted(targets - set(TARGETS))}", file=sys.stderr)
        return 2
    checkpoints = Path(f"/tmp/tc_bench_audit_{os.getpid()}-checkpoints.jsonl")
    try:
        results, ok = asyncio.run(main(args, checkpoints))
    finally:
        checkpoints.unlink(missing_ok=True)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0 if ok else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        help="before each target, wait up to this many seconds for the cores to go idle",
    )
    parser.add_argument("--json", help="also write the results here")
    # Internal: the writer processes.
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    parser.add_argument("--design", choices=TARGETS, help=argparse.SUPPRESS)
    parser.add_argument("--writer", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--seed", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoints", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.worker:
        asyncio.run(worker(arguments))
        sys.exit(0)
    sys.exit(run(arguments))
