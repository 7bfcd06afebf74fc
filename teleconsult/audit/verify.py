"""Verifying the stored audit chain (``teleconsult audit verify``)."""

from __future__ import annotations

import asyncpg

from teleconsult.audit.chain import ChainVerifier, VerifyReport
from teleconsult.audit.store import iter_records, read_head
from teleconsult.core.errors import InfrastructureError


async def verify_connection(conn: asyncpg.Connection, *, batch_size: int = 1000) -> VerifyReport:
    """Walk every row and compare the end of the chain with the head.

    Reads rows and head in one read-only REPEATABLE READ snapshot, so writers may
    keep appending meanwhile. ``conn`` must not already be in a transaction.
    """
    verifier = ChainVerifier()
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        head = await read_head(conn)
        async for record in iter_records(conn, batch_size=batch_size):
            verifier.feed(record)
    return verifier.finish(head)


async def verify_database(dsn: str, *, batch_size: int = 1000) -> VerifyReport:
    """Connect to ``dsn`` and verify its audit chain.

    Raises InfrastructureError when the database cannot be reached or has no
    audit tables; a broken chain is not an error but a report with problems.
    """
    try:
        conn = await asyncpg.connect(dsn)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise InfrastructureError(f"cannot connect to the database: {exc}") from exc
    try:
        return await verify_connection(conn, batch_size=batch_size)
    except asyncpg.UndefinedTableError as exc:
        raise InfrastructureError("the audit tables are missing; run the migrations first") from exc
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise InfrastructureError(f"reading the audit trail failed: {exc}") from exc
    finally:
        await conn.close()


def format_report(report: VerifyReport) -> str:
    """One line per problem, then a summary line."""
    lines = [f"seq {p.seq}: {p.kind}: {p.message}" for p in report.problems]
    hidden = report.problem_count - len(report.problems)
    if hidden > 0:
        lines.append(f"... and {hidden} more problems")
    if report.ok:
        head = "none" if report.head_seq is None else str(report.head_seq)
        lines.append(f"audit chain OK: {report.rows} rows, head seq {head}")
    else:
        noun = "problem" if report.problem_count == 1 else "problems"
        lines.append(f"audit chain BROKEN: {report.problem_count} {noun} in {report.rows} rows")
    return "\n".join(lines)
