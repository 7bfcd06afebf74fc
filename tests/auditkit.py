"""Audit helpers for tests: wait for or run the sequencer, tamper as the superuser."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import asyncpg

from teleconsult.audit import (
    SEQUENCER_LOCK_KEY,
    AuditSequencer,
    ChainVerifier,
    CheckpointSigner,
    VerifyReport,
    compute_hash,
    iter_records,
    read_head,
)

# A fixed key for store-level tests; the app under test generates its own.
SIGNING_SEED = bytes(range(32))
OTHER_SEED = bytes(range(32, 64))


def make_signer(seed: bytes = SIGNING_SEED) -> CheckpointSigner:
    return CheckpointSigner(seed)


async def chained(pool: asyncpg.Pool, *, within: float = 10.0) -> None:
    """Wait until every audit event committed so far is chained by a running sequencer
    (the test app runs one). Fails after ``within`` seconds."""
    mark = await pool.fetchval("SELECT coalesce(max(id), 0) FROM audit_intake")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while await pool.fetchval("SELECT EXISTS (SELECT 1 FROM audit_intake WHERE id <= $1)", mark):
        if loop.time() > deadline:
            raise AssertionError(f"audit events not chained within {within} s: no sequencer?")
        await asyncio.sleep(0.02)


async def chain_now(
    dsn: str,
    *,
    signer: CheckpointSigner | None = None,
    checkpoint_file: Path | None = None,
    batch_size: int = 1000,
) -> int:
    """Chain everything in the intake now, without a running sequencer; return the rows."""
    sequencer = AuditSequencer(
        dsn,
        signer=signer or make_signer(),
        checkpoint_file=checkpoint_file,
        batch_size=batch_size,
    )
    total = 0
    while count := await sequencer.run_once():
        total += count
    return total


async def chain_only_report(dsn: str) -> VerifyReport:
    """What the verifier before signed checkpoints saw: the chain and its head."""
    conn = await asyncpg.connect(dsn)
    try:
        verifier = ChainVerifier()
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            head = await read_head(conn)
            async for record in iter_records(conn):
                verifier.feed(record)
        return verifier.finish(head)
    finally:
        await conn.close()


async def tamper(dsn: str, sql: str, *args: Any) -> None:
    """Run ``sql`` as the superuser with the refusing triggers switched off."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SET session_replication_role = replica")
        await conn.execute(sql, *args)
    finally:
        await conn.close()


async def rewrite_from(dsn: str, seq: int, action: str) -> None:
    """The superuser's rewrite: set row ``seq``'s action, re-hash every row from there
    to the end with the project's own ``compute_hash``, and move the head along."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SET session_replication_role = replica")
        async with conn.transaction():
            rows = [record async for record in iter_records(conn)]
            prev = next((r.hash for r in rows if r.seq == seq - 1), bytes(32))
            for record in rows:
                if record.seq < seq:
                    continue
                changed = dataclasses.replace(
                    record, action=action if record.seq == seq else record.action
                )
                digest = compute_hash(prev, changed)
                await conn.execute(
                    "UPDATE audit_log SET action = $2, prev_hash = $3, hash = $4 WHERE seq = $1",
                    record.seq,
                    changed.action,
                    prev,
                    digest,
                )
                prev = digest
            await conn.execute("UPDATE audit_head SET seq = $1, hash = $2", rows[-1].seq, prev)
    finally:
        await conn.close()


async def leader_pid(conn: asyncpg.Connection | asyncpg.Pool) -> int | None:
    """The backend that holds the sequencer's leadership lock, if any."""
    pid: int | None = await conn.fetchval(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND classid = $1 AND objid = $2 AND objsubid = 1",
        SEQUENCER_LOCK_KEY >> 32,
        SEQUENCER_LOCK_KEY & 0xFFFFFFFF,
    )
    return pid
