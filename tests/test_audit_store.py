"""The audit trail in real PostgreSQL: the intake, the chained rows, the verifier.

Each test gets its own throwaway database: tampering breaks the chain for
everybody who shares it. No sequencer runs here: tests chain the intake
themselves (``chain_now``); tests/test_audit_sequencer.py runs sequencers.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest

from teleconsult.audit import (
    INTAKE_COLUMNS,
    AuditError,
    AuditEvent,
    AuditTrail,
    InvalidAuditEvent,
    ProblemKind,
    VerifyReport,
    compute_hash,
    format_report,
    intake_params,
    intake_placeholders,
    verify_database,
)
from teleconsult.core.db import create_pool
from teleconsult.core.errors import InfrastructureError, TeleconsultError
from tests.auditkit import chain_now, tamper
from tests.dbutil import create_database, drop_database, dsn_for

CLINIC = UUID("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee")
OTHER_CLINIC = UUID("bbbbbbbb-bbbb-cccc-dddd-eeeeeeeeeeee")


@pytest.fixture
async def dsn() -> AsyncIterator[str]:
    url = await create_database()
    yield url
    await drop_database(url)


@pytest.fixture
async def audit_pool(dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(dsn, min_size=1, max_size=5)
    yield pool
    await pool.close()


@pytest.fixture
def trail(audit_pool: asyncpg.Pool) -> AuditTrail:
    return AuditTrail(audit_pool)


def event(n: int = 0, *, clinic_id: UUID | None = CLINIC) -> AuditEvent:
    return AuditEvent(
        action="patient.read",
        actor_id=uuid4(),
        actor_role="doctor",
        clinic_id=clinic_id,
        object_type="patient",
        object_id=f"patient-{n}",
        ip="192.0.2.7",
        detail={"n": n, "via": "web", "first": n == 0, "note": None},
    )


async def record_chained(trail: AuditTrail, dsn: str, count: int) -> None:
    """``count`` events, each chained in a batch of its own (one checkpoint per row)."""
    for n in range(count):
        await trail.record(event(n))
        await chain_now(dsn)


def kinds_at(report: VerifyReport) -> set[tuple[int, ProblemKind]]:
    return {(p.seq, p.kind) for p in report.problems}


async def test_recorded_events_wait_in_the_intake_until_chained(
    trail: AuditTrail, audit_pool: asyncpg.Pool
) -> None:
    await trail.record(event(1))

    assert await audit_pool.fetchval("SELECT count(*) FROM audit_intake") == 1
    assert await audit_pool.fetchval("SELECT count(*) FROM audit_log") == 0
    assert await trail.list_for_clinic(clinic_id=CLINIC) == []


async def test_chained_events_get_consecutive_seqs_and_the_chain_verifies(
    trail: AuditTrail, audit_pool: asyncpg.Pool, dsn: str
) -> None:
    for n in range(5):
        await trail.record(event(n))

    chained = await chain_now(dsn)
    report = await verify_database(dsn)

    assert chained == 5
    assert [r.seq for r in await trail.list_for_clinic(clinic_id=CLINIC)] == [1, 2, 3, 4, 5]
    assert [r.object_id for r in await trail.list_for_clinic(clinic_id=CLINIC)] == [
        f"patient-{n}" for n in range(5)
    ]
    assert await audit_pool.fetchval("SELECT count(*) FROM audit_intake") == 0
    assert report.ok, format_report(report)
    assert format_report(report).splitlines()[-1] == "audit chain OK: 5 rows, head seq 5"


async def test_stored_row_keeps_the_event_and_reproduces_its_hash(
    trail: AuditTrail, dsn: str
) -> None:
    given = event(3)
    await trail.record(event(1))
    await trail.record(given)
    await chain_now(dsn)

    first, second = await trail.list_for_clinic(clinic_id=CLINIC)

    assert (second.seq, second.action, second.outcome) == (2, "patient.read", "success")
    assert (second.actor_id, second.actor_role, second.clinic_id) == (
        given.actor_id,
        "doctor",
        CLINIC,
    )
    assert (second.object_type, second.object_id, second.ip) == ("patient", "patient-3", given.ip)
    assert second.detail == {"n": 3, "via": "web", "first": False, "note": None}
    assert second.occurred_at.tzinfo is not None
    assert second.occurred_at.utcoffset() == UTC.utcoffset(None)
    assert second.occurred_at >= first.occurred_at
    assert second.prev_hash == first.hash
    assert second.hash == compute_hash(second.prev_hash, second)


async def test_update_is_refused_by_the_database(
    trail: AuditTrail, audit_pool: asyncpg.Pool, dsn: str
) -> None:
    await record_chained(trail, dsn, 1)

    with pytest.raises(asyncpg.PostgresError, match="append-only: UPDATE on audit_log"):
        await audit_pool.execute("UPDATE audit_log SET action = 'auth.login' WHERE seq = 1")


async def test_delete_is_refused_by_the_database(
    trail: AuditTrail, audit_pool: asyncpg.Pool, dsn: str
) -> None:
    await record_chained(trail, dsn, 1)

    with pytest.raises(asyncpg.PostgresError, match="append-only: DELETE on audit_log"):
        await audit_pool.execute("DELETE FROM audit_log")


async def test_truncate_is_refused_by_the_database(
    trail: AuditTrail, audit_pool: asyncpg.Pool, dsn: str
) -> None:
    await record_chained(trail, dsn, 1)

    with pytest.raises(asyncpg.PostgresError, match="append-only: TRUNCATE on audit_log"):
        await audit_pool.execute("TRUNCATE audit_log")


async def test_head_cannot_be_deleted_or_truncated(
    trail: AuditTrail, audit_pool: asyncpg.Pool, dsn: str
) -> None:
    await record_chained(trail, dsn, 1)

    with pytest.raises(asyncpg.PostgresError, match="append-only: DELETE on audit_head"):
        await audit_pool.execute("DELETE FROM audit_head")
    with pytest.raises(asyncpg.PostgresError, match="append-only: TRUNCATE on audit_head"):
        await audit_pool.execute("TRUNCATE audit_head")


async def test_head_cannot_move_back(trail: AuditTrail, audit_pool: asyncpg.Pool, dsn: str) -> None:
    await record_chained(trail, dsn, 2)

    with pytest.raises(asyncpg.PostgresError, match="may only move forward"):
        await audit_pool.execute("UPDATE audit_head SET seq = 1")


async def test_head_cannot_move_onto_a_row_without_copying_its_hash(
    trail: AuditTrail, audit_pool: asyncpg.Pool, dsn: str
) -> None:
    await record_chained(trail, dsn, 1)
    head_hash = await audit_pool.fetchval("SELECT hash FROM audit_head")

    async with audit_pool.acquire() as conn:
        with pytest.raises(asyncpg.PostgresError, match="must point at audit row seq 2"):
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO audit_log (seq, occurred_at, action, outcome, prev_hash, hash) "
                    "VALUES (2, now(), 'auth.login', 'success', $1, $2)",
                    head_hash,
                    b"\x01" * 32,
                )
                await conn.execute("UPDATE audit_head SET seq = 2, hash = $1", b"\x02" * 32)


async def test_row_that_does_not_extend_the_head_is_refused(
    trail: AuditTrail, audit_pool: asyncpg.Pool, dsn: str
) -> None:
    await record_chained(trail, dsn, 1)

    with pytest.raises(asyncpg.PostgresError, match="does not extend the chain"):
        await audit_pool.execute(
            "INSERT INTO audit_log (seq, occurred_at, action, outcome, prev_hash, hash) "
            "VALUES (5, now(), 'auth.login', 'success', $1, $1)",
            bytes(32),
        )


async def test_row_inserted_without_moving_the_head_fails_at_commit(
    trail: AuditTrail, audit_pool: asyncpg.Pool, dsn: str
) -> None:
    await record_chained(trail, dsn, 1)
    head_hash = await audit_pool.fetchval("SELECT hash FROM audit_head")

    with pytest.raises(asyncpg.PostgresError, match="without moving audit_head"):
        await audit_pool.execute(
            "INSERT INTO audit_log (seq, occurred_at, action, outcome, prev_hash, hash) "
            "VALUES (2, now(), 'auth.login', 'success', $1, $1)",
            head_hash,
        )
    assert await audit_pool.fetchval("SELECT count(*) FROM audit_log") == 1


async def test_verify_reads_the_chain_in_batches(trail: AuditTrail, dsn: str) -> None:
    for n in range(50):
        await trail.record(event(n))
    await chain_now(dsn, batch_size=9)

    report = await verify_database(dsn, batch_size=7)

    assert report.ok, format_report(report)
    assert (report.rows, report.head_seq) == (50, 50)
    assert report.checkpoints is not None and report.checkpoints.in_database == 6


async def test_record_in_a_rolled_back_transaction_leaves_no_event(
    trail: AuditTrail, audit_pool: asyncpg.Pool, dsn: str
) -> None:
    await trail.record(event(1))

    async with audit_pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        await trail.record(event(2), conn)
        await transaction.rollback()
    await trail.record(event(3))
    await chain_now(dsn)

    report = await verify_database(dsn)
    assert report.ok, format_report(report)
    assert [r.object_id for r in await trail.list_for_clinic(clinic_id=CLINIC)] == [
        "patient-1",
        "patient-3",
    ]


async def test_record_in_a_committed_transaction_commits_with_it(
    trail: AuditTrail, audit_pool: asyncpg.Pool, dsn: str
) -> None:
    async with audit_pool.acquire() as conn, conn.transaction():
        await trail.record(event(1), conn)
        await trail.record(event(2), conn)
    await chain_now(dsn)

    report = await verify_database(dsn)
    assert report.ok, format_report(report)
    assert report.rows == 2


async def test_record_takes_no_lock_while_another_transaction_holds_an_event(
    trail: AuditTrail, audit_pool: asyncpg.Pool
) -> None:
    async with audit_pool.acquire() as conn, conn.transaction():
        await trail.record(event(1), conn)
        # Another writer does not wait for this open transaction (the old chain lock did).
        await trail.record(event(2))
        assert await audit_pool.fetchval("SELECT count(*) FROM audit_intake") == 1
    assert await audit_pool.fetchval("SELECT count(*) FROM audit_intake") == 2


async def test_record_many_writes_every_event_in_order_with_one_statement(
    trail: AuditTrail, audit_pool: asyncpg.Pool, dsn: str
) -> None:
    async with audit_pool.acquire() as conn, conn.transaction():
        await trail.record_many([event(n) for n in range(4)], conn)
    await trail.record_many([])
    await chain_now(dsn)

    rows = await trail.list_for_clinic(clinic_id=CLINIC)
    assert [r.object_id for r in rows] == [f"patient-{n}" for n in range(4)]
    assert rows[1].detail == {"n": 1, "via": "web", "first": False, "note": None}


async def test_record_many_with_one_bad_event_writes_none(
    trail: AuditTrail, audit_pool: asyncpg.Pool
) -> None:
    with pytest.raises(InvalidAuditEvent, match="outcome"):
        await trail.record_many([event(1), AuditEvent(action="auth.login", outcome="maybe")])  # type: ignore[arg-type]

    assert await audit_pool.fetchval("SELECT count(*) FROM audit_intake") == 0


async def test_intake_helpers_write_the_event_inside_the_callers_statement(
    trail: AuditTrail, audit_pool: asyncpg.Pool, dsn: str
) -> None:
    await audit_pool.execute("CREATE TABLE notes_for_test (id bigserial PRIMARY KEY, body text)")
    columns = ", ".join(INTAKE_COLUMNS)
    values = intake_placeholders(2, object_id="COALESCE({}, n.id::text)")
    sql = f"""
        WITH n AS (INSERT INTO notes_for_test (body) VALUES ($1) RETURNING id),
             a AS (INSERT INTO audit_intake ({columns}) SELECT {values} FROM n)
        SELECT id FROM n
    """
    note_event = AuditEvent(action="note.create", clinic_id=CLINIC, detail={"k": "v"})

    note_id = await audit_pool.fetchval(sql, "hello", *intake_params(note_event))
    await chain_now(dsn)

    (row,) = await trail.list_for_clinic(clinic_id=CLINIC)
    assert (row.action, row.object_id, row.detail) == ("note.create", str(note_id), {"k": "v"})
    assert row.hash == compute_hash(row.prev_hash, row)


def test_intake_placeholders_are_typed_and_numbered_from_the_first() -> None:
    assert intake_placeholders(3) == (
        "$3::uuid, $4::text, $5::uuid, $6::text, $7::text, $8::text, $9::text, $10::text, "
        "$11::text::jsonb"
    )
    assert "COALESCE($8::text, x)" in intake_placeholders(3, object_id="COALESCE({}, x)")
    with pytest.raises(ValueError, match="not intake columns"):
        intake_placeholders(1, seq="{}")
    with pytest.raises(ValueError, match="exactly once"):
        intake_placeholders(1, object_id="x")


def test_intake_params_validate_the_event() -> None:
    params = intake_params(event(1))

    assert len(params) == len(INTAKE_COLUMNS)
    assert json.loads(params[-1]) == {"n": 1, "via": "web", "first": False, "note": None}
    with pytest.raises(InvalidAuditEvent, match="action"):
        intake_params(AuditEvent(action="Not An Action"))


async def test_the_intake_refuses_a_bad_action_written_by_hand(audit_pool: asyncpg.Pool) -> None:
    with pytest.raises(asyncpg.CheckViolationError):
        await audit_pool.execute(
            "INSERT INTO audit_intake (action, outcome) VALUES ('Auth Login', 'success')"
        )


async def test_intake_rows_cannot_be_edited(trail: AuditTrail, audit_pool: asyncpg.Pool) -> None:
    await trail.record(event(1))

    with pytest.raises(asyncpg.PostgresError, match="append-only: UPDATE on audit_intake"):
        await audit_pool.execute("UPDATE audit_intake SET action = 'auth.login'")
    with pytest.raises(asyncpg.PostgresError, match="append-only: TRUNCATE on audit_intake"):
        await audit_pool.execute("TRUNCATE audit_intake")


async def test_list_for_clinic_pages_in_seq_order(trail: AuditTrail, dsn: str) -> None:
    for n in range(6):
        await trail.record(event(n, clinic_id=CLINIC if n % 2 == 0 else OTHER_CLINIC))
    await chain_now(dsn)

    first_page = await trail.list_for_clinic(clinic_id=CLINIC, limit=2)
    second_page = await trail.list_for_clinic(clinic_id=CLINIC, after=first_page[-1].seq, limit=2)

    assert [r.seq for r in first_page] == [1, 3]
    assert [r.seq for r in second_page] == [5]


async def test_list_for_clinic_refuses_an_out_of_range_limit(trail: AuditTrail) -> None:
    with pytest.raises(AuditError, match="limit"):
        await trail.list_for_clinic(clinic_id=CLINIC, limit=0)


@pytest.mark.parametrize(
    "detail",
    [
        {"n": 1.5},
        {"nested": {"a": 1}},
        {"": "empty key"},
        {"k" * 65: "long key"},
        {"password": "hunter2"},
        {"access_token": "abc"},
        {"big": "x" * 3000},
        {f"key{n}": "v" * 60 for n in range(30)},
        {"nul": "a\x00b"},
    ],
)
async def test_invalid_detail_is_refused_before_writing(
    trail: AuditTrail, dsn: str, detail: dict[str, Any]
) -> None:
    with pytest.raises(InvalidAuditEvent, match="detail"):
        await trail.record(AuditEvent(action="auth.login", detail=detail))

    report = await verify_database(dsn)
    assert (report.rows, report.pending) == (0, 0)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"action": "Auth Login"}, "action"),
        ({"action": ""}, "action"),
        ({"action": "auth.login\n"}, "action"),
        ({"outcome": "maybe"}, "outcome"),
        ({"ip": "not-an-ip"}, "ip"),
        ({"actor_role": ""}, "actor_role"),
        ({"object_id": "x" * 201}, "object_id"),
    ],
)
async def test_invalid_event_field_is_refused(
    trail: AuditTrail, changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidAuditEvent, match=field):
        await trail.record(AuditEvent(**{"action": "auth.login", **changes}))


def test_invalid_event_is_a_teleconsult_error() -> None:
    assert issubclass(InvalidAuditEvent, TeleconsultError)


async def test_verify_on_an_empty_table_is_ok(dsn: str) -> None:
    report = await verify_database(dsn)

    assert report.ok
    assert format_report(report).splitlines() == [
        "checkpoints: 0 in the database, 0 in 0 files (hashes only: no trusted public key given)",
        "audit chain OK: 0 rows, head seq 0",
    ]


async def test_verify_counts_events_waiting_in_the_intake_as_no_problem(
    trail: AuditTrail, dsn: str
) -> None:
    await record_chained(trail, dsn, 1)
    await trail.record(event(2))
    await trail.record(event(3))

    report = await verify_database(dsn)

    assert report.ok
    assert report.pending == 2
    assert "intake: 2 events waiting to be chained (not a problem)" in format_report(report)


async def test_edited_action_is_reported_as_hash_mismatch(trail: AuditTrail, dsn: str) -> None:
    await record_chained(trail, dsn, 5)
    await tamper(dsn, "UPDATE audit_log SET action = 'auth.login' WHERE seq = 3")

    report = await verify_database(dsn)

    assert kinds_at(report) == {(3, ProblemKind.HASH_MISMATCH)}
    assert "seq 3: hash_mismatch: row content does not match its hash (edited?)" in (
        format_report(report)
    )


async def test_deleted_middle_row_is_reported_as_gap(trail: AuditTrail, dsn: str) -> None:
    await record_chained(trail, dsn, 5)
    await tamper(dsn, "DELETE FROM audit_log WHERE seq = 3")

    report = await verify_database(dsn)

    # Row 3's own checkpoint now names a seq the chain lacks.
    assert kinds_at(report) == {(3, ProblemKind.GAP), (3, ProblemKind.CHECKPOINT_MISMATCH)}


async def test_deleted_last_row_is_reported_as_head_mismatch(trail: AuditTrail, dsn: str) -> None:
    await record_chained(trail, dsn, 5)
    await tamper(dsn, "DELETE FROM audit_log WHERE seq = 5")

    report = await verify_database(dsn)

    assert kinds_at(report) == {
        (5, ProblemKind.HEAD_MISMATCH),
        (5, ProblemKind.CHECKPOINT_MISMATCH),
    }


async def test_deleted_head_is_reported(trail: AuditTrail, dsn: str) -> None:
    await record_chained(trail, dsn, 2)
    await tamper(dsn, "DELETE FROM audit_head")

    report = await verify_database(dsn)

    assert [p.kind for p in report.problems] == [ProblemKind.HEAD_MISMATCH]


async def test_swapped_row_contents_are_detected_at_both_seqs(trail: AuditTrail, dsn: str) -> None:
    await record_chained(trail, dsn, 5)
    columns = [
        "occurred_at",
        "actor_id",
        "actor_role",
        "clinic_id",
        "action",
        "object_type",
        "object_id",
        "ip",
        "outcome",
        "detail",
        "prev_hash",
        "hash",
    ]
    assignments = ", ".join(f"{c} = other.{c}" for c in columns)
    await tamper(
        dsn,
        f"UPDATE audit_log AS a SET {assignments} FROM audit_log AS other "
        "WHERE (a.seq, other.seq) IN ((2, 4), (4, 2))",
    )

    report = await verify_database(dsn)

    assert {(2, ProblemKind.HASH_MISMATCH), (4, ProblemKind.HASH_MISMATCH)} <= kinds_at(report)


async def test_swapped_row_contents_keeping_hashes_are_detected_at_both_seqs(
    trail: AuditTrail, dsn: str
) -> None:
    await record_chained(trail, dsn, 5)
    await tamper(
        dsn,
        "UPDATE audit_log AS a SET object_id = other.object_id, detail = other.detail "
        "FROM audit_log AS other WHERE (a.seq, other.seq) IN ((2, 4), (4, 2))",
    )

    report = await verify_database(dsn)

    assert kinds_at(report) == {(2, ProblemKind.HASH_MISMATCH), (4, ProblemKind.HASH_MISMATCH)}


async def test_chaining_refuses_to_write_when_the_head_is_missing(
    trail: AuditTrail, audit_pool: asyncpg.Pool, dsn: str
) -> None:
    await record_chained(trail, dsn, 1)
    await tamper(dsn, "DELETE FROM audit_head")
    await trail.record(event())

    with pytest.raises(AuditError, match="audit_head row is missing"):
        await chain_now(dsn)
    assert await audit_pool.fetchval("SELECT count(*) FROM audit_intake") == 1


async def test_verify_database_without_audit_tables_is_an_infrastructure_error() -> None:
    url = await create_database(migrated=False)
    try:
        with pytest.raises(InfrastructureError, match="migrations"):
            await verify_database(url)
    finally:
        await drop_database(url)


async def test_verify_database_that_does_not_exist_is_an_infrastructure_error() -> None:
    with pytest.raises(InfrastructureError, match="cannot connect"):
        await verify_database(dsn_for(f"tc_missing_{uuid4().hex}"))


async def test_recording_an_event_is_one_statement_in_the_callers_transaction(
    trail: AuditTrail, audit_pool: asyncpg.Pool
) -> None:
    queries: list[str] = []

    def log(query: Any) -> None:
        queries.append(query.query)

    async with audit_pool.acquire() as conn, conn.transaction():
        await trail.record_many([event(0)], conn)  # asyncpg learns the array types once
        conn.add_query_logger(log)
        await trail.record(event(1), conn)
        await trail.record_many([event(2), event(3)], conn)
        conn.remove_query_logger(log)

    assert len(queries) == 2
    assert all(q.lstrip().startswith("INSERT INTO audit_intake") for q in queries)
