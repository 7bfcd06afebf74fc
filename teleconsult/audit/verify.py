"""Verifying the stored audit chain and its signed checkpoints (``teleconsult audit verify``).

The chain walk reports edited, deleted and reordered rows (``hash_mismatch``,
``gap``, ``broken_link``, ``head_mismatch``, ``first_row``). The checkpoints
catch what the chain alone cannot: a superuser who re-hashes the chain from
some row onward (``checkpoint_mismatch``), checkpoint rows that were deleted
(``checkpoint_missing``, from the file) or forged (``bad_signature``).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Sequence
from itertools import islice
from pathlib import Path

import asyncpg

from teleconsult.audit.chain import (
    DEFAULT_MAX_PROBLEMS,
    ChainVerifier,
    CheckpointSummary,
    VerifyReport,
)
from teleconsult.audit.checkpoints import (
    Checkpoint,
    CheckpointChecker,
    TrustedKeys,
    read_checkpoint_file,
)
from teleconsult.audit.store import (
    at_seqs,
    count_waiting,
    iter_checkpointed,
    iter_orphan_checkpoints,
    read_head,
)
from teleconsult.core.errors import InfrastructureError

FILE_CHUNK = 1000


def _file_sizes(paths: Sequence[Path]) -> list[tuple[Path, int]]:
    try:
        return [(path, path.stat().st_size) for path in paths]
    except OSError as exc:
        raise InfrastructureError(f"cannot read checkpoint file: {exc}") from exc


async def _file_chunks(
    path: Path, size: int
) -> AsyncIterator[list[tuple[int, Checkpoint | ValueError]]]:
    """The file's first ``size`` bytes as parsed lines, FILE_CHUNK at a time, read in a thread."""
    lines = read_checkpoint_file(path, size)
    try:
        while chunk := await asyncio.to_thread(lambda: list(islice(lines, FILE_CHUNK))):
            yield chunk
    except OSError as exc:
        raise InfrastructureError(f"cannot read checkpoint file: {exc}") from exc
    finally:
        lines.close()


async def verify_connection(
    conn: asyncpg.Connection,
    *,
    batch_size: int = 1000,
    trusted_keys: Sequence[bytes] | None = None,
    checkpoint_files: Sequence[Path] = (),
) -> VerifyReport:
    """Walk every row and checkpoint and compare the end of the chain with the head.

    Reads rows, head and checkpoints in one read-only REPEATABLE READ snapshot,
    so the sequencer may keep appending meanwhile. ``trusted_keys`` are raw
    Ed25519 public keys; None skips the signature checks (hashes are still
    compared). Each checkpoint file is read up to the size it had before the
    snapshot. ``conn`` must not already be in a transaction.
    """
    sizes = _file_sizes(checkpoint_files)
    verifier = ChainVerifier()
    keys = None if trusted_keys is None else TrustedKeys(trusted_keys)
    checker = CheckpointChecker(keys)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        head = await read_head(conn)
        async for record, stored in iter_checkpointed(conn, batch_size=batch_size):
            verifier.feed(record)
            if stored is not None:
                checker.stored(stored, record.hash)
        async for orphan in iter_orphan_checkpoints(conn):
            checker.stored(orphan, None)
        for path, size in sizes:
            async for chunk in _file_chunks(path, size):
                found = await at_seqs(
                    conn, [item.seq for _, item in chunk if isinstance(item, Checkpoint)]
                )
                for number, item in chunk:
                    where = f"{path} line {number}"
                    if isinstance(item, ValueError):
                        checker.unreadable(where, str(item))
                        continue
                    chain_hash, stored = found[item.seq]
                    checker.filed(
                        item,
                        where,
                        stored=stored,
                        chain_hash=chain_hash,
                        head_seq=None if head is None else head.seq,
                    )
        waiting = await count_waiting(conn)
    return _merge(verifier.finish(head), checker, len(sizes), keys, waiting)


def _merge(
    chain: VerifyReport,
    checker: CheckpointChecker,
    files: int,
    keys: TrustedKeys | None,
    waiting: int,
) -> VerifyReport:
    problems = sorted(
        [*chain.problems, *checker.problems][:DEFAULT_MAX_PROBLEMS], key=lambda p: p.seq
    )
    return dataclasses.replace(
        chain,
        problems=tuple(problems),
        problem_count=chain.problem_count + checker.problem_count,
        checkpoints=CheckpointSummary(
            in_database=checker.in_database,
            in_files=checker.in_files,
            files=files,
            trusted_keys=None if keys is None else len(keys),
        ),
        pending=waiting,
    )


async def verify_database(
    dsn: str,
    *,
    batch_size: int = 1000,
    trusted_keys: Sequence[bytes] | None = None,
    checkpoint_files: Sequence[Path] = (),
) -> VerifyReport:
    """Connect to ``dsn`` and verify its audit chain and checkpoints.

    Raises InfrastructureError when the database cannot be reached, has no
    audit tables, or a checkpoint file cannot be read; a broken chain is not an
    error but a report with problems.
    """
    try:
        conn = await asyncpg.connect(dsn)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise InfrastructureError(f"cannot connect to the database: {exc}") from exc
    try:
        return await verify_connection(
            conn,
            batch_size=batch_size,
            trusted_keys=trusted_keys,
            checkpoint_files=checkpoint_files,
        )
    except asyncpg.UndefinedTableError as exc:
        raise InfrastructureError("the audit tables are missing; run the migrations first") from exc
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise InfrastructureError(f"reading the audit trail failed: {exc}") from exc
    finally:
        await conn.close()


def format_report(report: VerifyReport) -> str:
    """One line per problem, what else was checked, then a summary line."""
    lines = [f"seq {p.seq}: {p.kind}: {p.message}" for p in report.problems]
    hidden = report.problem_count - len(report.problems)
    if hidden > 0:
        lines.append(f"... and {hidden} more problems")
    summary = report.checkpoints
    if summary is not None:
        how = (
            "hashes only: no trusted public key given"
            if summary.trusted_keys is None
            else f"signatures checked against {summary.trusted_keys} trusted "
            f"{'key' if summary.trusted_keys == 1 else 'keys'}"
        )
        lines.append(
            f"checkpoints: {summary.in_database} in the database, {summary.in_files} in "
            f"{summary.files} {'file' if summary.files == 1 else 'files'} ({how})"
        )
    if report.pending:
        noun = "event" if report.pending == 1 else "events"
        lines.append(f"intake: {report.pending} {noun} waiting to be chained (not a problem)")
    if report.ok:
        head = "none" if report.head_seq is None else str(report.head_seq)
        lines.append(f"audit chain OK: {report.rows} rows, head seq {head}")
    else:
        noun = "problem" if report.problem_count == 1 else "problems"
        lines.append(f"audit chain BROKEN: {report.problem_count} {noun} in {report.rows} rows")
    return "\n".join(lines)
