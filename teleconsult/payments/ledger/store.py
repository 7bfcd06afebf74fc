"""SQL of the ledger: post a balanced transaction, read balances and the trial balance.

The database checks what matters: postings balance per transaction and currency
at commit (a deferred constraint trigger), rows are never updated or deleted (the
runtime role may only SELECT and INSERT; triggers refuse the owner too), an
invoice is posted once and a payment credited once (unique indexes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias
from uuid import UUID, uuid4

import asyncpg

Conn: TypeAlias = "asyncpg.Connection | asyncpg.Pool"


@dataclass(frozen=True)
class Posting:
    account: str
    amount: int  # minor units; positive debits, negative credits


async def post(
    conn: asyncpg.Connection,
    *,
    clinic_id: UUID,
    kind: str,
    currency: str,
    postings: Sequence[Posting],
    invoice_id: UUID | None = None,
    payment_id: UUID | None = None,
    reverses: UUID | None = None,
    memo: str | None = None,
    created_by: UUID | None = None,
    payout_id: UUID | None = None,
) -> UUID:
    """Write one ledger transaction with its postings (zero amounts are left out).

    Run inside the caller's transaction: the balance is checked at its commit.
    """
    if not conn.is_in_transaction():
        raise RuntimeError("post() belongs inside the transaction of the change it records")
    lines = [p for p in postings if p.amount != 0]
    if sum(p.amount for p in lines) != 0:  # the database would refuse it at commit
        raise ValueError("postings do not balance")
    txn = uuid4()
    await conn.execute(
        """
        WITH t AS (
            INSERT INTO ledger_transactions
                (id, clinic_id, kind, invoice_id, payment_id, reverses, memo, created_by,
                 payout_id)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $12)
        )
        INSERT INTO ledger_postings (transaction_id, clinic_id, account, currency, amount)
        SELECT $1, $2, a, $9, x FROM unnest($10::text[], $11::bigint[]) AS p (a, x)
        """,
        txn,
        clinic_id,
        kind,
        invoice_id,
        payment_id,
        reverses,
        memo,
        created_by,
        currency,
        [p.account for p in lines],
        [p.amount for p in lines],
        payout_id,
    )
    return txn


async def transaction_of(
    conn: Conn, *, kind: str, invoice_id: UUID | None = None, payment_id: UUID | None = None
) -> UUID | None:
    found: UUID | None = await conn.fetchval(
        "SELECT id FROM ledger_transactions WHERE kind = $1 "
        "AND ($2::uuid IS NULL OR invoice_id = $2) AND ($3::uuid IS NULL OR payment_id = $3) "
        "ORDER BY created_at LIMIT 1",
        kind,
        invoice_id,
        payment_id,
    )
    return found


@dataclass(frozen=True)
class Balance:
    account: str
    currency: str
    debit: int
    credit: int

    @property
    def net(self) -> int:
        return self.debit - self.credit


async def trial_balance(conn: Conn, clinic_id: UUID) -> list[Balance]:
    """Every account of the clinic with its debits and credits; per currency, the
    debits equal the credits (the sum of ``net`` is exactly 0)."""
    rows = await conn.fetch(
        """
        SELECT account, currency,
               coalesce(sum(amount) FILTER (WHERE amount > 0), 0)::bigint AS debit,
               coalesce(-sum(amount) FILTER (WHERE amount < 0), 0)::bigint AS credit
        FROM ledger_postings WHERE clinic_id = $1
        GROUP BY account, currency ORDER BY currency, account
        """,
        clinic_id,
    )
    return [Balance(r["account"], r["currency"], r["debit"], r["credit"]) for r in rows]


async def balance(conn: Conn, clinic_id: UUID, account: str, currency: str) -> int:
    value: int = await conn.fetchval(
        "SELECT coalesce(sum(amount), 0)::bigint FROM ledger_postings "
        "WHERE clinic_id = $1 AND account = $2 AND currency = $3",
        clinic_id,
        account,
        currency,
    )
    return value
