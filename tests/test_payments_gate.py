"""The pay_before gate where a consultation is joined (/signal join), end to end."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from teleconsult.client.signal import SignalClient, SignalError
from teleconsult.core.identity import Role
from teleconsult.scheduling import store as scheduling
from tests.paymentskit import book, give_fee, invoice_of, key
from tests.world import Tenant

Client = TestClient[Any, Any]


async def test_a_patient_joins_only_once_paid_under_pay_before(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    admin, desk = tenant[Role.ADMIN].headers, tenant[Role.RECEPTIONIST].headers
    put = await client.put("/api/v1/payment-settings", json={"gate": "pay_before"}, headers=admin)
    assert put.status == 200, await put.text()
    await give_fee(app_pool, tenant[Role.DOCTOR], fee=2_000, currency="XOF")
    now = datetime.now(UTC).replace(microsecond=0)
    appointment_id = await book(
        app_pool, tenant[Role.DOCTOR], tenant[Role.PATIENT], starts_at=now + timedelta(minutes=10)
    )
    invoice_id = await invoice_of(app_pool, appointment_id)
    room = await scheduling.insert_consultation(
        app_pool,
        appointment_id=appointment_id,
        join_opens_at=now - timedelta(minutes=5),
        join_closes_at=now + timedelta(minutes=50),
    )
    url = str(client.make_url("")).rstrip("/")
    patient = SignalClient(url, tenant[Role.PATIENT].access_token)
    doctor = SignalClient(url, tenant[Role.DOCTOR].access_token)
    await patient.connect()
    await doctor.connect()
    try:
        with pytest.raises(SignalError) as refused:
            await patient.join(room.room_id)
        assert refused.value.code == "payment_required"
        named = {f["field"]: f["message"] for f in refused.value.error["fields"]}
        assert named == {"invoice_id": str(invoice_id), "amount": "2000", "currency": "XOF"}
        assert (await doctor.join(room.room_id))["status"] == "admitted"  # never gated
        cash = await client.post(f"/api/v1/invoices/{invoice_id}/cash", headers=desk | key())
        assert cash.status == 201, await cash.text()
        assert (await patient.join(room.room_id))["status"] == "waiting"
    finally:
        await patient.close()
        await doctor.close()
