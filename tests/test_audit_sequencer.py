"""The audit sequencer and signed checkpoints, on real PostgreSQL.

Each test gets its own throwaway database. Sequencers here are real: their own
connections, the cluster-wide advisory lock, failover when a leader's
connection is terminated.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from teleconsult.audit import (
    AuditEvent,
    AuditSequencer,
    AuditTrail,
    ProblemKind,
    VerifyReport,
    chain_batch,
    compute_hash,
    format_report,
    verify_database,
)
from teleconsult.audit.checkpoints import Checkpoint, TrustedKeys, read_checkpoint_file
from teleconsult.core.db import create_pool
from tests.auditkit import (
    OTHER_SEED,
    chain_now,
    chain_only_report,
    chained,
    leader_pid,
    make_signer,
    rewrite_from,
    tamper,
)
from tests.dbutil import create_database, drop_database

CLINIC = UUID("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee")
SIGNER = make_signer()
KEYS = [SIGNER.public_key]


@pytest.fixture
async def dsn() -> AsyncIterator[str]:
    url = await create_database()
    yield url
    await drop_database(url)


@pytest.fixture
async def audit_pool(dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(dsn, min_size=1, max_size=20)
    yield pool
    await pool.close()


@pytest.fixture
def trail(audit_pool: asyncpg.Pool) -> AuditTrail:
    return AuditTrail(audit_pool)


@pytest.fixture
def checkpoints(tmp_path: Path) -> Path:
    return tmp_path / "audit-checkpoints.jsonl"


MakeSequencer = Callable[..., Awaitable[AuditSequencer]]


@pytest.fixture
async def make_sequencer(dsn: str, checkpoints: Path) -> AsyncIterator[MakeSequencer]:
    """Started sequencers on the test's database, all closed at the end."""
    started: list[AuditSequencer] = []

    async def make(**options: Any) -> AuditSequencer:
        options = {"interval": 0.01, "retry": 0.2, **options}
        sequencer = AuditSequencer(dsn, signer=SIGNER, checkpoint_file=checkpoints, **options)
        await sequencer.start()
        started.append(sequencer)
        return sequencer

    yield make
    for sequencer in started:
        await sequencer.close()


def event(n: int, **changes: Any) -> AuditEvent:
    fields: dict[str, Any] = {
        "action": "patient.read",
        "clinic_id": CLINIC,
        "actor_role": "doctor",
        "object_type": "patient",
        "object_id": f"patient-{n}",
        "detail": {"n": n},
    }
    return AuditEvent(**(fields | changes))


def kinds_at(report: VerifyReport) -> set[tuple[int, ProblemKind]]:
    return {(p.seq, p.kind) for p in report.problems}


async def full_verify(dsn: str, checkpoints: Path) -> VerifyReport:
    return await verify_database(dsn, trusted_keys=KEYS, checkpoint_files=[checkpoints])


async def until(check: Callable[[], bool], within: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"not so within {within} s")
        await asyncio.sleep(0.02)


def file_lines(path: Path) -> list[Checkpoint]:
    items = [item for _, item in read_checkpoint_file(path, path.stat().st_size)]
    assert all(isinstance(item, Checkpoint) for item in items)
    return [item for item in items if isinstance(item, Checkpoint)]


def edit_lines(path: Path, index: int, change: Callable[[str], str]) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines[index] = change(lines[index])
    path.write_text("".join(lines))


def append_text(path: Path, text: str) -> None:
    with path.open("a") as handle:
        handle.write(text)


# --- chaining --------------------------------------------------------------------------


async def test_a_batch_of_intake_rows_becomes_one_signed_chain(
    trail: AuditTrail, audit_pool: asyncpg.Pool, dsn: str, checkpoints: Path
) -> None:
    await trail.record_many([event(n) for n in range(25)])

    chained_rows = await chain_now(dsn, checkpoint_file=checkpoints)
    report = await full_verify(dsn, checkpoints)

    assert chained_rows == 25
    assert report.ok, format_report(report)
    assert (report.rows, report.head_seq, report.pending) == (25, 25, 0)
    stored = await audit_pool.fetch("SELECT seq, key_id FROM audit_checkpoints")
    assert [(r["seq"], r["key_id"]) for r in stored] == [(25, SIGNER.key_id)]
    (line,) = file_lines(checkpoints)
    assert line.seq == 25
    assert TrustedKeys(KEYS).refusal(line) is None
    rows = await trail.list_for_clinic(clinic_id=CLINIC, limit=500)
    assert [r.object_id for r in rows] == [f"patient-{n}" for n in range(25)]
    assert all(r.hash == compute_hash(r.prev_hash, r) for r in rows)


async def test_batches_are_cut_at_the_batch_size_with_one_checkpoint_each(
    trail: AuditTrail, audit_pool: asyncpg.Pool, dsn: str, checkpoints: Path
) -> None:
    await trail.record_many([event(n) for n in range(10)])

    await chain_now(dsn, checkpoint_file=checkpoints, batch_size=4)

    seqs = await audit_pool.fetch("SELECT seq FROM audit_checkpoints ORDER BY seq")
    assert [r["seq"] for r in seqs] == [4, 8, 10]
    assert [c.seq for c in file_lines(checkpoints)] == [4, 8, 10]
    report = await full_verify(dsn, checkpoints)
    assert report.ok, format_report(report)
    assert report.checkpoints is not None
    assert (report.checkpoints.in_database, report.checkpoints.in_files) == (3, 3)


async def test_rollbacks_leave_no_event_and_every_commit_leaves_exactly_one(
    trail: AuditTrail, audit_pool: asyncpg.Pool, dsn: str
) -> None:
    await audit_pool.execute("CREATE TABLE changes_for_test (id int PRIMARY KEY)")
    rng = random.Random(7)
    committed: list[str] = []
    for n in range(40):
        fate = rng.choice(["commit", "rollback", "error"])
        async with audit_pool.acquire() as conn:
            try:
                async with conn.transaction():
                    await conn.execute("INSERT INTO changes_for_test VALUES ($1)", n)
                    await trail.record(event(n), conn)
                    if fate == "error":  # a failing statement after the audit insert
                        await conn.execute("INSERT INTO changes_for_test VALUES ($1)", n)
                    if fate == "rollback":
                        raise LookupError("changed my mind")
            except (LookupError, asyncpg.UniqueViolationError):
                continue
        committed.append(f"patient-{n}")

    assert await audit_pool.fetchval("SELECT count(*) FROM audit_intake") == len(committed)
    await chain_now(dsn)
    rows = await trail.list_for_clinic(clinic_id=CLINIC, limit=500)
    changes = await audit_pool.fetch("SELECT id FROM changes_for_test ORDER BY id")
    assert [r.object_id for r in rows] == committed
    assert [f"patient-{r['id']}" for r in changes] == committed
    assert 0 < len(committed) < 40


async def test_concurrent_writers_are_chained_exactly_once_in_one_chain(
    trail: AuditTrail,
    audit_pool: asyncpg.Pool,
    dsn: str,
    checkpoints: Path,
    make_sequencer: MakeSequencer,
) -> None:
    await make_sequencer(batch_size=50)

    async def writer(w: int) -> None:
        for i in range(30):
            async with audit_pool.acquire() as conn, conn.transaction():
                await trail.record(event(w * 1000 + i), conn)

    await asyncio.gather(*(writer(w) for w in range(15)))
    await chained(audit_pool)

    report = await full_verify(dsn, checkpoints)
    assert report.ok, format_report(report)
    assert report.rows == 450
    ids = await audit_pool.fetch("SELECT object_id FROM audit_log")
    assert sorted(r["object_id"] for r in ids) == sorted(
        f"patient-{w * 1000 + i}" for w in range(15) for i in range(30)
    )


async def test_chaining_from_several_connections_at_once_never_forks(
    trail: AuditTrail, audit_pool: asyncpg.Pool, dsn: str
) -> None:
    """As when two leaders overlap: the head row lock serialises them."""
    stop = asyncio.Event()

    async def keep_chaining() -> None:
        while not stop.is_set():
            await chain_now(dsn, batch_size=7)

    chainers = [asyncio.create_task(keep_chaining()) for _ in range(3)]
    try:
        await asyncio.gather(
            *(trail.record_many([event(w * 100 + i) for i in range(5)]) for w in range(40))
        )
    finally:
        stop.set()
        await asyncio.gather(*chainers)
    await chain_now(dsn)

    report = await verify_database(dsn, trusted_keys=KEYS)
    assert report.ok, format_report(report)
    assert report.rows == 200
    assert await audit_pool.fetchval("SELECT count(DISTINCT object_id) FROM audit_log") == 200


async def test_the_sequencer_chains_what_is_left_when_it_closes(
    trail: AuditTrail, audit_pool: asyncpg.Pool, dsn: str, checkpoints: Path
) -> None:
    sequencer = AuditSequencer(
        dsn, signer=SIGNER, checkpoint_file=checkpoints, interval=5.0, retry=0.2
    )
    await sequencer.start()
    try:
        await until(lambda: sequencer.leading)
        await trail.record_many([event(n) for n in range(3)])
    finally:
        await sequencer.close()

    assert await audit_pool.fetchval("SELECT count(*) FROM audit_intake") == 0
    assert await audit_pool.fetchval("SELECT count(*) FROM audit_log") == 3
    assert not sequencer.leading


# --- leadership ------------------------------------------------------------------------


async def test_only_one_of_two_sequencers_leads(
    audit_pool: asyncpg.Pool, make_sequencer: MakeSequencer
) -> None:
    first = await make_sequencer()
    second = await make_sequencer()

    await until(lambda: first.leading or second.leading)
    await asyncio.sleep(0.5)  # several retries of the other one

    assert [first.leading, second.leading].count(True) == 1
    assert await leader_pid(audit_pool) is not None


async def test_when_the_leaders_connection_is_terminated_the_other_takes_over(
    trail: AuditTrail,
    audit_pool: asyncpg.Pool,
    dsn: str,
    checkpoints: Path,
    make_sequencer: MakeSequencer,
) -> None:
    one, two = await make_sequencer(), await make_sequencer()
    await until(lambda: one.leading or two.leading)
    leader, standby = (one, two) if one.leading else (two, one)
    await trail.record_many([event(n) for n in range(10)])
    await chained(audit_pool)
    old_pid = await leader_pid(audit_pool)

    assert await audit_pool.fetchval("SELECT pg_terminate_backend($1)", old_pid)
    await until(lambda: standby.leading)
    await trail.record_many([event(n) for n in range(10, 20)])
    await chained(audit_pool)

    assert await leader_pid(audit_pool) not in (None, old_pid)
    assert not leader.leading
    report = await full_verify(dsn, checkpoints)
    assert report.ok, format_report(report)
    assert report.rows == 20
    rows = await trail.list_for_clinic(clinic_id=CLINIC, limit=500)
    assert sorted(r.object_id or "" for r in rows) == sorted(f"patient-{n}" for n in range(20))


async def test_when_the_leader_stops_another_process_takes_over(
    trail: AuditTrail, audit_pool: asyncpg.Pool, make_sequencer: MakeSequencer
) -> None:
    one, two = await make_sequencer(), await make_sequencer()
    await until(lambda: one.leading or two.leading)
    leader, standby = (one, two) if one.leading else (two, one)

    await leader.close()  # as when its process exits: the connection and the lock go
    await until(lambda: standby.leading)
    await trail.record(event(1))
    await chained(audit_pool)

    assert await audit_pool.fetchval("SELECT count(*) FROM audit_log") == 1


async def test_an_unreachable_database_is_logged_once_not_on_every_retry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sequencer = AuditSequencer(
        f"postgresql://postgres@127.0.0.1:{port}/nothing",
        signer=SIGNER,
        checkpoint_file=None,
        retry=0.01,
    )
    with caplog.at_level(logging.WARNING, logger="teleconsult.audit.sequencer"):
        await sequencer.start()
        await asyncio.sleep(0.6)
        await sequencer.close()

    warnings = [r for r in caplog.records if r.name == "teleconsult.audit.sequencer"]
    assert len(warnings) == 1
    assert "cannot reach the database" in warnings[0].getMessage()


async def test_a_leader_that_loses_its_connection_warns_once_and_leads_again(
    trail: AuditTrail,
    audit_pool: asyncpg.Pool,
    make_sequencer: MakeSequencer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sequencer = await make_sequencer(retry=0.05)
    await until(lambda: sequencer.leading)

    with caplog.at_level(logging.WARNING, logger="teleconsult.audit.sequencer"):
        await audit_pool.fetchval("SELECT pg_terminate_backend($1)", await leader_pid(audit_pool))
        await until(lambda: not sequencer.leading)
        await until(lambda: sequencer.leading)
        await trail.record(event(1))
        await chained(audit_pool)

    warnings = [r for r in caplog.records if r.name == "teleconsult.audit.sequencer"]
    assert [w.levelname for w in warnings] == ["WARNING"]
    assert "lost the leadership" in warnings[0].getMessage()


# --- what the database refuses ---------------------------------------------------------


async def test_checkpoints_cannot_be_updated_deleted_or_truncated(
    trail: AuditTrail, audit_pool: asyncpg.Pool, dsn: str
) -> None:
    await trail.record(event(1))
    await chain_now(dsn)

    for sql, operation in [
        ("UPDATE audit_checkpoints SET key_id = '0000000000000000'", "UPDATE"),
        ("DELETE FROM audit_checkpoints", "DELETE"),
        ("TRUNCATE audit_checkpoints", "TRUNCATE"),
    ]:
        with pytest.raises(
            asyncpg.PostgresError, match=f"append-only: {operation} on audit_checkpoints"
        ):
            await audit_pool.execute(sql)
    with pytest.raises(asyncpg.PostgresError, match="append-only: DELETE on audit_log"):
        await audit_pool.execute("DELETE FROM audit_log WHERE seq = 1")


async def test_a_checkpoint_that_does_not_match_the_chain_is_refused(
    trail: AuditTrail, audit_pool: asyncpg.Pool, dsn: str
) -> None:
    await trail.record(event(1))
    await chain_now(dsn)
    forged = SIGNER.sign(1, b"\x05" * 32)

    with pytest.raises(asyncpg.PostgresError, match="does not match the chain"):
        await audit_pool.execute(
            "INSERT INTO audit_checkpoints (seq, hash, key_id, signature, signed_at) "
            "VALUES (1, $1, $2, $3, now())",
            forged.hash,
            forged.key_id,
            forged.signature,
        )


async def _rows_after_head(pool: asyncpg.Pool, count: int) -> list[tuple[int, bytes, bytes]]:
    """``count`` (seq, prev_hash, hash) that correctly extend the current head."""
    head = await pool.fetchrow("SELECT seq, hash FROM audit_head")
    assert head is not None
    rows: list[tuple[int, bytes, bytes]] = []
    prev = bytes(head["hash"])
    for seq in range(head["seq"] + 1, head["seq"] + 1 + count):
        digest = bytes([seq]) * 32  # only the links are checked by the database
        rows.append((seq, prev, digest))
        prev = digest
    return rows


_BATCH_INSERT = """
INSERT INTO audit_log (seq, occurred_at, action, outcome, prev_hash, hash)
SELECT s, now(), 'auth.login', 'success', p, h
FROM unnest($1::bigint[], $2::bytea[], $3::bytea[]) AS t(s, p, h)
"""


async def test_a_batch_insert_that_chains_and_moves_the_head_is_accepted(
    trail: AuditTrail, audit_pool: asyncpg.Pool, dsn: str
) -> None:
    await trail.record(event(1))
    await chain_now(dsn)
    rows = await _rows_after_head(audit_pool, 3)

    async with audit_pool.acquire() as conn, conn.transaction():
        await conn.execute(_BATCH_INSERT, *map(list, zip(*rows, strict=True)))
        await conn.execute("UPDATE audit_head SET seq = $1, hash = $2", rows[-1][0], rows[-1][2])

    assert await audit_pool.fetchval("SELECT seq FROM audit_head") == 4


@pytest.mark.parametrize("broken", [0, 1, 2])
async def test_a_batch_insert_with_a_broken_link_is_refused(
    trail: AuditTrail, audit_pool: asyncpg.Pool, dsn: str, broken: int
) -> None:
    await trail.record(event(1))
    await chain_now(dsn)
    rows = await _rows_after_head(audit_pool, 3)
    seq, _, digest = rows[broken]
    rows[broken] = (seq, b"\x09" * 32, digest)

    with pytest.raises(
        asyncpg.PostgresError, match=f"audit row seq {seq} does not extend the chain"
    ):
        await audit_pool.execute(_BATCH_INSERT, *map(list, zip(*rows, strict=True)))


async def test_a_batch_insert_that_leaves_a_hole_is_refused(
    trail: AuditTrail, audit_pool: asyncpg.Pool, dsn: str
) -> None:
    await trail.record(event(1))
    await chain_now(dsn)
    rows = await _rows_after_head(audit_pool, 3)
    del rows[1]

    with pytest.raises(asyncpg.PostgresError, match="audit row seq 4 does not extend"):
        await audit_pool.execute(_BATCH_INSERT, *map(list, zip(*rows, strict=True)))


# --- what the checkpoints catch --------------------------------------------------------


async def _ten_chained(trail: AuditTrail, dsn: str, checkpoints: Path) -> None:
    """Ten rows with checkpoints at seqs 3, 6, 9 and 10, in the database and the file."""
    await trail.record_many([event(n) for n in range(10)])
    await chain_now(dsn, checkpoint_file=checkpoints, batch_size=3)


async def test_the_superuser_rewrite_is_caught_by_the_checkpoints(
    trail: AuditTrail, dsn: str, checkpoints: Path
) -> None:
    await _ten_chained(trail, dsn, checkpoints)

    await rewrite_from(dsn, 5, "auth.logout")

    assert (await chain_only_report(dsn)).ok  # the chain alone cannot tell
    report = await full_verify(dsn, checkpoints)
    assert not report.ok
    assert kinds_at(report) == {
        (6, ProblemKind.CHECKPOINT_MISMATCH),
        (9, ProblemKind.CHECKPOINT_MISMATCH),
        (10, ProblemKind.CHECKPOINT_MISMATCH),
    }
    assert "seq 6: checkpoint_mismatch:" in format_report(report)


async def test_a_deleted_checkpoint_row_is_caught_through_the_file(
    trail: AuditTrail, dsn: str, checkpoints: Path
) -> None:
    await _ten_chained(trail, dsn, checkpoints)

    await tamper(dsn, "DELETE FROM audit_checkpoints WHERE seq = 6")

    report = await full_verify(dsn, checkpoints)
    assert kinds_at(report) == {(6, ProblemKind.CHECKPOINT_MISSING)}


async def test_a_rewrite_that_also_deletes_the_checkpoint_rows_is_caught_through_the_file(
    trail: AuditTrail, dsn: str, checkpoints: Path
) -> None:
    await _ten_chained(trail, dsn, checkpoints)

    await rewrite_from(dsn, 5, "auth.logout")
    await tamper(dsn, "DELETE FROM audit_checkpoints WHERE seq >= 5")

    assert (await chain_only_report(dsn)).ok
    report = await full_verify(dsn, checkpoints)
    assert {(6, ProblemKind.CHECKPOINT_MISSING), (6, ProblemKind.CHECKPOINT_MISMATCH)} <= (
        kinds_at(report)
    )
    assert (3, ProblemKind.CHECKPOINT_MISMATCH) not in kinds_at(report)


async def test_a_checkpoint_re_signed_with_another_key_is_caught(
    trail: AuditTrail, dsn: str, checkpoints: Path
) -> None:
    await _ten_chained(trail, dsn, checkpoints)
    await rewrite_from(dsn, 9, "auth.logout")
    forger = make_signer(OTHER_SEED)
    conn = await asyncpg.connect(dsn)
    try:
        for seq in (9, 10):
            row_hash = await conn.fetchval("SELECT hash FROM audit_log WHERE seq = $1", seq)
            forged = forger.sign(seq, bytes(row_hash))
            await tamper(
                dsn,
                "UPDATE audit_checkpoints SET hash = $2, key_id = $3, signature = $4 "
                "WHERE seq = $1",
                seq,
                forged.hash,
                forged.key_id,
                forged.signature,
            )
    finally:
        await conn.close()

    without_file = await verify_database(dsn, trusted_keys=KEYS)
    with_file = await full_verify(dsn, checkpoints)

    assert kinds_at(without_file) == {
        (9, ProblemKind.BAD_SIGNATURE),
        (10, ProblemKind.BAD_SIGNATURE),
    }
    assert "not trusted" in format_report(without_file)
    assert (9, ProblemKind.CHECKPOINT_MISMATCH) in kinds_at(with_file)
    # Trusting the forger's key too does not help the forger past the file.
    both = await verify_database(
        dsn, trusted_keys=[*KEYS, forger.public_key], checkpoint_files=[checkpoints]
    )
    assert (10, ProblemKind.CHECKPOINT_MISMATCH) in kinds_at(both)


async def test_newest_rows_removed_with_the_head_moved_back_are_caught_through_the_file(
    trail: AuditTrail, dsn: str, checkpoints: Path
) -> None:
    await _ten_chained(trail, dsn, checkpoints)

    await tamper(dsn, "DELETE FROM audit_checkpoints WHERE seq > 8")
    await tamper(dsn, "DELETE FROM audit_log WHERE seq > 8")
    await tamper(
        dsn, "UPDATE audit_head SET seq = 8, hash = (SELECT hash FROM audit_log WHERE seq = 8)"
    )

    assert (await chain_only_report(dsn)).ok
    report = await full_verify(dsn, checkpoints)
    assert {(9, ProblemKind.CHECKPOINT_MISSING), (9, ProblemKind.CHECKPOINT_MISMATCH)} <= (
        kinds_at(report)
    )
    assert "past the head at seq 8" in format_report(report)


async def test_an_edited_checkpoint_file_is_caught(
    trail: AuditTrail, dsn: str, checkpoints: Path
) -> None:
    await _ten_chained(trail, dsn, checkpoints)
    edit_lines(checkpoints, 1, lambda line: line.replace('"seq":6', '"seq":7'))
    append_text(checkpoints, "not json\n")

    report = await full_verify(dsn, checkpoints)

    assert (7, ProblemKind.BAD_SIGNATURE) in kinds_at(report)
    assert (7, ProblemKind.CHECKPOINT_MISSING) in kinds_at(report)
    assert (0, ProblemKind.BAD_SIGNATURE) in kinds_at(report)
    assert f"{checkpoints} line 5: not a checkpoint line" in format_report(report)


async def test_a_line_still_being_written_is_not_read(
    trail: AuditTrail, dsn: str, checkpoints: Path
) -> None:
    await _ten_chained(trail, dsn, checkpoints)
    append_text(checkpoints, '{"seq":11,"ha')

    report = await full_verify(dsn, checkpoints)

    assert report.ok, format_report(report)
    assert report.checkpoints is not None and report.checkpoints.in_files == 4


@pytest.mark.parametrize("rows", [1, 300])
async def test_a_batch_takes_the_same_statements_whatever_its_size(
    trail: AuditTrail, dsn: str, rows: int
) -> None:
    queries: list[str] = []

    def log(query: Any) -> None:
        queries.append(query.query.split()[0].upper())

    conn = await asyncpg.connect(dsn)
    try:
        await trail.record(event(-1))
        await chain_batch(conn, SIGNER)  # asyncpg learns the array types once
        await trail.record_many([event(n) for n in range(rows)])
        conn.add_query_logger(log)
        batch = await chain_batch(conn, SIGNER, batch_size=1000)
    finally:
        await conn.close()

    assert batch is not None and batch.rows == rows
    # BEGIN, lock the head, read the rows, move them, move the head, checkpoint, COMMIT.
    assert queries == ["BEGIN;", "SELECT", "SELECT", "WITH", "UPDATE", "INSERT", "COMMIT;"]
