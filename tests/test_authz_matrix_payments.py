"""Payment routes, called by every role, against a written policy (docs/policy.md).

Beside ``tests/test_authz_matrix.py`` (helpers, route coverage). Written by hand; it
does not import ``teleconsult.core.policy``. A patient sees and pays only their own
invoices; the front desk and admins see their clinic's, and only they take cash,
refund and waive; doctors and nurses see no bills. The server runs with the
providers' simulators (payments stay pending: the payer never answers here).

Target kinds of invoice and payment routes: the patient caller's own (for staff, the
clinic's first patient's), the clinic's other patient's, the other clinic's.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from teleconsult.core.identity import Role
from teleconsult.payments.simulators.common import Behaviour
from tests.paymentskit import book, give_fee, invoice_of, key, pay_world
from tests.test_authz_matrix import (
    NO_ID,
    PATIENT_OBJECT,
    A,
    F,
    N,
    Prepared,
    Rule,
    Target,
    World,
    assert_malformed_ids_not_found,
    assert_route_follows_policy,
    read,
    row,
)
from tests.world import Account, Tenant

Client = TestClient[Any, Any]
INVOICE = "/api/v1/invoices/{invoice_id}"
PAYMENT = "/api/v1/payments/{payment_id}"
DESK = (A, A, N)
NONE = (F, F, F)

# Columns: patient, doctor, nurse, receptionist, admin; inside each one answer per
# target (own / same clinic other patient / other clinic) or (no id).
# fmt: off
PAYMENTS: dict[str, Rule] = {
    #   patient       doctor        nurse         reception.    admin
    "listInvoices": row("GET /api/v1/invoices", NO_ID,
        (A,),         (F,),         (F,),         (A,),         (A,)),
    "getInvoice": row(f"GET {INVOICE}", PATIENT_OBJECT,
        (A, N, N),    NONE,         NONE,         DESK,         DESK),
    "getAppointmentInvoice": row("GET /api/v1/appointments/{appointment_id}/invoice",
        PATIENT_OBJECT,
        (A, N, N),    NONE,         NONE,         DESK,         DESK),
    "startPayment": row(f"POST {INVOICE}/payments", PATIENT_OBJECT,
        (A, N, N),    NONE,         NONE,         DESK,         DESK),
    "takeCash": row(f"POST {INVOICE}/cash", PATIENT_OBJECT,
        NONE,         NONE,         NONE,         DESK,         DESK),
    "waiveFee": row(f"POST {INVOICE}/waiver", PATIENT_OBJECT,
        NONE,         NONE,         NONE,         DESK,         DESK),
    "getPayment": row(f"GET {PAYMENT}", PATIENT_OBJECT,
        (A, N, N),    NONE,         NONE,         DESK,         DESK),
    "refundPayment": row(f"POST {PAYMENT}/refunds", PATIENT_OBJECT,
        NONE,         NONE,         NONE,         DESK,         DESK),
    "retryRefundPayout": row("POST /api/v1/refunds/{refund_id}/payouts", PATIENT_OBJECT,
        NONE,         NONE,         NONE,         DESK,         DESK),
    "listOwedRefunds": row("GET /api/v1/refunds/owed", NO_ID,
        (F,),         (F,),         (F,),         (A,),         (A,)),
    "getPaymentSettings": row("GET /api/v1/payment-settings", NO_ID,
        (F,),         (F,),         (F,),         (A,),         (A,)),
    "putPaymentSettings": row("PUT /api/v1/payment-settings", NO_ID,
        (F,),         (F,),         (F,),         (F,),         (A,)),
    "trialBalance": row("GET /api/v1/ledger/trial-balance", NO_ID,
        (F,),         (F,),         (F,),         (A,),         (A,)),
    "reconciliationReport": row("GET /api/v1/ledger/reconciliation", NO_ID,
        (F,),         (F,),         (F,),         (A,),         (A,)),
    # Providers' callbacks: no token; signatures and status queries decide (test_payments_api).
    "paymentWebhook": Rule("POST", "/api/v1/webhooks/payments/{provider}"),
    "paymentWebhookPut": Rule("PUT", "/api/v1/webhooks/payments/{provider}"),
    # A payout's result: the secret in its URL decides (test_payments_payouts).
    "refundResult": Rule("POST", "/api/v1/webhooks/refunds/{provider}/{payout_id}/{token}"),
    "refundResultPut": Rule("PUT", "/api/v1/webhooks/refunds/{provider}/{payout_id}/{token}"),
}
# fmt: on
AUTHENTICATED = sorted(op for op, r in PAYMENTS.items() if not r.public)


@dataclass
class PayMatrixWorld(World):
    foreign: set[str] = field(default_factory=set)

    @property
    def foreign_ids(self) -> set[str]:
        return super().foreign_ids | self.foreign

    def parties(self, target: Target) -> tuple[Tenant, Account]:
        own, other = self.own, self.other
        assert own.other_patient is not None
        return {
            Target.OWN: (own, own[Role.PATIENT]),
            Target.SAME_CLINIC_OTHER_PATIENT: (own, own.other_patient),
            Target.OTHER_TENANT: (other, other[Role.PATIENT]),
        }[target]

    def _note(self, clinic: Tenant, object_id: UUID) -> UUID:
        if clinic is self.other:
            self.foreign.add(str(object_id))
        return object_id

    async def appointment(self, target: Target) -> tuple[UUID, UUID]:
        clinic, patient = self.parties(target)
        appointment_id = await book(self.pool, clinic[Role.DOCTOR], patient)
        invoice_id = await invoice_of(self.pool, appointment_id)
        self._note(clinic, invoice_id)
        return self._note(clinic, appointment_id), invoice_id

    async def refunded(self, target: Target) -> UUID:
        """A refund of a cash payment of ``target`` kind whose payout failed (so it may be
        paid out again)."""
        clinic, _ = self.parties(target)
        payment_id = await self.paid(target)
        resp = await self.client.post(
            f"/api/v1/payments/{payment_id}/refunds", json={"amount": 100, "reason": "x"},
            headers=clinic[Role.ADMIN].headers | key(),
        )  # fmt: skip
        assert resp.status == 201, await resp.text()
        refund_id = UUID((await resp.json())["refund"]["id"])
        # A payout that failed (as a provider's refusal would leave it).
        await self.pool.execute(
            "UPDATE refund_payouts SET status = 'failed', failure_reason = 'declined' "
            "WHERE refund_id = $1",
            refund_id,
        )
        return self._note(clinic, refund_id)

    async def paid(self, target: Target) -> UUID:
        """A cash payment of a fresh invoice of ``target`` kind, taken by its clinic."""
        clinic, _ = self.parties(target)
        _, invoice_id = await self.appointment(target)
        resp = await self.client.post(
            f"/api/v1/invoices/{invoice_id}/cash", headers=clinic[Role.ADMIN].headers | key()
        )
        assert resp.status == 201, await resp.text()
        return self._note(clinic, UUID((await resp.json())["id"]))


@pytest.fixture
async def client(
    aiohttp_client: Callable[..., Awaitable[Client]], database_url: str, tmp_path: Path
) -> AsyncIterator[Client]:
    async for pw in pay_world(aiohttp_client, database_url, tmp_path, Behaviour(decide_after=600)):
        yield pw.client


@pytest.fixture
async def world(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant, other_tenant: Tenant
) -> PayMatrixWorld:
    for clinic in (tenant, other_tenant):
        await give_fee(app_pool, clinic[Role.DOCTOR], fee=20_000, currency="KES")
    return PayMatrixWorld(client, app_pool, tenant, other_tenant)


def payments_of(pool: asyncpg.Pool, invoice_id: UUID) -> Any:
    return read(pool, "SELECT count(*) FROM payments WHERE invoice_id = $1", invoice_id)


async def prepare(world: PayMatrixWorld, op: str, role: Role | None, target: Target) -> Prepared:
    own, pool = world.own, world.pool
    caller = own[role] if role is not None else None
    prep = Prepared(caller, {})
    money = {"Idempotency-Key": secrets.token_hex(16)}
    match op:
        case "listInvoices" | "getPaymentSettings" | "trialBalance":
            await world.appointment(target)
        case "reconciliationReport":
            prep.query = {"provider": "card"}
        case "getInvoice":
            prep.params["invoice_id"] = (await world.appointment(target))[1]
        case "getAppointmentInvoice":
            prep.params["appointment_id"] = (await world.appointment(target))[0]
        case "startPayment":
            invoice_id = prep.params["invoice_id"] = (await world.appointment(target))[1]
            prep.body, prep.headers = {"provider": "card"}, money
            prep.probe = payments_of(pool, invoice_id)
        case "takeCash":
            invoice_id = prep.params["invoice_id"] = (await world.appointment(target))[1]
            prep.headers = money
            prep.probe = payments_of(pool, invoice_id)
        case "waiveFee":
            invoice_id = prep.params["invoice_id"] = (await world.appointment(target))[1]
            prep.body, prep.headers = {"reason": "hardship"}, money
            prep.probe = read(pool, "SELECT waived FROM invoices WHERE id = $1", invoice_id)
        case "getPayment":
            prep.params["payment_id"] = await world.paid(target)
        case "refundPayment":
            payment_id = prep.params["payment_id"] = await world.paid(target)
            prep.body, prep.headers = {"amount": 100, "reason": "goodwill"}, money
            prep.probe = read(pool, "SELECT refunded FROM payments WHERE id = $1", payment_id)
        case "retryRefundPayout":
            refund_id = prep.params["refund_id"] = await world.refunded(target)
            prep.body, prep.headers = {"method": "cash"}, money
            prep.probe = read(
                pool, "SELECT count(*) FROM refund_payouts WHERE refund_id = $1", refund_id
            )
        case "listOwedRefunds":
            pass
        case "putPaymentSettings":
            rate = secrets.randbelow(5000) + 1
            prep.body = {"gate": "pay_after", "tax_label": "VAT", "tax_rate_bp": rate}
            prep.probe = read(
                pool,
                "SELECT tax_rate_bp FROM clinic_payment_settings WHERE clinic_id = $1",
                own.clinic_id,
            )
        case _:
            raise AssertionError(f"no request factory for operation {op}")
    return prep


@pytest.mark.parametrize("op", AUTHENTICATED)
async def test_route_answers_every_role_as_the_policy_says(op: str, world: PayMatrixWorld) -> None:
    await assert_route_follows_policy(world, op, PAYMENTS[op], prepare)


async def test_malformed_path_id_is_not_found(world: PayMatrixWorld) -> None:
    await assert_malformed_ids_not_found(world, PAYMENTS, prepare)


async def test_invoice_lists_show_a_patient_only_their_own(world: PayMatrixWorld) -> None:
    mine = (await world.appointment(Target.OWN))[1]
    theirs = (await world.appointment(Target.SAME_CLINIC_OTHER_PATIENT))[1]
    foreign = (await world.appointment(Target.OTHER_TENANT))[1]
    seen = {}
    for role in (Role.PATIENT, Role.RECEPTIONIST):
        resp = await world.client.get(
            "/api/v1/invoices", params={"limit": "200"}, headers=world.own[role].headers
        )
        assert resp.status == 200
        seen[role] = {item["id"] for item in (await resp.json())["items"]}
    assert str(mine) in seen[Role.PATIENT] and str(theirs) not in seen[Role.PATIENT]
    assert {str(mine), str(theirs)} <= seen[Role.RECEPTIONIST]
    assert str(foreign) not in seen[Role.PATIENT] | seen[Role.RECEPTIONIST]
    # A patient naming another patient gets nothing, not theirs.
    assert world.own.other_patient is not None
    resp = await world.client.get(
        "/api/v1/invoices", params={"patient_id": str(world.own.other_patient.user_id)},
        headers=world.own[Role.PATIENT].headers,
    )  # fmt: skip
    assert (await resp.json())["items"] == []
