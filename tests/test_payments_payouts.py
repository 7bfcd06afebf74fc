"""Refund payouts through the provider that took the payment (0023), end to end over
HTTP against the providers' simulators as contract stand-ins: MTN MoMo's Disbursement
refund, M-Pesa's Reversal (with its Transaction Status query), the card gateway's
refund, and cash from the till."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from teleconsult.core.identity import Role
from teleconsult.payments.routes import PAYMENTS
from teleconsult.payments.simulators.common import Behaviour
from tests.paymentskit import PayWorld, give_fee, key, world_fixtures
from tests.test_payments_api import new_invoice, start, until_final
from tests.world import Tenant, assert_problem, make_tenant

Client = TestClient[Any, Any]
PAYERS = {"momo": "256772123456", "mpesa": "254708374149", "card": None}


pw, pool = world_fixtures(Behaviour)


@pytest.fixture
async def clinic(pw: PayWorld, pool: asyncpg.Pool) -> Tenant:
    tenant = await make_tenant(pool, pw.client, name="Payouts")
    await give_fee(pool, tenant[Role.DOCTOR], fee=150_000, currency="KES")
    return tenant


async def paid(pw: PayWorld, pool: asyncpg.Pool, clinic: Tenant, provider: str) -> str:
    invoice_id = await new_invoice(pool, clinic)
    resp = await start(pw, clinic, invoice_id, provider, PAYERS[provider])
    assert resp.status == 201, await resp.text()
    payment_id = str((await resp.json())["id"])
    assert await until_final(pool, payment_id) == "succeeded"
    return payment_id


async def refund(
    pw: PayWorld, clinic: Tenant, payment_id: str, amount: int | None = 50_000,
    headers: dict[str, str] | None = None, **extra: str,
) -> Any:  # fmt: skip
    body: dict[str, Any] = {"reason": "consultation cut short", **extra}
    if amount is not None:
        body["amount"] = amount
    return await pw.client.post(
        f"/api/v1/payments/{payment_id}/refunds", json=body,
        headers=clinic[Role.RECEPTIONIST].headers | (headers or key()),
    )  # fmt: skip


async def payout_final(pool: asyncpg.Pool, refund_id: str, within: float = 20.0) -> str:
    """The refund's latest payout's status once it is final."""
    async with asyncio.timeout(within):
        while True:
            status = await pool.fetchval(
                "SELECT status FROM refund_payouts WHERE refund_id = $1 "
                "ORDER BY created_at DESC LIMIT 1",
                UUID(refund_id),
            )
            if status != "pending":
                return str(status)
            await asyncio.sleep(0.05)


async def balances(pw: PayWorld, clinic: Tenant) -> dict[str, int]:
    answer = await pw.client.get(
        "/api/v1/ledger/trial-balance", headers=clinic[Role.RECEPTIONIST].headers
    )
    body = await answer.json()
    assert body["totals"] == {"KES": 0}, body
    return {r["account"]: r["debit"] - r["credit"] for r in body["accounts"]}


def returned(pw: PayWorld, provider: str) -> list[tuple[str, int]]:
    """The simulator's own record of money sent back: (state, amount) per refund."""
    return [(t.state(), t.amount) for t in pw.sims.all()[provider].refunds.values()]


@pytest.mark.parametrize("provider", ["momo", "mpesa", "card"])
async def test_a_refund_is_paid_back_through_the_provider_that_took_the_payment(
    pw: PayWorld, pool: asyncpg.Pool, clinic: Tenant, provider: str
) -> None:
    payment_id = await paid(pw, pool, clinic, provider)
    resp = await refund(pw, clinic, payment_id)
    assert resp.status == 201, await resp.text()
    answer = await resp.json()
    assert answer["refunded"] == 50_000
    assert answer["refund"]["payout_method"] == provider
    assert answer["refund"]["payout_status"] in ("pending", "succeeded")
    assert await payout_final(pool, answer["refund"]["id"]) == "succeeded"
    assert returned(pw, provider) == [("succeeded", 50_000)]
    accounts = await balances(pw, clinic)
    assert accounts[f"clearing:{provider}"] == 100_000
    assert accounts["refunds"] == 50_000 and accounts["refunds_payable"] == 0
    invoice = await (
        await pw.client.get(
            f"/api/v1/invoices/{answer['invoice_id']}", headers=clinic[Role.PATIENT].headers
        )
    ).json()
    [shown] = invoice["refunds"]
    assert (shown["payout_status"], shown["payout_method"]) == ("succeeded", provider)
    assert shown["payout_reference"]
    owed = await pw.client.get("/api/v1/refunds/owed", headers=clinic[Role.RECEPTIONIST].headers)
    assert (await owed.json())["items"] == []


@pytest.mark.parametrize("provider", ["momo", "card"])
async def test_a_payout_whose_answer_was_lost_is_settled_by_the_reconciler(
    pw: PayWorld, pool: asyncpg.Pool, clinic: Tenant, provider: str
) -> None:
    payment_id = await paid(pw, pool, clinic, provider)
    sim = pw.sims.all()[provider]
    sim.behaviour.refund_answer_lost_rate = 1.0  # done at the provider, answered 500
    sim.behaviour.drop_rate = 1.0  # and its callback never comes
    resp = await refund(pw, clinic, payment_id)
    assert resp.status == 201, await resp.text()
    answer = (await resp.json())["refund"]
    assert answer["payout_status"] == "pending" and answer["payout_reference"] in (
        None, answer["payout_id"],
    )  # fmt: skip
    assert await payout_final(pool, answer["id"]) == "succeeded"
    assert returned(pw, provider) == [("succeeded", 50_000)]
    assert (await balances(pw, clinic))["refunds_payable"] == 0


async def test_a_lost_mpesa_reversal_result_is_asked_for_with_the_transaction_status_query(
    pw: PayWorld, pool: asyncpg.Pool, clinic: Tenant
) -> None:
    payment_id = await paid(pw, pool, clinic, "mpesa")
    sim = pw.sims.mpesa
    sim.behaviour.drop_rate = 1.0
    resp = await refund(pw, clinic, payment_id, amount=None)
    answer = (await resp.json())["refund"]
    async with asyncio.timeout(20):
        while True:
            if sim.callbacks_dropped >= 1:  # the reversal's result is lost
                break
            await asyncio.sleep(0.05)
    assert returned(pw, "mpesa") == [("succeeded", 150_000)]
    assert (await pool.fetchval(
        "SELECT status FROM refund_payouts WHERE refund_id = $1", UUID(answer["id"])
    )) == "pending"  # fmt: skip
    sim.behaviour.drop_rate = 0.0
    assert await payout_final(pool, answer["id"]) == "succeeded"
    accounts = await balances(pw, clinic)
    assert accounts["clearing:mpesa"] == 0 and accounts["refunds_payable"] == 0


async def test_a_forged_or_replayed_mpesa_result_changes_nothing(
    pw: PayWorld, pool: asyncpg.Pool, clinic: Tenant
) -> None:
    payment_id = await paid(pw, pool, clinic, "mpesa")
    pw.sims.mpesa.behaviour.refund_fail_rate = 1.0
    answer = (await (await refund(pw, clinic, payment_id)).json())["refund"]
    assert await payout_final(pool, answer["id"]) == "failed"
    before = await balances(pw, clinic)
    success = json.dumps({"Result": {
        "ResultType": 0, "ResultCode": 0, "ResultDesc": "ok",
        "OriginatorConversationID": "1-2-1", "ConversationID": answer["payout_reference"],
        "TransactionID": "FORGED0001"}}).encode()  # fmt: skip
    payout_id = answer["payout_id"]
    forged = await pw.client.post(
        f"/api/v1/webhooks/refunds/mpesa/{payout_id}/{'0' * 64}", data=success
    )
    await assert_problem(forged, 404, "not_found")
    # The right URL (as Daraja has it) with a result sent again: the payout is final.
    token = pw.client.app[PAYMENTS].payouts.result_url("mpesa", UUID(payout_id)).rsplit("/", 1)[1]
    replayed = await pw.client.post(
        f"/api/v1/webhooks/refunds/mpesa/{payout_id}/{token}", data=success
    )
    assert replayed.status == 200 and (await replayed.json())["result"] == "final"
    assert await balances(pw, clinic) == before
    assert before["refunds_payable"] == -50_000  # still owed to the patient
    refused = await pool.fetchval(
        "SELECT count(*) FROM (SELECT action FROM audit_intake UNION ALL "
        "SELECT action FROM audit_log) a WHERE action = 'payment.payout.callback.refused'"
    )
    assert refused >= 1


async def test_a_double_click_makes_one_payout(
    pw: PayWorld, pool: asyncpg.Pool, clinic: Tenant
) -> None:
    payment_id = await paid(pw, pool, clinic, "momo")
    same = key()
    first, second = await asyncio.gather(
        refund(pw, clinic, payment_id, headers=same), refund(pw, clinic, payment_id, headers=same)
    )
    assert {first.status, second.status} <= {201, 409}, (first.status, second.status)
    again = await refund(pw, clinic, payment_id, headers=same)
    assert again.status == 201 and again.headers["Idempotent-Replayed"] == "true"
    rows = await pool.fetch(
        "SELECT refund_id FROM refund_payouts WHERE payment_id = $1", UUID(payment_id)
    )
    assert len(rows) == 1
    assert await payout_final(pool, str(rows[0]["refund_id"])) == "succeeded"
    assert returned(pw, "momo") == [("succeeded", 50_000)]


async def test_a_failed_payout_stays_owed_and_a_retry_pays_it(
    pw: PayWorld, pool: asyncpg.Pool, clinic: Tenant
) -> None:
    desk = clinic[Role.RECEPTIONIST].headers
    payment_id = await paid(pw, pool, clinic, "card")
    pw.sims.card.behaviour.refund_fail_rate = 1.0
    answer = (await (await refund(pw, clinic, payment_id)).json())["refund"]
    assert await payout_final(pool, answer["id"]) == "failed"
    owed = await (await pw.client.get("/api/v1/refunds/owed", headers=desk)).json()
    assert [(r["id"], r["payout_status"]) for r in owed["items"]] == [(answer["id"], "failed")]
    assert (await balances(pw, clinic))["refunds_payable"] == -50_000
    pw.sims.card.behaviour.refund_fail_rate = 0.0
    retry = await pw.client.post(
        f"/api/v1/refunds/{answer['id']}/payouts", json={"method": "provider"}, headers=desk | key()
    )
    assert retry.status == 201, await retry.text()
    assert await payout_final(pool, answer["id"]) == "succeeded"
    assert sorted(returned(pw, "card")) == [("failed", 50_000), ("succeeded", 50_000)]
    accounts = await balances(pw, clinic)
    assert accounts["refunds_payable"] == 0 and accounts["clearing:card"] == 100_000
    # Paid out: another retry is refused and changes nothing.
    twice = await pw.client.post(
        f"/api/v1/refunds/{answer['id']}/payouts", json={"method": "cash"}, headers=desk | key()
    )
    await assert_problem(twice, 409, "payment_in_progress")
    assert (await balances(pw, clinic)) == accounts


async def test_a_failed_payout_can_be_paid_from_the_till(
    pw: PayWorld, pool: asyncpg.Pool, clinic: Tenant
) -> None:
    payment_id = await paid(pw, pool, clinic, "momo")
    pw.sims.momo.behaviour.refund_fail_rate = 1.0
    answer = (await (await refund(pw, clinic, payment_id)).json())["refund"]
    assert await payout_final(pool, answer["id"]) == "failed"
    cash = await pw.client.post(
        f"/api/v1/refunds/{answer['id']}/payouts", json={"method": "cash"},
        headers=clinic[Role.ADMIN].headers | key(),
    )  # fmt: skip
    assert cash.status == 201, await cash.text()
    body = await cash.json()
    assert (body["payout_status"], body["payout_method"]) == ("succeeded", "cash")
    accounts = await balances(pw, clinic)
    assert accounts["cash"] == -50_000 and accounts["refunds_payable"] == 0
    assert accounts["clearing:momo"] == 150_000


async def test_over_refunds_are_refused_and_change_nothing(
    pw: PayWorld, pool: asyncpg.Pool, clinic: Tenant
) -> None:
    payment_id = await paid(pw, pool, clinic, "momo")
    before = await balances(pw, clinic)
    too_much = await refund(pw, clinic, payment_id, amount=150_001)
    await assert_problem(too_much, 409, "not_payable")
    bad = await refund(pw, clinic, payment_id, payout="till")
    assert bad.status == 400
    assert await pool.fetchval(
        "SELECT count(*) FROM refund_payouts WHERE payment_id = $1", UUID(payment_id)
    ) == 0  # fmt: skip
    assert await balances(pw, clinic) == before
    assert returned(pw, "momo") == []


async def test_an_mpesa_refund_with_cents_is_refused_before_anything_is_saved(
    pw: PayWorld, pool: asyncpg.Pool, clinic: Tenant
) -> None:
    payment_id = await paid(pw, pool, clinic, "mpesa")
    cents = await refund(pw, clinic, payment_id, amount=50_050)
    await assert_problem(cents, 422, "provider_refused")
    assert await pool.fetchval(
        "SELECT refunded FROM payments WHERE id = $1", UUID(payment_id)
    ) == 0  # fmt: skip
    from_till = await refund(pw, clinic, payment_id, amount=50_050, payout="cash")
    assert from_till.status == 201, await from_till.text()
    assert (await from_till.json())["refund"]["payout_status"] == "succeeded"
    assert (await balances(pw, clinic))["cash"] == -50_050
