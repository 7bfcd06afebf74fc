"""The audit sequencer: moves committed intake rows into the hash chain in batches.

Every server process runs one :class:`AuditSequencer`; the one that holds a
cluster-wide advisory lock (``pg_try_advisory_lock`` on a connection of its
own, not from the pool) is the leader and chains, the others retry about once a
second. The lock lives as long as that connection, so when the leader's process
dies or its connection drops, another process takes over within a second or
two.

One batch is one transaction (:func:`chain_batch`): lock the head row, read up
to ``batch_size`` intake rows (oldest id first), hash them with
:func:`~teleconsult.audit.chain.compute_hash`, move them from the intake into
``audit_log`` with one statement, move the head, store one signed checkpoint for
the batch's last row; commit; then append the checkpoint to the checkpoint file. The head
row lock also keeps the chain linear if two leaders ever overlap (one waits for
the other and then sees its rows gone from the intake).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NamedTuple

import asyncpg

from teleconsult.audit.chain import AuditRecord, ChainHead, compute_hash
from teleconsult.audit.checkpoints import Checkpoint, CheckpointFile, CheckpointSigner
from teleconsult.audit.store import AuditError

logger = logging.getLogger(__name__)

# Arbitrary constant shared by every teleconsult process: "tcauditS" as bytes.
SEQUENCER_LOCK_KEY: Final = int.from_bytes(b"tcauditS", "big")
DEFAULT_BATCH_SIZE: Final = 1000
DEFAULT_INTERVAL: Final = 0.05
DEFAULT_RETRY: Final = 1.0
MAX_BACKOFF: Final = 10.0
DRAIN_SECONDS: Final = 2.0

_CONNECTION_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    # What asyncpg raises when a terminated connection is used again mid-protocol.
    asyncpg.InternalClientError,
)

_WAITING = "SELECT EXISTS (SELECT 1 FROM audit_intake ORDER BY id LIMIT 1)"
_LOCK_HEAD = "SELECT seq, hash FROM audit_head FOR UPDATE"
_READ = """
SELECT id, occurred_at, actor_id, actor_role, clinic_id, action, object_type, object_id, ip,
       outcome, detail::text AS detail
FROM audit_intake ORDER BY id LIMIT $1
"""
# Moves the rows inside the database: only ids, seqs and hashes travel. The rows are
# exactly the ones read above (intake rows cannot be edited; if one were deleted
# meanwhile, its successor would not chain and the trigger would refuse the batch).
_MOVE = """
WITH taken AS (
    DELETE FROM audit_intake WHERE id = ANY($1::bigint[])
    RETURNING id, occurred_at, actor_id, actor_role, clinic_id, action, object_type,
              object_id, ip, outcome, detail
)
INSERT INTO audit_log (seq, occurred_at, actor_id, actor_role, clinic_id, action,
                       object_type, object_id, ip, outcome, detail, prev_hash, hash)
SELECT l.seq, t.occurred_at, t.actor_id, t.actor_role, t.clinic_id, t.action,
       t.object_type, t.object_id, t.ip, t.outcome, t.detail, l.prev_hash, l.hash
FROM taken AS t
JOIN unnest($1::bigint[], $2::bigint[], $3::bytea[], $4::bytea[]) AS l(id, seq, prev_hash, hash)
    USING (id)
ORDER BY l.seq
"""
_MOVE_HEAD = "UPDATE audit_head SET seq = $1, hash = $2"
_INSERT_CHECKPOINT = """
INSERT INTO audit_checkpoints (seq, hash, key_id, signature, signed_at)
VALUES ($1, $2, $3, $4, $5)
"""


@dataclass(frozen=True)
class ChainedBatch:
    """What one :func:`chain_batch` call appended."""

    first_seq: int
    checkpoint: Checkpoint

    @property
    def rows(self) -> int:
        return self.checkpoint.seq - self.first_seq + 1


class Link(NamedTuple):
    """Where one intake row goes in the chain."""

    seq: int
    prev_hash: bytes
    hash: bytes


def link(rows: Sequence[Mapping[str, Any]], head: ChainHead) -> list[Link]:
    """Chain intake rows (the intake's columns, ``detail`` as JSON text, in order)
    after ``head``. Pure: the canonical form and hash of :mod:`teleconsult.audit.chain`.

    asyncpg's UUID is a subclass of :class:`uuid.UUID` with the same text form, so
    it is hashed as it comes.
    """
    links: list[Link] = []
    prev = head.hash
    seq = head.seq
    for row in rows:
        seq += 1
        record = AuditRecord(
            seq=seq,
            occurred_at=row["occurred_at"],
            action=row["action"],
            outcome=row["outcome"],
            actor_id=row["actor_id"],
            actor_role=row["actor_role"],
            clinic_id=row["clinic_id"],
            object_type=row["object_type"],
            object_id=row["object_id"],
            ip=row["ip"],
            detail=json.loads(row["detail"]),
            prev_hash=prev,
            hash=b"",
        )
        digest = compute_hash(prev, record)
        links.append(Link(seq, prev, digest))
        prev = digest
    return links


async def chain_batch(
    conn: asyncpg.Connection,
    signer: CheckpointSigner,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> ChainedBatch | None:
    """Chain up to ``batch_size`` committed intake rows in one transaction.

    Returns what was appended (its checkpoint is stored but not yet in any
    file), or None when the intake was empty. ``conn`` must not be in a
    transaction. Safe to run on several connections at once: the head row lock
    serialises them and none forks the chain. Raises AuditError when the head
    row is missing (tampering); the intake is then left as it was.
    """
    async with conn.transaction():
        head = await conn.fetchrow(_LOCK_HEAD)
        if head is None:
            raise AuditError("audit_head row is missing; the audit trail was tampered with")
        # Read after the head lock: another chainer's rows are gone by then.
        rows = await conn.fetch(_READ, batch_size)
        if not rows:
            return None
        links = link(rows, ChainHead(seq=head["seq"], hash=bytes(head["hash"])))
        await conn.execute(
            _MOVE,
            [row["id"] for row in rows],
            [item.seq for item in links],
            [item.prev_hash for item in links],
            [item.hash for item in links],
        )
        last = links[-1]
        await conn.execute(_MOVE_HEAD, last.seq, last.hash)
        checkpoint = signer.sign(last.seq, last.hash)
        await conn.execute(
            _INSERT_CHECKPOINT,
            checkpoint.seq,
            checkpoint.hash,
            checkpoint.key_id,
            checkpoint.signature,
            checkpoint.signed_at,
        )
    return ChainedBatch(first_seq=links[0].seq, checkpoint=checkpoint)


def _jitter(seconds: float) -> float:
    return seconds * random.uniform(0.8, 1.2)


class AuditSequencer:
    """One per server process; the leader among them chains the audit intake.

    :meth:`start` launches the background task, :meth:`close` stops it (a leader
    first chains what is waiting, for up to two seconds) and closes its
    connection, which releases the leadership. :meth:`run_once` chains one batch
    now, leader or not, and may be called while the task runs. Not safe to
    start twice.
    """

    def __init__(
        self,
        dsn: str,
        *,
        signer: CheckpointSigner,
        checkpoint_file: Path | None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        interval: float = DEFAULT_INTERVAL,
        retry: float = DEFAULT_RETRY,
    ) -> None:
        if batch_size < 1 or interval <= 0 or retry <= 0:
            raise ValueError("batch_size, interval and retry must be positive")
        self._dsn = dsn
        self._signer = signer
        self._file = None if checkpoint_file is None else CheckpointFile(checkpoint_file)
        self._batch_size = batch_size
        self._interval = interval
        self._retry = retry
        self._conn: asyncpg.Connection | None = None
        self._leading = False
        self._busy = asyncio.Lock()  # one user of the connection at a time
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._conn_warned = False
        self._chain_warned = False
        self._file_warned = False

    @property
    def leading(self) -> bool:
        """True while this process holds the leadership (as far as it knows)."""
        return self._leading

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("the audit sequencer is already running")
        self._stop.clear()
        self._task = asyncio.create_task(self._run(), name="audit-sequencer")

    async def close(self) -> None:
        """Stop the task (after a short drain when leading) and drop the connection."""
        task, self._task = self._task, None
        self._stop.set()
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), DRAIN_SECONDS + 1.0)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._drop()

    async def run_once(self) -> int:
        """Chain one batch now; return how many rows it chained (0: the intake was empty)."""
        async with self._busy:
            conn = self._conn
            if conn is not None and not conn.is_closed():
                batch = await self._chain(conn)
            else:
                own = await self._connect()
                try:
                    batch = await self._chain(own)
                finally:
                    await own.close()
        return 0 if batch is None else batch.rows

    async def _connect(self) -> asyncpg.Connection:
        conn: asyncpg.Connection = await asyncpg.connect(
            self._dsn,
            timeout=10,
            command_timeout=30,
            server_settings={
                "application_name": "teleconsult-audit-sequencer",
                # Notice a leader whose host vanished, so its lock is released.
                "tcp_keepalives_idle": "10",
                "tcp_keepalives_interval": "3",
                "tcp_keepalives_count": "3",
            },
        )
        return conn

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self._leading = False
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), 2.0)
            except (*_CONNECTION_ERRORS, asyncio.CancelledError):
                conn.terminate()

    async def _chain(self, conn: asyncpg.Connection) -> ChainedBatch | None:
        batch = await chain_batch(conn, self._signer, batch_size=self._batch_size)
        if batch is not None and self._file is not None:
            try:
                await asyncio.to_thread(self._file.append, batch.checkpoint)
                self._file_warned = False
            except OSError as exc:
                # The database holds the checkpoint; the file copy resumes with the next batch.
                if not self._file_warned:
                    logger.warning(
                        "audit checkpoint file %s cannot be written: %s", self._file.path, exc
                    )
                    self._file_warned = True
        return batch

    async def _sleep(self, seconds: float) -> bool:
        """Wait, or less when asked to stop; True when asked to stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
        return self._stop.is_set()

    async def _lead(self) -> asyncpg.Connection | None:
        """The connection when this process leads, else None (after one try for the lock)."""
        if self._conn is not None and self._conn.is_closed():
            # Closed under us (terminated, network): the lock went with it.
            raise ConnectionError("the database closed the sequencer's connection")
        if self._conn is None:
            self._leading = False
            self._conn = await self._connect()
        if not self._leading:
            if not await self._conn.fetchval("SELECT pg_try_advisory_lock($1)", SEQUENCER_LOCK_KEY):
                return None
            self._leading = True
            logger.info("audit sequencer: this process now chains the audit intake")
        return self._conn

    async def _run(self) -> None:
        full = False
        failures = 0
        while not self._stop.is_set():
            try:
                conn = await self._lead()
                failures = 0
                self._conn_warned = False
                if conn is None:
                    await self._sleep(_jitter(self._retry))
                    continue
                async with self._busy:
                    if not full and not await conn.fetchval(_WAITING):
                        batch = None
                    else:
                        batch = await self._chain(conn)
                self._chain_warned = False
                full = batch is not None and batch.rows >= self._batch_size
                if not full:
                    await self._sleep(self._interval)
            except _CONNECTION_ERRORS as exc:
                failures += 1
                if not self._conn_warned:
                    what = "lost the leadership" if self._leading else "cannot reach the database"
                    logger.warning("audit sequencer %s: %s", what, exc)
                    self._conn_warned = True
                await self._drop()
                full = False
                # A deposed leader waits longer than the others retry, so one of them takes over.
                await self._sleep(_jitter(min(2 * self._retry * failures, MAX_BACKOFF)))
            except Exception:
                # AuditError (the head row is gone) or a bug: keep the task alive, say it
                # once, and start again from a fresh connection.
                if not self._chain_warned:
                    logger.exception("audit sequencer cannot chain the intake")
                    self._chain_warned = True
                await self._drop()
                full = False
                await self._sleep(_jitter(2 * self._retry))
        await self._drain()

    async def _drain(self) -> None:
        """On stop: a leader chains what is waiting, for at most DRAIN_SECONDS."""
        conn = self._conn
        if not self._leading or conn is None or conn.is_closed():
            return
        try:
            async with asyncio.timeout(DRAIN_SECONDS):
                async with self._busy:
                    while (batch := await self._chain(conn)) is not None:
                        if batch.rows < self._batch_size:
                            break
        except (*_CONNECTION_ERRORS, AuditError) as exc:
            logger.warning("audit sequencer: events left in the intake at shutdown: %s", exc)
