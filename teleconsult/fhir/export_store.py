"""SQL for Bulk Data ``$export`` jobs (migration 0018).

A worker claims a job with :func:`claim` (``FOR UPDATE SKIP LOCKED`` and a
lease); it renews the lease with :func:`renew`, which also tells it when the
job was cancelled or taken over. A job's finished files are rows of
``fhir_export_files``: the resumption point after a crash.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

ACTIVE = ("queued", "running")


@dataclass(frozen=True)
class ExportJob:
    id: UUID
    clinic_id: UUID
    requested_by: UUID
    requester_role: str
    level: str
    group_id: UUID | None
    types: tuple[str, ...]
    since: datetime | None
    request_url: str
    status: str
    transaction_time: datetime
    types_done: int
    resources_written: int
    attempts: int
    failure: str | None
    created_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True)
class ExportFile:
    seq: int
    resource_type: str
    file_name: str
    count: int
    kind: str


_JOB_COLUMNS = (
    "id, clinic_id, requested_by, requester_role, level, group_id, types, since, "
    "request_url, status, transaction_time, types_done, resources_written, attempts, "
    "failure, created_at, finished_at"
)


def _job(row: asyncpg.Record) -> ExportJob:
    values = dict(row)
    values["types"] = tuple(values["types"])
    return ExportJob(**values)


async def insert_job(
    conn: asyncpg.Connection,
    *,
    clinic_id: UUID,
    requested_by: UUID,
    requester_role: str,
    level: str,
    group_id: UUID | None,
    types: Sequence[str],
    since: datetime | None,
    request_url: str,
) -> ExportJob:
    row = await conn.fetchrow(
        f"""
        INSERT INTO fhir_export_jobs
            (clinic_id, requested_by, requester_role, level, group_id, types, since, request_url)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        RETURNING {_JOB_COLUMNS}
        """,
        clinic_id,
        requested_by,
        requester_role,
        level,
        group_id,
        list(types),
        since,
        request_url,
    )
    assert row is not None
    return _job(row)


async def count_active(conn: asyncpg.Connection, requested_by: UUID) -> int:
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM fhir_export_jobs WHERE requested_by = $1 "
            "AND status IN ('queued', 'running')",
            requested_by,
        )
    )


async def get_job(conn: asyncpg.Connection, job_id: UUID) -> ExportJob | None:
    row = await conn.fetchrow(f"SELECT {_JOB_COLUMNS} FROM fhir_export_jobs WHERE id = $1", job_id)
    return None if row is None else _job(row)


async def note_poll(conn: asyncpg.Connection, job_id: UUID, min_interval: float) -> bool:
    """Record a status poll; False when the last one was less than ``min_interval`` ago."""
    status = await conn.execute(
        """
        UPDATE fhir_export_jobs SET last_polled_at = clock_timestamp()
        WHERE id = $1 AND (last_polled_at IS NULL
            OR last_polled_at <= clock_timestamp() - make_interval(secs => $2))
        """,
        job_id,
        min_interval,
    )
    return bool(status.endswith(" 1"))


async def files(conn: asyncpg.Connection, job_id: UUID) -> list[ExportFile]:
    rows = await conn.fetch(
        "SELECT seq, resource_type, file_name, count, kind FROM fhir_export_files "
        "WHERE job_id = $1 ORDER BY seq",
        job_id,
    )
    return [ExportFile(**dict(r)) for r in rows]


async def cancel(conn: asyncpg.Connection, job_id: UUID) -> bool:
    """Mark the job cancelled and forget its files; False when it already was."""
    status = await conn.execute(
        """
        UPDATE fhir_export_jobs
        SET status = 'cancelled', lease_owner = NULL, lease_until = NULL,
            finished_at = COALESCE(finished_at, now()), updated_at = now()
        WHERE id = $1 AND status <> 'cancelled'
        """,
        job_id,
    )
    if not str(status).endswith(" 1"):
        return False
    await conn.execute("DELETE FROM fhir_export_files WHERE job_id = $1", job_id)
    return True


async def claim(conn: asyncpg.Connection, owner: str, lease_seconds: int) -> ExportJob | None:
    """Take the oldest unfinished job whose lease is free or has run out."""
    row = await conn.fetchrow(
        f"""
        UPDATE fhir_export_jobs SET
            status = 'running', lease_owner = $1,
            lease_until = clock_timestamp() + make_interval(secs => $2),
            attempts = attempts + 1, updated_at = now()
        WHERE id = (
            SELECT id FROM fhir_export_jobs
            WHERE status IN ('queued', 'running')
              AND (lease_until IS NULL OR lease_until < clock_timestamp())
            ORDER BY created_at
            FOR UPDATE SKIP LOCKED
            LIMIT 1
        )
        RETURNING {_JOB_COLUMNS}
        """,
        owner,
        lease_seconds,
    )
    return None if row is None else _job(row)


async def renew(conn: asyncpg.Connection, job_id: UUID, owner: str, lease_seconds: int) -> bool:
    """Extend the lease; False when the job is no longer this worker's to run."""
    status = await conn.execute(
        """
        UPDATE fhir_export_jobs
        SET lease_until = clock_timestamp() + make_interval(secs => $3)
        WHERE id = $1 AND lease_owner = $2 AND status = 'running'
        """,
        job_id,
        owner,
        lease_seconds,
    )
    return bool(status.endswith(" 1"))


async def add_file(
    conn: asyncpg.Connection,
    job_id: UUID,
    owner: str,
    *,
    seq: int,
    resource_type: str,
    file_name: str,
    count: int,
    kind: str = "output",
) -> bool:
    """Record a finished file (and the job's progress) while still holding the lease."""
    row = await conn.fetchrow(
        """
        WITH j AS (
            UPDATE fhir_export_jobs SET
                types_done = types_done + CASE WHEN $7 = 'output' THEN 1 ELSE 0 END,
                resources_written = resources_written + $6, updated_at = now()
            WHERE id = $1 AND lease_owner = $2 AND status = 'running'
            RETURNING id
        )
        INSERT INTO fhir_export_files (job_id, seq, resource_type, file_name, count, kind)
        SELECT id, $3, $4, $5, $6, $7 FROM j
        ON CONFLICT (job_id, seq) DO NOTHING
        RETURNING seq
        """,
        job_id,
        owner,
        seq,
        resource_type,
        file_name,
        count,
        kind,
    )
    return row is not None


async def finish(
    conn: asyncpg.Connection, job_id: UUID, owner: str, *, status: str, failure: str | None
) -> bool:
    done = await conn.execute(
        """
        UPDATE fhir_export_jobs SET status = $3, failure = $4, lease_owner = NULL,
            lease_until = NULL, finished_at = now(), updated_at = now()
        WHERE id = $1 AND lease_owner = $2 AND status = 'running'
        """,
        job_id,
        owner,
        status,
        failure,
    )
    return bool(done.endswith(" 1"))


async def expired_jobs(conn: asyncpg.Connection, hours: int) -> list[UUID]:
    """Finished jobs older than ``hours``: their files are removed and they are cancelled."""
    rows = await conn.fetch(
        "SELECT id FROM fhir_export_jobs WHERE status IN ('completed', 'failed') "
        "AND finished_at < now() - make_interval(hours => $1)",
        hours,
    )
    return [r["id"] for r in rows]
