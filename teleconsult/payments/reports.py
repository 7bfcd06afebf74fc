"""The per-provider reconciliation report: our payments against the provider's word."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from teleconsult.payments import store
from teleconsult.payments.ledger import accounts
from teleconsult.payments.providers.base import PaymentProvider, ProviderError


@dataclass(frozen=True)
class ReconRow:
    payment_id: UUID
    reference: str | None
    ours: str
    provider: str | None
    amount: int
    currency: str

    @property
    def matches(self) -> bool:
        return self.provider is None or self.provider == self.ours


@dataclass(frozen=True)
class Reconciliation:
    provider: str
    succeeded_count: int
    succeeded_amount: dict[str, int]
    pending: int
    failed: int
    ledger_clearing: dict[str, int]
    rows: list[ReconRow]

    @property
    def mismatches(self) -> list[ReconRow]:
        return [r for r in self.rows if not r.matches]


async def reconcile(
    pool: asyncpg.Pool,
    provider: PaymentProvider,
    *,
    clinic_id: UUID,
    provider_name: str,
    since: datetime,
    until: datetime,
    verify: bool,
) -> Reconciliation:
    """Each payment of the period with our status and, with ``verify``, the provider's
    answer to a status query now; the clearing account's balance beside them."""
    async with pool.acquire() as conn:
        payments = await store.provider_summary(conn, clinic_id, provider_name, since, until)
        clearing = await conn.fetch(
            "SELECT currency, sum(amount)::bigint AS net FROM ledger_postings "
            "WHERE clinic_id = $1 AND account = $2 GROUP BY currency",
            clinic_id,
            accounts.clearing(provider_name),
        )
    rows = []
    for p in payments:
        theirs: str | None = None
        if verify and p.provider_reference and provider_name != "cash":
            try:
                theirs = (await provider.query(p.provider_reference)).state
            except ProviderError:
                theirs = "unknown"
        rows.append(ReconRow(p.id, p.provider_reference, p.status, theirs, p.amount, p.currency))
    succeeded: dict[str, int] = {}
    for p in payments:
        if p.status == "succeeded":
            succeeded[p.currency] = succeeded.get(p.currency, 0) + p.amount
    return Reconciliation(
        provider=provider_name,
        succeeded_count=sum(p.status == "succeeded" for p in payments),
        succeeded_amount=succeeded,
        pending=sum(p.status == "pending" for p in payments),
        failed=sum(p.status == "failed" for p in payments),
        ledger_clearing={r["currency"]: r["net"] for r in clearing},
        rows=rows,
    )
