"""Payments follow-ups found by the payment pages (issue 15): refusals before anything is
saved, every failure while starting a payment leaving its invoice payable, the card
gateway's browser return, normalised failure reasons, refunds and appointment times on
invoices, and the front desk's date filter."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit
from uuid import UUID

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from teleconsult.core.identity import Role
from teleconsult.payments.providers.base import (
    REASONS,
    Callback,
    Initiated,
    Initiation,
    PaymentProvider,
    ProviderStatus,
)
from teleconsult.payments.providers.card import normalise as card_reason
from teleconsult.payments.providers.momo import normalise as momo_reason
from teleconsult.payments.providers.mpesa import state_of
from teleconsult.payments.routes import PAYMENTS
from teleconsult.payments.simulators.common import Behaviour
from teleconsult.server.app import SETTINGS
from tests.paymentskit import PayWorld, book, give_fee, invoice_of, key, world_fixtures
from tests.test_payments_api import start, until_final
from tests.world import Tenant, assert_problem, make_tenant

Client = TestClient[Any, Any]


pw, pool = world_fixtures(lambda: Behaviour(decide_after=0.05))


@pytest.fixture
async def clinic(pw: PayWorld, pool: asyncpg.Pool) -> Tenant:
    return await make_tenant(pool, pw.client, name="Follow")


async def invoice_for(pool: asyncpg.Pool, clinic: Tenant, fee: int, **kw: Any) -> UUID:
    await give_fee(pool, clinic[Role.DOCTOR], fee=fee, currency="KES")
    return await invoice_of(pool, await book(pool, clinic[Role.DOCTOR], clinic[Role.PATIENT], **kw))


async def payments_of(pool: asyncpg.Pool, invoice_id: UUID) -> list[tuple[str, str | None]]:
    rows = await pool.fetch(
        "SELECT status, failure_reason FROM payments WHERE invoice_id = $1 ORDER BY created_at",
        invoice_id,
    )
    return [(r["status"], r["failure_reason"]) for r in rows]


# --- 1. refusals before saving, and the general guard ---------------------------------


async def test_an_mpesa_amount_with_cents_is_refused_before_anything_is_saved(
    pw: PayWorld, pool: asyncpg.Pool, clinic: Tenant
) -> None:
    invoice_id = await invoice_for(pool, clinic, 150_050)  # 1,500.50 KES
    resp = await start(pw, clinic, invoice_id, "mpesa", "254708374149")
    problem = await assert_problem(resp, 422, "provider_refused")
    assert "whole" in problem["detail"]
    assert await payments_of(pool, invoice_id) == []
    assert pw.sims.mpesa.truth == {}
    # The invoice is payable at once by a provider that takes cents.
    again = await start(pw, clinic, invoice_id, "momo", "256772123456")
    assert again.status == 201, await again.text()


class Faulty:
    """A provider adapter with a bug: ``initiate`` raises, before or after the real
    provider got the request."""

    def __init__(self, real: PaymentProvider, *, after_sending: bool) -> None:
        self.real = real
        self.name = real.name
        self.after_sending = after_sending

    def reference_for(self, payment_id: UUID) -> str | None:
        return self.real.reference_for(payment_id)

    def check(self, request: Initiation) -> None:
        self.real.check(request)

    async def initiate(self, request: Initiation) -> Initiated:
        if self.after_sending:
            await self.real.initiate(request)
        raise RuntimeError("a bug in the adapter")

    async def query(self, reference: str) -> ProviderStatus:
        return await self.real.query(reference)

    def parse_callback(self, headers: Mapping[str, str], body: bytes) -> Callback:
        return self.real.parse_callback(headers, body)


def break_provider(pw: PayWorld, name: str, *, after_sending: bool) -> Callable[[], None]:
    providers = pw.client.app[PAYMENTS]._providers
    real = providers[name]
    providers[name] = Faulty(real, after_sending=after_sending)

    def mend() -> None:
        providers[name] = real

    return mend


@pytest.mark.parametrize(
    ("provider", "payer"), [("mpesa", "254708374149"), ("momo", "256772123456"), ("card", None)]
)
async def test_a_failure_while_starting_leaves_the_invoice_payable(
    pw: PayWorld, pool: asyncpg.Pool, clinic: Tenant, provider: str, payer: str | None
) -> None:
    invoice_id = await invoice_for(pool, clinic, 150_000)
    mend = break_provider(pw, provider, after_sending=False)
    resp = await start(pw, clinic, invoice_id, provider, payer)
    await assert_problem(resp, 503, "provider_unavailable")
    # M-Pesa never named a reference; MoMo and card do not know ours: failed at once.
    assert await payments_of(pool, invoice_id) == [("failed", "initiation_error")]
    mend()
    again = await start(pw, clinic, invoice_id, provider, payer)
    assert again.status == 201, await again.text()
    assert await until_final(pool, (await again.json())["id"]) == "succeeded"


async def test_a_failure_after_the_provider_took_the_payment_leaves_it_to_the_reconciler(
    pw: PayWorld, pool: asyncpg.Pool, clinic: Tenant
) -> None:
    invoice_id = await invoice_for(pool, clinic, 150_000)
    pw.sims.momo.behaviour.decide_after = 1.0  # still pending when we ask at once
    break_provider(pw, "momo", after_sending=True)
    resp = await start(pw, clinic, invoice_id, "momo", "256772123456")
    await assert_problem(resp, 503, "provider_unavailable")
    # The payer may be approving it right now: not failed, and credited once paid.
    payment_id = await pool.fetchval("SELECT id FROM payments WHERE invoice_id = $1", invoice_id)
    assert await until_final(pool, str(payment_id)) == "succeeded"
    assert [t.state() for t in pw.sims.momo.truth.values()] == ["succeeded"]


# --- 2. the card gateway's browser return ---------------------------------------------


async def test_the_card_gateway_returns_the_browser_to_the_pay_page(
    pw: PayWorld, pool: asyncpg.Pool, clinic: Tenant
) -> None:
    invoice_id = await invoice_for(pool, clinic, 150_000)
    resp = await start(pw, clinic, invoice_id, "card", "grace@example.org")
    assert resp.status == 201, await resp.text()
    payment = await resp.json()
    public = pw.client.app[SETTINGS].public_url.rstrip("/")
    back = f"{public}/pay.html?payment={payment['id']}"
    txn = pw.sims.card.truth[payment["provider_reference"]]
    assert txn.extra["callback_url"] == back  # Paystack's callback_url: the browser's way
    assert txn.callback_url == pw.sims.card.webhook_url  # webhooks: the dashboard's URL
    assert "/api/v1/webhooks/" not in back
    async with pw.client.session.post(payment["redirect_url"], allow_redirects=False) as out:
        assert out.status == 302
        location = urlsplit(out.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == f"{public}/pay.html"
    assert parse_qs(location.query) == {
        "payment": [payment["id"]],
        "trxref": [payment["provider_reference"]],
        "reference": [payment["provider_reference"]],
    }
    assert await until_final(pool, payment["id"]) == "succeeded"


# --- 3. normalised failure reasons ----------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "reason", "raw"),
    [
        ("fail_rate", "cancelled_by_user", "APPROVAL_REJECTED"),
        ("timeout_rate", "timeout", "EXPIRED"),
    ],
)
async def test_momo_failure_reasons_are_normalised_and_the_raw_one_kept(
    pw: PayWorld, pool: asyncpg.Pool, clinic: Tenant, rate: str, reason: str, raw: str
) -> None:
    setattr(pw.sims.momo.behaviour, rate, 1.0)
    invoice_id = await invoice_for(pool, clinic, 150_000)
    payment = await (await start(pw, clinic, invoice_id, "momo", "256772123456")).json()
    assert await until_final(pool, payment["id"]) == "failed"
    read = await pw.client.get(
        f"/api/v1/payments/{payment['id']}", headers=clinic[Role.PATIENT].headers
    )
    assert (await read.json())["failure_reason"] == reason
    kept = await pool.fetchval(
        "SELECT detail->>'provider_reason' FROM (SELECT action, object_id, detail FROM "
        "audit_intake UNION ALL SELECT action, object_id, detail FROM audit_log) a "
        "WHERE action = 'payment.failed' AND object_id = $1",
        payment["id"],
    )
    assert kept == raw


def test_every_adapter_speaks_the_same_reasons() -> None:
    momo = {momo_reason("failed", raw) for raw in ("APPROVAL_REJECTED", "EXPIRED",
            "NOT_ENOUGH_FUNDS", "PAYER_NOT_FOUND", "SOMETHING_NEW", None)}  # fmt: skip
    mpesa = {state_of(code)[1] for code in (1, 1032, 1037, 2001, 1019, 4242)}
    card = {card_reason("failed", status, text) for status, text in (
        ("failed", "Declined"), ("failed", "Insufficient Funds"), ("reversed", ""),
        ("failed", "Incorrect PIN"), ("failed", "Transaction timed out"))}  # fmt: skip
    assert momo | mpesa | card <= REASONS
    assert {"cancelled_by_user", "timeout", "insufficient_funds"} <= momo & mpesa
    assert momo_reason("succeeded", None) is None and card_reason("pending", "ongoing", "") is None


# --- 4. refunds, appointment times and the date filter --------------------------------


async def test_an_invoice_lists_its_refunds_and_its_appointments_start(
    pw: PayWorld, pool: asyncpg.Pool, clinic: Tenant
) -> None:
    desk = clinic[Role.RECEPTIONIST]
    starts = datetime(2031, 3, 4, 9, 30, tzinfo=UTC)
    invoice_id = await invoice_for(pool, clinic, 150_000, starts_at=starts)
    cash = await (
        await pw.client.post(f"/api/v1/invoices/{invoice_id}/cash", headers=desk.headers | key())
    ).json()
    for amount, reason in ((50_000, "seen late"), (20_000, "short call")):
        resp = await pw.client.post(
            f"/api/v1/payments/{cash['id']}/refunds", json={"amount": amount, "reason": reason},
            headers=desk.headers | key(),
        )  # fmt: skip
        assert resp.status == 201, await resp.text()
    for who in (desk, clinic[Role.PATIENT]):
        invoice = await (
            await pw.client.get(f"/api/v1/invoices/{invoice_id}", headers=who.headers)
        ).json()
        assert datetime.fromisoformat(invoice["appointment_starts_at"]) == starts
        got = [(r["amount"], r["reason"], r["by"], r["payment_id"], r["currency"])
               for r in invoice["refunds"]]  # fmt: skip
        assert got == [
            (50_000, "seen late", str(desk.user_id), cash["id"], "KES"),
            (20_000, "short call", str(desk.user_id), cash["id"], "KES"),
        ]
        assert all(r["by_name"] and r["created_at"] for r in invoice["refunds"])
    # An invoice without refunds says so with an empty list.
    other = await invoice_for(pool, clinic, 150_000)
    fresh = await (await pw.client.get(f"/api/v1/invoices/{other}", headers=desk.headers)).json()
    assert fresh["refunds"] == []


async def test_the_front_desk_lists_the_invoices_of_a_day(
    pw: PayWorld, pool: asyncpg.Pool, clinic: Tenant
) -> None:
    day = datetime(2031, 5, 6, tzinfo=UTC)
    inside = await invoice_for(pool, clinic, 150_000, starts_at=day + timedelta(hours=10))
    await invoice_for(pool, clinic, 150_000, starts_at=day - timedelta(hours=1))
    await invoice_for(pool, clinic, 150_000, starts_at=day + timedelta(days=1))
    other = await make_tenant(pool, pw.client, name="Elsewhere")
    await give_fee(pool, other[Role.DOCTOR], fee=150_000, currency="KES")
    await book(pool, other[Role.DOCTOR], other[Role.PATIENT], starts_at=day + timedelta(hours=11))
    window = {
        "starts_from": day.isoformat(),
        "starts_before": (day + timedelta(days=1)).isoformat(),
    }
    for who in (clinic[Role.RECEPTIONIST], clinic[Role.PATIENT]):
        resp = await pw.client.get("/api/v1/invoices", params=window, headers=who.headers)
        assert resp.status == 200, await resp.text()
        assert [i["id"] for i in (await resp.json())["items"]] == [str(inside)]
    every = await pw.client.get("/api/v1/invoices", headers=clinic[Role.RECEPTIONIST].headers)
    assert len((await every.json())["items"]) == 3
    backwards = await pw.client.get(
        "/api/v1/invoices",
        params={"starts_from": window["starts_before"], "starts_before": window["starts_from"]},
        headers=clinic[Role.RECEPTIONIST].headers,
    )
    await assert_problem(backwards, 400, "validation_failed")
