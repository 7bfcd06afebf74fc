"""SQL of invoices, payments, clinic payment settings and applied callbacks (0019, 0020).

Invoices are raised by the booking's own statement (trigger of migration 0019);
here they are read and their totals moved. A payment's status moves only from
``pending`` to a final state, by a conditional UPDATE: whoever changes the row
does the ledger posting, and anyone else finds nothing to change. That, with the
unique index of one credit per payment, is why a payment is credited once however
many callbacks, polls and retries race.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeAlias
from uuid import UUID

import asyncpg

from teleconsult.payments.records import (
    ClinicPaymentSettings,
    Invoice,
    InvoiceLine,
    InvoiceStatus,
    Payment,
    Refund,
)

Conn: TypeAlias = "asyncpg.Connection | asyncpg.Pool"

_INVOICE_FIELDS = (
    "id", "clinic_id", "appointment_id", "patient_id", "number", "currency", "subtotal",
    "tax", "total", "paid", "refunded", "waived", "status", "void_reason", "created_at",
    "updated_at",
)  # fmt: skip
# The appointment's start by a scalar subquery, so RETURNING can name it too.
_INVOICE = ", ".join(f"i.{c}" for c in _INVOICE_FIELDS) + (
    ", (SELECT a.starts_at FROM appointments a WHERE a.id = i.appointment_id)"
    " AS appointment_starts_at"
)
_PAYMENT = (
    "id, clinic_id, invoice_id, patient_id, provider, amount, currency, status, "
    "provider_reference, redirect_url, failure_reason, provider_transaction_id, refunded, "
    "created_at, finalized_at, expires_at, polls"
)


class PaymentInProgress(Exception):
    """The invoice already has a pending or succeeded payment."""


async def _lines(conn: Conn, invoice_ids: Sequence[UUID]) -> dict[UUID, list[InvoiceLine]]:
    rows = await conn.fetch(
        "SELECT invoice_id, position, kind, description, amount FROM invoice_lines "
        "WHERE invoice_id = ANY($1::uuid[]) ORDER BY invoice_id, position",
        list(invoice_ids),
    )
    found: dict[UUID, list[InvoiceLine]] = {}
    for r in rows:
        found.setdefault(r["invoice_id"], []).append(
            InvoiceLine(r["position"], r["kind"], r["description"], r["amount"])
        )
    return found


def _invoice(row: asyncpg.Record | dict[str, Any], lines: Sequence[InvoiceLine]) -> Invoice:
    values = {k: row[k] for k in _INVOICE_FIELDS}
    return Invoice(**values, appointment_starts_at=row["appointment_starts_at"], lines=tuple(lines))


async def get_invoice(conn: Conn, invoice_id: UUID, *, for_update: bool = False) -> Invoice | None:
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(
        f"SELECT {_INVOICE} FROM invoices i WHERE i.id = $1{lock}", invoice_id
    )
    if row is None:
        return None
    return _invoice(row, (await _lines(conn, [invoice_id])).get(invoice_id, []))


async def invoice_for_appointment(conn: Conn, appointment_id: UUID) -> Invoice | None:
    row = await conn.fetchrow(
        f"SELECT {_INVOICE} FROM invoices i WHERE i.appointment_id = $1", appointment_id
    )
    if row is None:
        return None
    return _invoice(row, (await _lines(conn, [row["id"]])).get(row["id"], []))


async def list_invoices(
    conn: Conn,
    *,
    clinic_id: UUID,
    patient_id: UUID | None,
    status: InvoiceStatus | None,
    after: tuple[datetime, UUID] | None,
    limit: int,
    starts_from: datetime | None = None,
    starts_before: datetime | None = None,
) -> list[Invoice]:
    """Newest first; ``starts_from``/``starts_before`` keep the invoices whose
    appointment starts in that window (the front desk's day)."""
    rows = await conn.fetch(
        f"""
        SELECT {_INVOICE} FROM invoices i
        WHERE i.clinic_id = $1 AND ($2::uuid IS NULL OR i.patient_id = $2)
          AND ($3::text IS NULL OR i.status = $3)
          AND ($4::timestamptz IS NULL OR (i.created_at, i.id) < ($4, $5::uuid))
          AND (($7::timestamptz IS NULL AND $8::timestamptz IS NULL) OR EXISTS (
              SELECT 1 FROM appointments a WHERE a.id = i.appointment_id
                AND ($7::timestamptz IS NULL OR a.starts_at >= $7)
                AND ($8::timestamptz IS NULL OR a.starts_at < $8)))
        ORDER BY i.created_at DESC, i.id DESC LIMIT $6
        """,
        clinic_id,
        patient_id,
        status,
        after[0] if after else None,
        after[1] if after else None,
        limit,
        starts_from,
        starts_before,
    )
    lines = await _lines(conn, [r["id"] for r in rows])
    return [_invoice(r, lines.get(r["id"], [])) for r in rows]


_REFUND = """
    SELECT t.id, t.payment_id, t.invoice_id, p.amount, p.currency, t.memo, t.created_by,
           u.full_name, t.created_at, o.id AS payout_id, o.method, o.status AS payout_status,
           o.failure_reason, o.provider_reference
    FROM ledger_transactions t
    JOIN ledger_postings p ON p.transaction_id = t.id AND p.account = 'refunds'
    LEFT JOIN users u ON u.id = t.created_by
    LEFT JOIN LATERAL (
        SELECT * FROM refund_payouts r WHERE r.refund_id = t.id
        ORDER BY r.created_at DESC, r.id DESC LIMIT 1
    ) o ON true
"""


def _refund(r: asyncpg.Record) -> Refund:
    return Refund(
        id=r["id"], payment_id=r["payment_id"], amount=r["amount"],
        currency=r["currency"].strip(), reason=r["memo"] or "", by=r["created_by"],
        by_name=r["full_name"], created_at=r["created_at"], payout_id=r["payout_id"],
        payout_method=r["method"], payout_status=r["payout_status"],
        payout_failure_reason=r["failure_reason"], payout_reference=r["provider_reference"],
        invoice_id=r["invoice_id"],
    )  # fmt: skip


async def refunds_of_invoice(conn: Conn, invoice_id: UUID) -> list[Refund]:
    """The invoice's refunds from the ledger (each is a ``refund`` transaction whose
    ``refunds`` posting is its amount) with their latest payout, oldest first."""
    rows = await conn.fetch(
        f"{_REFUND} WHERE t.invoice_id = $1 AND t.kind = 'refund' ORDER BY t.created_at, t.id",
        invoice_id,
    )
    return [_refund(r) for r in rows]


async def get_refund(conn: Conn, refund_id: UUID) -> Refund | None:
    row = await conn.fetchrow(f"{_REFUND} WHERE t.id = $1 AND t.kind = 'refund'", refund_id)
    return None if row is None else _refund(row)


async def refunds_owed(conn: Conn, clinic_id: UUID, limit: int) -> list[Refund]:
    """The clinic's refunds not paid out yet (latest payout pending or failed), oldest first."""
    rows = await conn.fetch(
        f"{_REFUND} WHERE t.clinic_id = $1 AND t.kind = 'refund'"
        " AND o.status IN ('pending', 'failed') ORDER BY t.created_at, t.id LIMIT $2",
        clinic_id,
        limit,
    )
    return [_refund(r) for r in rows]


async def move_invoice(
    conn: Conn,
    invoice_id: UUID,
    *,
    paid: int = 0,
    refunded: int = 0,
    waived: int = 0,
    status: InvoiceStatus | None = None,
) -> Invoice:
    """Add to the invoice's paid, refunded and waived totals; the status follows them
    unless given (void)."""
    row = await conn.fetchrow(
        f"""
        UPDATE invoices i SET paid = i.paid + $2, refunded = i.refunded + $3,
            waived = i.waived + $4, updated_at = now(),
            status = coalesce($5::text, CASE
                WHEN i.refunded + $3 > 0 AND i.refunded + $3 >= i.paid + $2 THEN 'refunded'
                WHEN i.refunded + $3 > 0 THEN 'partially_refunded'
                WHEN i.paid + $2 + i.waived + $4 >= i.total THEN 'paid'
                ELSE 'open' END)
        WHERE i.id = $1 RETURNING {_INVOICE}
        """,
        invoice_id,
        paid,
        refunded,
        waived,
        status,
    )
    assert row is not None
    return _invoice(row, (await _lines(conn, [invoice_id])).get(invoice_id, []))


# --- clinic settings ----------------------------------------------------------------


async def get_settings(conn: Conn, clinic_id: UUID) -> ClinicPaymentSettings:
    row = await conn.fetchrow(
        "SELECT gate, tax_label, tax_rate_bp FROM clinic_payment_settings WHERE clinic_id = $1",
        clinic_id,
    )
    if row is None:
        return ClinicPaymentSettings(clinic_id, "none", None, 0)
    return ClinicPaymentSettings(clinic_id, row["gate"], row["tax_label"], row["tax_rate_bp"])


async def put_settings(conn: Conn, s: ClinicPaymentSettings) -> ClinicPaymentSettings:
    await conn.execute(
        """
        INSERT INTO clinic_payment_settings (clinic_id, gate, tax_label, tax_rate_bp)
        VALUES ($1, $2, $3, $4)
        ON CONFLICT (clinic_id) DO UPDATE SET gate = $2, tax_label = $3, tax_rate_bp = $4,
            updated_at = now()
        """,
        s.clinic_id,
        s.gate,
        s.tax_label,
        s.tax_rate_bp,
    )
    return s


# --- payments -----------------------------------------------------------------------


def _payment(row: asyncpg.Record) -> Payment:
    return Payment(**dict(row))


async def insert_payment(
    conn: Conn,
    *,
    payment_id: UUID,
    invoice: Invoice,
    provider: str,
    amount: int,
    provider_reference: str | None,
    created_by: UUID,
    expires_at: datetime,
    next_poll_at: datetime,
    status: str = "pending",
) -> Payment:
    try:
        row = await conn.fetchrow(
            f"""
            INSERT INTO payments (id, clinic_id, invoice_id, patient_id, provider, amount,
                currency, status, provider_reference, created_by, expires_at, next_poll_at,
                finalized_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,
                    CASE WHEN $8 = 'pending' THEN NULL ELSE now() END)
            RETURNING {_PAYMENT}
            """,
            payment_id,
            invoice.clinic_id,
            invoice.id,
            invoice.patient_id,
            provider,
            amount,
            invoice.currency,
            status,
            provider_reference,
            created_by,
            expires_at,
            next_poll_at,
        )
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name == "payments_one_live_per_invoice":
            raise PaymentInProgress from None
        raise
    assert row is not None
    return _payment(row)


async def get_payment(conn: Conn, payment_id: UUID, *, for_update: bool = False) -> Payment | None:
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(f"SELECT {_PAYMENT} FROM payments WHERE id = $1{lock}", payment_id)
    return None if row is None else _payment(row)


async def payment_by_reference(conn: Conn, provider: str, reference: str) -> Payment | None:
    row = await conn.fetchrow(
        f"SELECT {_PAYMENT} FROM payments WHERE provider = $1 AND provider_reference = $2",
        provider,
        reference,
    )
    return None if row is None else _payment(row)


async def payments_of_invoice(conn: Conn, invoice_id: UUID) -> list[Payment]:
    rows = await conn.fetch(
        f"SELECT {_PAYMENT} FROM payments WHERE invoice_id = $1 ORDER BY created_at", invoice_id
    )
    return [_payment(r) for r in rows]


async def set_reference(
    conn: Conn, payment_id: UUID, reference: str, redirect_url: str | None
) -> Payment | None:
    row = await conn.fetchrow(
        f"""
        UPDATE payments SET provider_reference = $2, redirect_url = $3, updated_at = now()
        WHERE id = $1 AND (provider_reference IS NULL OR provider_reference = $2)
        RETURNING {_PAYMENT}
        """,
        payment_id,
        reference,
        redirect_url,
    )
    return None if row is None else _payment(row)


async def finalize(
    conn: Conn,
    payment_id: UUID,
    status: str,
    *,
    reason: str | None,
    provider_transaction_id: str | None,
) -> Payment | None:
    """Move a pending payment to ``status``; None when it was final already."""
    row = await conn.fetchrow(
        finalize_sql("payments", _PAYMENT),
        payment_id,
        status,
        reason,
        provider_transaction_id,
    )
    return None if row is None else _payment(row)


def finalize_sql(table: str, columns: str) -> str:
    """Move row $1 of ``table`` from ``pending`` to $2 with failure reason $3 and the
    provider's transaction id $4, giving up its lease; no row when it was final already
    (the conditional UPDATE that makes a payment or payout final once)."""
    return f"""
        UPDATE {table} SET status = $2, failure_reason = left($3, 200),
            provider_transaction_id = left($4, 200), finalized_at = now(), updated_at = now(),
            locked_until = NULL, claimed_by = NULL
        WHERE id = $1 AND status = 'pending' RETURNING {columns}
        """


async def add_refund(conn: Conn, payment_id: UUID, amount: int) -> Payment | None:
    row = await conn.fetchrow(
        f"""
        UPDATE payments SET refunded = refunded + $2, updated_at = now()
        WHERE id = $1 AND status = 'succeeded' AND refunded + $2 <= amount
        RETURNING {_PAYMENT}
        """,
        payment_id,
        amount,
    )
    return None if row is None else _payment(row)


def claim_sql(table: str, columns: str) -> str:
    """Lease up to $4 pending rows of ``table`` due for a poll at $1 for $2 seconds to
    worker $3 (SKIP LOCKED: concurrent reconcilers get disjoint rows; a dead one's lease
    runs out and others take over). Payments and refund payouts share it."""
    return f"""
        WITH due AS (
            SELECT id FROM {table}
            WHERE status = 'pending' AND next_poll_at <= $1
              AND (locked_until IS NULL OR locked_until <= $1)
            ORDER BY next_poll_at LIMIT $4 FOR UPDATE SKIP LOCKED
        )
        UPDATE {table} p SET locked_until = $1 + make_interval(secs => $2), claimed_by = $3,
            polls = p.polls + 1
        FROM due WHERE p.id = due.id
        RETURNING {", ".join("p." + c for c in columns.split(", "))}
        """


async def claim_pending(
    conn: Conn, *, worker_id: str, now: datetime, lease_seconds: float, batch: int
) -> list[Payment]:
    """Lease up to ``batch`` pending payments due for a poll (``claim_sql``)."""
    rows = await conn.fetch(claim_sql("payments", _PAYMENT), now, lease_seconds, worker_id, batch)
    return [_payment(r) for r in rows]


async def release(
    conn: Conn, row_id: UUID, worker_id: str, next_poll_at: datetime, *, table: str = "payments"
) -> None:
    """Give a claimed pending row back, to be polled at ``next_poll_at``."""
    await conn.execute(
        f"UPDATE {table} SET locked_until = NULL, claimed_by = NULL, next_poll_at = $3 "
        "WHERE id = $1 AND claimed_by = $2 AND status = 'pending'",
        row_id,
        worker_id,
        next_poll_at,
    )


async def poll_soon(conn: Conn, row_id: UUID, at: datetime, *, table: str = "payments") -> None:
    """A hint arrived: poll the pending row at ``at`` (sooner than planned)."""
    await conn.execute(
        f"UPDATE {table} SET next_poll_at = least(next_poll_at, $2) "
        "WHERE id = $1 AND status = 'pending'",
        row_id,
        at,
    )


async def record_callback(
    conn: Conn, provider: str, reference: str, event: str, payment_id: UUID | None
) -> bool:
    """Note a callback as applied; False when the same one was applied before."""
    done = await conn.fetchval(
        "INSERT INTO payment_callbacks (provider, reference, event, payment_id) "
        "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING true",
        provider,
        reference[:200],
        event[:64],
        payment_id,
    )
    return bool(done)


async def provider_summary(
    conn: Conn, clinic_id: UUID, provider: str, since: datetime, until: datetime
) -> list[Payment]:
    rows = await conn.fetch(
        f"""
        SELECT {_PAYMENT} FROM payments
        WHERE clinic_id = $1 AND provider = $2 AND created_at >= $3 AND created_at < $4
        ORDER BY created_at, id
        """,
        clinic_id,
        provider,
        since,
        until,
    )
    return [_payment(r) for r in rows]
