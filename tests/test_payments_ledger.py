"""Invoices raised by bookings and the double-entry ledger, on the real database."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from teleconsult.accounts import store as accounts
from teleconsult.core.identity import Role
from teleconsult.core.migrations import migrate
from teleconsult.payments.ledger.store import Posting, post, trial_balance
from tests.paymentskit import book, give_fee, invoice_of
from tests.security.pg_roles import owner_and_runtime
from tests.world import Account, Tenant

Client = TestClient[Any, Any]


async def postings(pool: asyncpg.Pool, invoice_id: object) -> list[tuple[str, str, int]]:
    rows = await pool.fetch(
        "SELECT t.kind, p.account, p.amount FROM ledger_postings p "
        "JOIN ledger_transactions t ON t.id = p.transaction_id WHERE t.invoice_id = $1 "
        "ORDER BY p.id",
        invoice_id,
    )
    return [(r["kind"], r["account"], r["amount"]) for r in rows]


async def test_booking_raises_an_invoice_with_lines_number_posting_and_audit(
    app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    doctor, patient = tenant[Role.DOCTOR], tenant[Role.PATIENT]
    await give_fee(app_pool, doctor, fee=150_000, currency="KES")
    invoice_id = await invoice_of(app_pool, await book(app_pool, doctor, patient))
    row = await app_pool.fetchrow("SELECT * FROM invoices WHERE id = $1", invoice_id)
    assert row is not None
    assert (row["total"], row["tax"], row["status"], row["currency"]) == (150_000, 0, "open", "KES")
    assert row["patient_id"] == patient.user_id
    assert re.fullmatch(r"INV-\d{4}-000001", row["number"])
    lines = await app_pool.fetch("SELECT kind, amount FROM invoice_lines WHERE invoice_id = $1",
                                 invoice_id)  # fmt: skip
    assert [(r["kind"], r["amount"]) for r in lines] == [("fee", 150_000)]
    assert await postings(app_pool, invoice_id) == [
        ("invoice", "receivables", 150_000),
        ("invoice", "revenue", -150_000),
    ]
    events = await app_pool.fetch(
        "SELECT action FROM audit_intake WHERE object_id = $1 "
        "UNION ALL SELECT action FROM audit_log WHERE object_id = $1",
        str(invoice_id),
    )
    assert [e["action"] for e in events] == ["invoice.create"]


async def test_clinic_tax_is_a_line_and_a_liability(app_pool: asyncpg.Pool, tenant: Tenant) -> None:
    await app_pool.execute(
        "INSERT INTO clinic_payment_settings (clinic_id, tax_label, tax_rate_bp) "
        "VALUES ($1, 'VAT', 1600)",
        tenant.clinic_id,
    )
    await give_fee(app_pool, tenant[Role.DOCTOR], fee=2_500, currency="XOF")
    invoice_id = await invoice_of(
        app_pool, await book(app_pool, tenant[Role.DOCTOR], tenant[Role.PATIENT])
    )
    row = await app_pool.fetchrow("SELECT subtotal, tax, total FROM invoices WHERE id = $1",
                                  invoice_id)  # fmt: skip
    assert row is not None and tuple(row) == (2_500, 400, 2_900)
    assert await postings(app_pool, invoice_id) == [
        ("invoice", "receivables", 2_900),
        ("invoice", "revenue", -2_500),
        ("invoice", "tax_payable", -400),
    ]


async def test_a_doctor_without_a_fee_raises_no_invoice(
    app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    await give_fee(app_pool, tenant[Role.DOCTOR], fee=0)
    appointment_id = await book(app_pool, tenant[Role.DOCTOR], tenant[Role.PATIENT])
    assert (
        await app_pool.fetchval(
            "SELECT count(*) FROM invoices WHERE appointment_id = $1", appointment_id
        )
        == 0
    )


async def test_numbers_are_gapless_per_clinic_under_concurrency_and_rollback(
    app_pool: asyncpg.Pool, tenant: Tenant, other_tenant: Tenant
) -> None:
    doctor = tenant[Role.DOCTOR]
    await give_fee(app_pool, doctor)
    await give_fee(app_pool, other_tenant[Role.DOCTOR])
    async with app_pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await book(conn, doctor, tenant[Role.PATIENT])
        await tx.rollback()
    await asyncio.gather(
        *(book(app_pool, doctor, tenant[Role.PATIENT]) for _ in range(8)),
        book(app_pool, other_tenant[Role.DOCTOR], other_tenant[Role.PATIENT]),
    )
    numbers = await app_pool.fetch(
        "SELECT number FROM invoices WHERE clinic_id = $1 ORDER BY number", tenant.clinic_id
    )
    assert [int(r["number"][-6:]) for r in numbers] == list(range(1, 9))
    other = await app_pool.fetchval(
        "SELECT number FROM invoices WHERE clinic_id = $1", other_tenant.clinic_id
    )
    assert other.endswith("-000001")


async def test_an_unbalanced_transaction_is_refused_at_commit(
    app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    async with app_pool.acquire() as conn:
        # 100 KES against 99 KES; then balanced in one currency but not in another.
        for currency, amount in (("KES", -99), ("XOF", -100)):
            with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="does not balance"):
                async with conn.transaction():
                    txn = await conn.fetchval(
                        "INSERT INTO ledger_transactions (clinic_id, kind) VALUES ($1, 'waiver') "
                        "RETURNING id",
                        tenant.clinic_id,
                    )
                    await conn.execute(
                        "INSERT INTO ledger_postings (transaction_id, clinic_id, account, "
                        "currency, amount) VALUES ($1, $2, 'cash', 'KES', 100), "
                        "($1, $2, 'revenue', $3, $4)",
                        txn,
                        tenant.clinic_id,
                        currency,
                        amount,
                    )
        # Postings added one by one balance at commit: accepted.
        async with conn.transaction():
            await post(
                conn, clinic_id=tenant.clinic_id, kind="waiver", currency="KES",
                postings=[Posting("fees_waived", 700), Posting("receivables", -700)],
            )  # fmt: skip
    balances = await trial_balance(app_pool, tenant.clinic_id)
    assert sum(b.net for b in balances if b.currency == "KES") == 0
    assert not [b for b in balances if b.currency == "XOF"]


async def test_postings_and_transactions_are_immutable(
    app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    await give_fee(app_pool, tenant[Role.DOCTOR])
    invoice_id = await invoice_of(
        app_pool, await book(app_pool, tenant[Role.DOCTOR], tenant[Role.PATIENT])
    )
    txn = await app_pool.fetchval(
        "SELECT id FROM ledger_transactions WHERE invoice_id = $1", invoice_id
    )
    for sql in (
        "UPDATE ledger_postings SET amount = amount * 2 WHERE transaction_id = $1",
        "DELETE FROM ledger_postings WHERE transaction_id = $1",
        "UPDATE ledger_transactions SET memo = 'x' WHERE id = $1",
        "DELETE FROM ledger_transactions WHERE id = $1",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await app_pool.execute(sql, txn)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await app_pool.execute("TRUNCATE ledger_postings")


async def test_cancelling_voids_an_unpaid_invoice_with_a_reversing_posting(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    await give_fee(app_pool, tenant[Role.DOCTOR], fee=90_000)
    appointment_id = await book(app_pool, tenant[Role.DOCTOR], tenant[Role.PATIENT])
    invoice_id = await invoice_of(app_pool, appointment_id)
    resp = await client.post(
        f"/api/v1/appointments/{appointment_id}/cancel",
        json={"reason": "patient unwell"},
        headers=tenant[Role.RECEPTIONIST].headers,
    )
    assert resp.status == 200, await resp.text()
    assert await app_pool.fetchval("SELECT status FROM invoices WHERE id = $1", invoice_id) == (
        "void"
    )
    assert await postings(app_pool, invoice_id) == [
        ("invoice", "receivables", 90_000),
        ("invoice", "revenue", -90_000),
        ("void", "receivables", -90_000),
        ("void", "revenue", 90_000),
    ]
    reverses = await app_pool.fetchval(
        "SELECT v.reverses = i.id FROM ledger_transactions v JOIN ledger_transactions i "
        "ON i.invoice_id = v.invoice_id AND i.kind = 'invoice' "
        "WHERE v.invoice_id = $1 AND v.kind = 'void'",
        invoice_id,
    )
    assert reverses is True


async def test_the_runtime_role_may_only_read_and_add_to_the_ledger() -> None:
    """Least privilege (core/migrations.py): SELECT and INSERT on the ledger, nothing else;
    and the runtime role can still book (the invoice trigger runs with its rights)."""

    async with owner_and_runtime() as roles:
        owner = await asyncpg.connect(roles.owner_url)
        try:
            await migrate(owner, runtime_role=roles.runtime)
        finally:
            await owner.close()
        pool = await asyncpg.create_pool(roles.runtime_url, min_size=1, max_size=2)
        try:
            clinic = await accounts.insert_clinic(pool, name="Least", timezone="UTC")
            people = {}
            for role in (Role.DOCTOR, Role.PATIENT):
                user = await accounts.insert_user(
                    pool, clinic_id=clinic.id, email=f"{role.value}-{clinic.id.hex[:8]}@x.test",
                    password_hash="x", role=role, full_name=role.value, phone=None,
                )  # fmt: skip
                assert user is not None
                people[role] = user.id
            doctor = Account(people[Role.DOCTOR], clinic.id, Role.DOCTOR, "d")
            patient = Account(people[Role.PATIENT], clinic.id, Role.PATIENT, "p")
            await give_fee(pool, doctor)
            invoice_id = await invoice_of(pool, await book(pool, doctor, patient))
            txn = await pool.fetchval(
                "SELECT id FROM ledger_transactions WHERE invoice_id = $1", invoice_id
            )
            assert txn is not None
            for statement in (
                "UPDATE ledger_postings SET amount = 0 WHERE transaction_id = $1",
                "DELETE FROM ledger_transactions WHERE id = $1",
            ):
                with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                    await pool.execute(statement, txn)
        finally:
            await pool.close()
