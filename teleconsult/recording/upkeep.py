"""Recordings' upkeep: retention expiry (crypto-shredding) and master-key rotation.

Both lock the rows they work on (``FOR UPDATE SKIP LOCKED``), so several servers
(and the command line) may run them at once, and both may die half-way and be run
again: every step is idempotent. :class:`RecordingService` calls them and tells its
listeners.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from uuid import UUID

import asyncpg

from teleconsult.audit import AuditEvent, AuditTrail
from teleconsult.recording import store
from teleconsult.recording.keys import KeyRing
from teleconsult.recording.seal import (
    HEADER_BYTES,
    Header,
    KeyUnavailable,
    SealError,
    rewrap,
    shred,
)
from teleconsult.recording.storage import BlobStore, StorageError
from teleconsult.recording.store import Recording

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RotationProgress:
    done: int
    total: int


@dataclass(frozen=True)
class RotationReport:
    rewrapped: int
    current_version: int
    # Ready recordings per master-key version after the run.
    by_version: dict[int, int]
    failed: int


async def sweep_expired(
    pool: asyncpg.Pool, audit: AuditTrail, blobs: BlobStore, *, limit: int = 50
) -> list[Recording]:
    """Expire ready recordings past their clinic's retention: zero the wrapped key in the
    object's header (in place), delete the object, destroy the key in the row, audit;
    one transaction for the batch. Returns the recordings expired."""
    async with pool.acquire() as conn, conn.transaction():
        due = await store.lock_due(conn, limit=limit)
        for recording in due:
            await _shred_object(blobs, recording)
            await store.mark_expired(conn, recording.id)
            await audit.record(
                AuditEvent(
                    action="recording.expire",
                    clinic_id=recording.clinic_id,
                    object_type="recording",
                    object_id=str(recording.id),
                    detail={
                        "appointment_id": str(recording.appointment_id),
                        "key_version": recording.key_version or 0,
                    },
                ),
                conn,
            )
    return due


async def _shred_object(blobs: BlobStore, recording: Recording) -> None:
    name = recording.object_name
    if name is None:
        return
    try:
        head = await blobs.get_range(name, 0, HEADER_BYTES)
        if len(head) == HEADER_BYTES:
            await blobs.rewrite_head(name, shred(Header.decode(head)).encode())
    except (StorageError, SealError):
        logger.warning("recording %s: no readable header to shred", recording.id)
    await blobs.delete(name)


async def rotate(
    pool: asyncpg.Pool,
    audit: AuditTrail,
    blobs: BlobStore,
    keys: KeyRing,
    *,
    batch: int = 50,
    progress: Callable[[RotationProgress], None] | None = None,
) -> RotationReport:
    """Re-wrap every ready recording's data key under the newest master key; no media is
    re-encrypted. Each batch commits on its own; a recording whose header was rewritten
    but whose row was not is simply done again from the row's (still valid) old wrap. A
    recording that cannot be re-wrapped (its key missing, its object damaged) is logged,
    counted as failed and skipped."""
    current = keys.current
    async with pool.acquire() as conn:
        counts = await store.count_by_key_version(conn)
    total = sum(n for version, n in counts.items() if version != current.version)
    done = failed = 0
    skip: set[UUID] = set()
    while True:
        async with pool.acquire() as conn, conn.transaction():
            found = await store.lock_to_rewrap(conn, current.version, limit=batch + len(skip))
            rows = [r for r in found if r.id not in skip][:batch]
            for recording in rows:
                try:
                    await _rewrap_one(conn, audit, blobs, keys, recording)
                    done += 1
                except (KeyUnavailable, SealError, StorageError) as exc:
                    logger.error("recording %s cannot be re-wrapped: %s", recording.id, exc)
                    skip.add(recording.id)
                    failed += 1
        if not rows:
            break
        if progress is not None:
            progress(RotationProgress(done + failed, total))
    async with pool.acquire() as conn:
        after = await store.count_by_key_version(conn)
    return RotationReport(done, current.version, after, failed)


async def _rewrap_one(
    conn: asyncpg.Connection,
    audit: AuditTrail,
    blobs: BlobStore,
    keys: KeyRing,
    recording: Recording,
) -> None:
    assert recording.object_name is not None and recording.wrapped_key is not None
    assert recording.key_version is not None
    head = await blobs.get_range(recording.object_name, 0, HEADER_BYTES)
    header = Header.decode(head).with_wrapped(recording.key_version, recording.wrapped_key)
    fresh = rewrap(header, keys.get, keys.current)
    await blobs.rewrite_head(recording.object_name, fresh.encode())
    await store.set_key(conn, recording.id, fresh.key_version, fresh.wrapped)
    await audit.record(
        AuditEvent(
            action="recording.rekey",
            clinic_id=recording.clinic_id,
            object_type="recording",
            object_id=str(recording.id),
            detail={"from_version": recording.key_version, "to_version": fresh.key_version},
        ),
        conn,
    )
