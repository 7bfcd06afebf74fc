"""Paying invoices through the providers' simulators, end to end over HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from teleconsult.core.identity import Role
from teleconsult.payments.providers.card import SIGNATURE_HEADER, sign
from teleconsult.payments.simulators.common import Behaviour
from teleconsult.server.app import POOL
from tests.paymentskit import PayWorld, book, give_fee, invoice_of, key, pay_world, world_fixtures
from tests.world import Tenant, assert_problem, make_tenant

Client = TestClient[Any, Any]
WEBHOOK = "/api/v1/webhooks/payments/{}"


pw, pool = world_fixtures(lambda: Behaviour(decide_after=0.05))


@pytest.fixture
async def clinic(pw: PayWorld, pool: asyncpg.Pool) -> Tenant:
    tenant = await make_tenant(pool, pw.client, name="Pay")
    await give_fee(pool, tenant[Role.DOCTOR], fee=150_000, currency="KES")
    return tenant


async def new_invoice(pool: asyncpg.Pool, clinic: Tenant) -> UUID:
    return await invoice_of(pool, await book(pool, clinic[Role.DOCTOR], clinic[Role.PATIENT]))


async def start(
    pw: PayWorld, clinic: Tenant, invoice_id: UUID, provider: str, payer: str | None = None,
    *, headers: dict[str, str] | None = None,
) -> aiohttp.ClientResponse:  # fmt: skip
    body: dict[str, str] = {"provider": provider}
    if payer:
        body["payer"] = payer
    return await pw.client.post(
        f"/api/v1/invoices/{invoice_id}/payments",
        json=body,
        headers=clinic[Role.PATIENT].headers | (headers or key()),
    )


async def until_final(pool: asyncpg.Pool, payment_id: str, within: float = 20.0) -> str:
    async with asyncio.timeout(within):
        while True:
            status = await status_of(pool, payment_id)
            if status != "pending":
                return str(status)
            await asyncio.sleep(0.05)


async def status_of(pool: asyncpg.Pool, payment_id: str) -> str:
    return str(await pool.fetchval("SELECT status FROM payments WHERE id = $1", UUID(payment_id)))


async def pending_card_payment(
    pw: PayWorld, pool: asyncpg.Pool, clinic: Tenant
) -> tuple[UUID, dict[str, Any]]:
    """A card payment started on a new invoice; the payer answers long after the test."""
    pw.sims.card.behaviour.decide_after = 30
    invoice_id = await new_invoice(pool, clinic)
    return invoice_id, await (await start(pw, clinic, invoice_id, "card")).json()


def charge_success(reference: str, amount: int = 150_000, txn_id: int = 1) -> bytes:
    """A Paystack ``charge.success`` webhook body (unsigned)."""
    return json.dumps({"event": "charge.success", "data": {
        "status": "success", "reference": reference, "amount": amount,
        "currency": "KES", "id": txn_id}}).encode()  # fmt: skip


async def credits(pool: asyncpg.Pool, invoice_id: UUID) -> list[tuple[str, int]]:
    rows = await pool.fetch(
        "SELECT p.account, p.amount FROM ledger_postings p JOIN ledger_transactions t "
        "ON t.id = p.transaction_id WHERE t.invoice_id = $1 AND t.kind = 'payment' ORDER BY p.id",
        invoice_id,
    )
    return [(r["account"], r["amount"]) for r in rows]


@pytest.mark.parametrize(
    ("provider", "payer"), [("momo", "256772123456"), ("mpesa", "254708374149"), ("card", None)]
)
async def test_a_payment_succeeds_once_and_credits_the_providers_clearing_account(
    pw: PayWorld, pool: asyncpg.Pool, clinic: Tenant, provider: str, payer: str | None
) -> None:
    invoice_id = await new_invoice(pool, clinic)
    resp = await start(pw, clinic, invoice_id, provider, payer)
    assert resp.status == 201, await resp.text()
    payment = await resp.json()
    assert payment["status"] == "pending" and payment["amount"] == 150_000
    if provider == "card":
        assert payment["redirect_url"].startswith(pw.sim_url)
    assert await until_final(pool, payment["id"]) == "succeeded"
    invoice = await pw.client.get(
        f"/api/v1/invoices/{invoice_id}", headers=clinic[Role.PATIENT].headers
    )
    body = await invoice.json()
    assert (body["status"], body["paid"], body["outstanding"]) == ("paid", 150_000, 0)
    assert await credits(pool, invoice_id) == [
        (f"clearing:{provider}", 150_000),
        ("receivables", -150_000),
    ]
    sim = pw.sims.all()[provider]
    assert [t.state() for t in sim.truth.values()] == ["succeeded"]


async def test_a_declined_mpesa_payment_fails_and_moves_no_money(
    pw: PayWorld, pool: asyncpg.Pool, clinic: Tenant
) -> None:
    pw.sims.mpesa.behaviour.fail_rate = 1.0
    invoice_id = await new_invoice(pool, clinic)
    resp = await start(pw, clinic, invoice_id, "mpesa", "254708374149")
    payment = await resp.json()
    assert await until_final(pool, payment["id"]) == "failed"
    row = await pool.fetchrow("SELECT failure_reason FROM payments WHERE id = $1",
                              UUID(payment["id"]))  # fmt: skip
    assert row is not None and row["failure_reason"] in (
        "insufficient_funds", "cancelled_by_user", "wrong_pin",
    )  # fmt: skip
    assert await credits(pool, invoice_id) == []
    # The invoice is open again: a second attempt may begin.
    pw.sims.mpesa.behaviour.fail_rate = 0.0
    again = await start(pw, clinic, invoice_id, "mpesa", "254708374149")
    assert again.status == 201, await again.text()


async def test_a_second_payment_while_one_is_under_way_is_refused(
    pw: PayWorld, pool: asyncpg.Pool, clinic: Tenant
) -> None:
    pw.sims.momo.behaviour.decide_after = 30
    invoice_id = await new_invoice(pool, clinic)
    first = await start(pw, clinic, invoice_id, "momo", "256772123456")
    assert first.status == 201
    second = await start(pw, clinic, invoice_id, "card")
    await assert_problem(second, 409, "payment_in_progress")


async def test_a_forged_unsigned_success_moves_no_money(
    pw: PayWorld, pool: asyncpg.Pool, clinic: Tenant
) -> None:
    """A MoMo callback claiming success is only a hint: the status query says FAILED."""
    pw.sims.momo.behaviour.fail_rate = 1.0
    pw.sims.momo.behaviour.decide_after = 0.0
    pw.sims.momo.behaviour.drop_rate = 1.0
    invoice_id = await new_invoice(pool, clinic)
    payment = await (await start(pw, clinic, invoice_id, "momo", "256772123456")).json()
    forged = {
        "amount": "1500.00", "currency": "KES", "externalId": payment["id"],
        "payer": {"partyIdType": "MSISDN", "partyId": "256772123456"}, "status": "SUCCESSFUL",
        "financialTransactionId": "123",
    }  # fmt: skip
    resp = await pw.client.put(WEBHOOK.format("momo"), json=forged)
    assert resp.status == 200, await resp.text()
    assert await until_final(pool, payment["id"]) == "failed"
    assert await credits(pool, invoice_id) == []


async def test_card_webhooks_are_verified_with_either_secret_during_rotation(
    aiohttp_client: Callable[..., Awaitable[Client]], database_url: str, tmp_path: Path
) -> None:
    behaviour = Behaviour(decide_after=0.05)
    old = "sk_test_" + "o" * 40
    async for pw in pay_world(
        aiohttp_client, database_url, tmp_path, behaviour, PAYMENTS_CARD_PREVIOUS_SECRET_KEY=old
    ):
        pool = pw.client.app[POOL]
        clinic = await make_tenant(pool, pw.client, name="Rotate")
        await give_fee(pool, clinic[Role.DOCTOR], fee=5_000, currency="NGN")
        pw.sims.card.signing_key = old  # webhooks still signed with the old key
        invoice_id = await new_invoice(pool, clinic)
        payment = await (await start(pw, clinic, invoice_id, "card")).json()
        assert await until_final(pool, payment["id"]) == "succeeded"
        assert pw.sims.card.callbacks_sent >= 1


async def test_a_badly_signed_webhook_is_refused_and_audited(
    pw: PayWorld, pool: asyncpg.Pool, clinic: Tenant
) -> None:
    _, payment = await pending_card_payment(pw, pool, clinic)
    body = charge_success(payment["provider_reference"])
    for signature in (sign("sk_test_" + "x" * 40, body), "", "zz"):
        resp = await pw.client.post(
            WEBHOOK.format("card"), data=body,
            headers={"Content-Type": "application/json", SIGNATURE_HEADER: signature},
        )  # fmt: skip
        await assert_problem(resp, 401, "bad_webhook_signature")
    assert await status_of(pool, payment["id"]) == "pending"
    refused = await pool.fetchval(
        "SELECT count(*) FROM (SELECT action FROM audit_intake UNION ALL "
        "SELECT action FROM audit_log) a WHERE action = 'payment.callback.refused'"
    )
    assert refused >= 3


async def test_signed_webhook_with_wrong_amount_or_unknown_reference_changes_nothing(
    pw: PayWorld, pool: asyncpg.Pool, clinic: Tenant
) -> None:
    _, payment = await pending_card_payment(pw, pool, clinic)
    secret = pw.sims.card.secret_key
    for reference, amount in ((payment["provider_reference"], 1), ("tc_nobody", 150_000)):
        body = charge_success(reference, amount)
        resp = await pw.client.post(
            WEBHOOK.format("card"), data=body,
            headers={"Content-Type": "application/json", SIGNATURE_HEADER: sign(secret, body)},
        )  # fmt: skip
        assert (await resp.json())["result"] == "ignored"
    assert await status_of(pool, payment["id"]) == "pending"
    ignored = await pool.fetch(
        "SELECT detail->>'reason' AS why FROM (SELECT action, detail FROM audit_intake "
        "UNION ALL SELECT action, detail FROM audit_log) a "
        "WHERE action = 'payment.callback.ignored' AND detail->>'reference' IN ($1, 'tc_nobody')",
        payment["provider_reference"],
    )
    assert sorted(r["why"] for r in ignored) == ["amount_mismatch", "unknown_reference"]


async def test_duplicated_signed_webhooks_credit_once(
    pw: PayWorld, pool: asyncpg.Pool, clinic: Tenant
) -> None:
    invoice_id, payment = await pending_card_payment(pw, pool, clinic)
    body = charge_success(payment["provider_reference"], txn_id=7)
    headers = {"Content-Type": "application/json",
               SIGNATURE_HEADER: sign(pw.sims.card.secret_key, body)}  # fmt: skip
    answers = await asyncio.gather(
        *(pw.client.post(WEBHOOK.format("card"), data=body, headers=headers) for _ in range(6))
    )
    results = sorted([(await a.json())["result"] for a in answers])
    assert results.count("applied") == 1, results
    assert await credits(pool, invoice_id) == [
        ("clearing:card", 150_000),
        ("receivables", -150_000),
    ]


async def test_dropped_callbacks_are_made_good_by_the_reconciler(
    pw: PayWorld, pool: asyncpg.Pool, clinic: Tenant
) -> None:
    for sim in pw.sims.all().values():
        sim.behaviour.drop_rate = 1.0
    invoice_id = await new_invoice(pool, clinic)
    payment = await (await start(pw, clinic, invoice_id, "mpesa", "0708374149")).json()
    assert await until_final(pool, payment["id"]) == "succeeded"
    assert pw.sims.mpesa.callbacks_sent == 0
    assert await pool.fetchval("SELECT polls FROM payments WHERE id = $1",
                               UUID(payment["id"])) >= 1  # fmt: skip


async def test_idempotency_keys_replay_refuse_reuse_and_require_a_key(
    pw: PayWorld, pool: asyncpg.Pool, clinic: Tenant
) -> None:
    pw.sims.momo.behaviour.decide_after = 30  # stays pending throughout
    invoice_id = await new_invoice(pool, clinic)
    headers = key()
    first = await start(pw, clinic, invoice_id, "momo", "256772123456", headers=headers)
    again = await start(pw, clinic, invoice_id, "momo", "256772123456", headers=headers)
    assert (first.status, again.status) == (201, 201)
    assert await first.json() == await again.json()
    assert again.headers.get("Idempotent-Replayed") == "true"
    other = await start(pw, clinic, invoice_id, "momo", "256772999999", headers=headers)
    await assert_problem(other, 422, "idempotency_key_reused")
    resp = await pw.client.post(
        f"/api/v1/invoices/{invoice_id}/payments", json={"provider": "momo"},
        headers=clinic[Role.PATIENT].headers,
    )  # fmt: skip
    await assert_problem(resp, 400, "idempotency_key_required")
    # An error after execution began is stored and replayed too.
    late = key()
    refused = await start(pw, clinic, invoice_id, "card", headers=late)
    await assert_problem(refused, 409, "payment_in_progress")
    replayed = await start(pw, clinic, invoice_id, "card", headers=late)
    await assert_problem(replayed, 409, "payment_in_progress")
    assert replayed.headers.get("Idempotent-Replayed") == "true"
    assert await pool.fetchval("SELECT count(*) FROM payments WHERE invoice_id = $1",
                               invoice_id) == 1  # fmt: skip


async def test_concurrent_duplicates_run_once(
    pw: PayWorld, pool: asyncpg.Pool, clinic: Tenant
) -> None:
    pw.sims.momo.behaviour.api_slow_rate = 1.0
    pw.sims.momo.behaviour.api_slow_seconds = 0.5
    invoice_id = await new_invoice(pool, clinic)
    headers = key()
    answers = await asyncio.gather(
        *(start(pw, clinic, invoice_id, "momo", "256772123456", headers=headers) for _ in range(5))
    )
    statuses = sorted(a.status for a in answers)
    assert statuses.count(201) >= 1 and set(statuses) <= {201, 409}, statuses
    for a in answers:
        if a.status == 409:
            assert (await a.json())["code"] == "idempotency_key_in_flight"
    assert await pool.fetchval("SELECT count(*) FROM payments WHERE invoice_id = $1",
                               invoice_id) == 1  # fmt: skip


async def test_cash_refunds_and_waivers_post_to_the_ledger(
    pw: PayWorld, pool: asyncpg.Pool, clinic: Tenant
) -> None:
    desk = clinic[Role.RECEPTIONIST].headers
    invoice_id = await new_invoice(pool, clinic)
    cash = await pw.client.post(f"/api/v1/invoices/{invoice_id}/cash", headers=desk | key())
    assert cash.status == 201, await cash.text()
    payment = await cash.json()
    assert payment["status"] == "succeeded" and payment["provider"] == "cash"
    part = await pw.client.post(
        f"/api/v1/payments/{payment['id']}/refunds", json={"amount": 50_000, "reason": "late"},
        headers=desk | key(),
    )  # fmt: skip
    assert part.status == 201, await part.text()
    invoice = await (await pw.client.get(f"/api/v1/invoices/{invoice_id}", headers=desk)).json()
    assert (invoice["status"], invoice["refunded"]) == ("partially_refunded", 50_000)
    too_much = await pw.client.post(
        f"/api/v1/payments/{payment['id']}/refunds", json={"amount": 100_001, "reason": "x"},
        headers=desk | key(),
    )  # fmt: skip
    await assert_problem(too_much, 409, "not_payable")
    rest = await pw.client.post(
        f"/api/v1/payments/{payment['id']}/refunds", json={"reason": "cancelled"},
        headers=desk | key(),
    )  # fmt: skip
    assert rest.status == 201 and (await rest.json())["refunded"] == 150_000
    refunds = await pool.fetch(
        "SELECT t.reverses = c.id AS linked, p.account, p.amount FROM ledger_transactions t "
        "JOIN ledger_postings p ON p.transaction_id = t.id "
        "JOIN ledger_transactions c ON c.payment_id = t.payment_id AND c.kind = 'payment' "
        "WHERE t.invoice_id = $1 AND t.kind = 'refund' ORDER BY p.id",
        invoice_id,
    )
    assert [(r["linked"], r["account"], r["amount"]) for r in refunds] == [
        (True, "refunds", 50_000), (True, "refunds_payable", -50_000),
        (True, "refunds", 100_000), (True, "refunds_payable", -100_000),
    ]  # fmt: skip
    # A cash payment's refund is paid from the till at once (payouts, 0023).
    payouts = await pool.fetch(
        "SELECT p.account, p.amount FROM ledger_transactions t JOIN ledger_postings p "
        "ON p.transaction_id = t.id WHERE t.invoice_id = $1 AND t.kind = 'payout' ORDER BY p.id",
        invoice_id,
    )
    assert [(r["account"], r["amount"]) for r in payouts] == [
        ("refunds_payable", 50_000), ("cash", -50_000),
        ("refunds_payable", 100_000), ("cash", -100_000),
    ]  # fmt: skip
    waived_id = await new_invoice(pool, clinic)
    waived = await pw.client.post(
        f"/api/v1/invoices/{waived_id}/waiver", json={"reason": "hardship"}, headers=desk | key()
    )
    assert waived.status == 200, await waived.text()
    assert (await waived.json())["status"] == "paid"
    balance = await (await pw.client.get("/api/v1/ledger/trial-balance", headers=desk)).json()
    assert balance["totals"] == {"KES": 0}
    accounts = {r["account"]: r["debit"] - r["credit"] for r in balance["accounts"]}
    assert accounts["fees_waived"] == 150_000 and accounts["refunds"] == 150_000


async def test_pay_before_gate_names_what_to_pay(
    pw: PayWorld, pool: asyncpg.Pool, clinic: Tenant
) -> None:
    from teleconsult.core.errors import PaymentRequired
    from teleconsult.payments.routes import PAYMENTS

    service = pw.client.app[PAYMENTS]
    put = await pw.client.put(
        "/api/v1/payment-settings", json={"gate": "pay_before"}, headers=clinic[Role.ADMIN].headers
    )
    assert put.status == 200, await put.text()
    appointment_id = await book(pool, clinic[Role.DOCTOR], clinic[Role.PATIENT])
    invoice_id = await invoice_of(pool, appointment_id)
    with pytest.raises(PaymentRequired) as refused:
        await service.ensure_paid(appointment_id, clinic.clinic_id)
    named = {f.field: f.message for f in refused.value.fields}
    assert named == {"invoice_id": str(invoice_id), "amount": "150000", "currency": "KES"}
    waived = await pw.client.post(
        f"/api/v1/invoices/{invoice_id}/waiver", json={"reason": "free clinic day"},
        headers=clinic[Role.RECEPTIONIST].headers | key(),
    )  # fmt: skip
    assert waived.status == 200
    await service.ensure_paid(appointment_id, clinic.clinic_id)  # open now


async def test_reconciliation_report_matches_the_provider(
    pw: PayWorld, pool: asyncpg.Pool, clinic: Tenant
) -> None:
    pw.sims.card.behaviour.fail_rate = 0.5
    pw.sims.card.behaviour.seed = 3
    ids = []
    for _ in range(4):
        invoice_id = await new_invoice(pool, clinic)
        ids.append((await (await start(pw, clinic, invoice_id, "card")).json())["id"])
    for payment_id in ids:
        await until_final(pool, payment_id)
    resp = await pw.client.get(
        "/api/v1/ledger/reconciliation", params={"provider": "card", "verify": "true"},
        headers=clinic[Role.ADMIN].headers,
    )  # fmt: skip
    assert resp.status == 200, await resp.text()
    report = await resp.json()
    assert report["mismatches"] == 0 and report["pending"] == 0
    truth = pw.sims.card.final_states()
    assert report["succeeded_count"] == sum(s == "succeeded" for s in truth.values())
    assert report["ledger_clearing"].get("KES", 0) == 150_000 * report["succeeded_count"]


async def test_a_request_we_gave_up_on_that_lands_late_is_still_credited(
    aiohttp_client: Callable[..., Awaitable[Client]], database_url: str, tmp_path: Path
) -> None:
    """MoMo processes requesttopay but answers after our timeout: the payment stays
    pending (we chose its reference) and the reconciler finds it succeeded."""
    behaviour = Behaviour(decide_after=0.05, api_slow_rate=1.0, api_slow_seconds=1.5)
    async for pw in pay_world(
        aiohttp_client, database_url, tmp_path, behaviour, PAYMENTS_REQUEST_TIMEOUT="0.5"
    ):
        pool = pw.client.app[POOL]
        clinic = await make_tenant(pool, pw.client, name="Late")
        await give_fee(pool, clinic[Role.DOCTOR], fee=5_000, currency="XOF")
        invoice_id = await new_invoice(pool, clinic)
        pw.sims.momo.behaviour.api_slow_rate = 1.0
        resp = await start(pw, clinic, invoice_id, "momo", "22990000001")
        assert resp.status == 201, await resp.text()
        payment = await resp.json()
        assert payment["status"] == "pending"
        pw.sims.momo.behaviour.api_slow_rate = 0.0  # status queries answer at once
        assert await until_final(pool, payment["id"]) == "succeeded"


async def test_a_payment_the_provider_does_not_know_stays_pending_until_it_expires(
    pw: PayWorld, pool: asyncpg.Pool, clinic: Tenant
) -> None:
    """A 404 from MoMo's status query is not a failure while a request we gave up on
    might still land; at expiry the payment fails, confirmed once more."""
    from teleconsult.payments.routes import PAYMENTS
    from teleconsult.payments.store import get_payment

    pw.sims.momo.behaviour.api_error_rate = 1.0  # requesttopay answers 500, creates nothing
    invoice_id = await new_invoice(pool, clinic)
    resp = await start(pw, clinic, invoice_id, "momo", "256772123456")
    assert resp.status == 201, await resp.text()
    payment_id = UUID((await resp.json())["id"])
    pw.sims.momo.behaviour.api_error_rate = 0.0
    async with asyncio.timeout(20):
        while True:  # the reconciler asks, MoMo answers 404, several times
            row = await pool.fetchrow("SELECT status, polls FROM payments WHERE id = $1",
                                      payment_id)  # fmt: skip
            assert row is not None and row["status"] == "pending"
            if row["polls"] >= 3:
                break
            await asyncio.sleep(0.05)
    payment = await get_payment(pool, payment_id)
    assert payment is not None
    expired = await pw.client.app[PAYMENTS].expire(payment)
    assert expired is not None and (expired.status, expired.failure_reason) == ("failed", "expired")
    assert await credits(pool, invoice_id) == []
