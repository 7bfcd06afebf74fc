"""SQL of refund payouts (0023): one row per attempt to pay a refund back out.

As payments: a payout leaves ``pending`` once, by a conditional UPDATE in the same
transaction as its ledger entry (one per payout, a unique index), and at most one
payout of a refund is under way or succeeded (another unique index).
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import asyncpg

from teleconsult.payments.records import Payment, Payout
from teleconsult.payments.store import Conn, claim_sql, finalize_sql

_PAYOUT = (
    "id, clinic_id, refund_id, payment_id, invoice_id, patient_id, method, amount, currency, "
    "status, provider_reference, originator_reference, provider_transaction_id, "
    "failure_reason, created_at, finalized_at, expires_at, polls"
)


class PayoutInProgress(Exception):
    """The refund already has a payout under way or paid."""


def _payout(row: asyncpg.Record) -> Payout:
    values = dict(row)
    values["currency"] = values["currency"].strip()
    return Payout(**values)


async def insert_payout(
    conn: Conn,
    *,
    payout_id: UUID,
    refund_id: UUID,
    payment: Payment,
    method: str,
    amount: int,
    provider_reference: str | None,
    created_by: UUID | None,
    expires_at: datetime,
    next_poll_at: datetime,
) -> Payout:
    try:
        row = await conn.fetchrow(
            f"""
            INSERT INTO refund_payouts (id, clinic_id, refund_id, payment_id, invoice_id,
                patient_id, method, amount, currency, provider_reference, created_by,
                expires_at, next_poll_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
            RETURNING {_PAYOUT}
            """,
            payout_id,
            payment.clinic_id,
            refund_id,
            payment.id,
            payment.invoice_id,
            payment.patient_id,
            method,
            amount,
            payment.currency,
            provider_reference,
            created_by,
            expires_at,
            next_poll_at,
        )
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name == "refund_payouts_one_live_per_refund":
            raise PayoutInProgress from None
        raise
    assert row is not None
    return _payout(row)


async def get_payout(conn: Conn, payout_id: UUID, *, for_update: bool = False) -> Payout | None:
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(
        f"SELECT {_PAYOUT} FROM refund_payouts WHERE id = $1{lock}", payout_id
    )
    return None if row is None else _payout(row)


async def payout_by_reference(conn: Conn, method: str, reference: str) -> Payout | None:
    row = await conn.fetchrow(
        f"SELECT {_PAYOUT} FROM refund_payouts WHERE method = $1 AND provider_reference = $2",
        method,
        reference,
    )
    return None if row is None else _payout(row)


async def set_reference(
    conn: Conn, payout_id: UUID, reference: str, originator: str | None
) -> Payout | None:
    row = await conn.fetchrow(
        f"""
        UPDATE refund_payouts SET provider_reference = $2,
            originator_reference = coalesce($3, originator_reference), updated_at = now()
        WHERE id = $1 AND (provider_reference IS NULL OR provider_reference = $2)
        RETURNING {_PAYOUT}
        """,
        payout_id,
        reference,
        originator,
    )
    return None if row is None else _payout(row)


async def finalize(
    conn: Conn,
    payout_id: UUID,
    status: str,
    *,
    reason: str | None,
    provider_transaction_id: str | None,
) -> Payout | None:
    """Move a pending payout to ``status``; None when it was final already."""
    row = await conn.fetchrow(
        finalize_sql("refund_payouts", _PAYOUT),
        payout_id,
        status,
        reason,
        provider_transaction_id,
    )
    return None if row is None else _payout(row)


async def claim_pending(
    conn: Conn, *, worker_id: str, now: datetime, lease_seconds: float, batch: int
) -> list[Payout]:
    """Lease pending payouts due for a poll (as payments: ``store.claim_sql``)."""
    rows = await conn.fetch(
        claim_sql("refund_payouts", _PAYOUT), now, lease_seconds, worker_id, batch
    )
    return [_payout(r) for r in rows]
